#include "client/lib/convert.h"

#include <type_traits>
#include <utility>
#include <variant>

namespace toolgate::client_internal {
namespace {

void ToProto(Attribution&& a, v1::Attribution* out) {
  out->set_source_framework(std::move(a.source_framework));
  out->set_trace_id(std::move(a.trace_id));
  out->set_run_id(std::move(a.run_id));
  out->set_correlation_id(std::move(a.correlation_id));
  out->set_parent_event_id(std::move(a.parent_event_id));
  out->set_causation_event_id(std::move(a.causation_event_id));
  out->set_agent_version(std::move(a.agent_version));
  out->set_tool_type(std::move(a.tool_type));
  out->set_target_system(std::move(a.target_system));
  out->set_operation(std::move(a.operation));
  out->set_initiator_type(std::move(a.initiator_type));
  out->set_initiator_id(std::move(a.initiator_id));
  out->set_actor_type(std::move(a.actor_type));
  out->set_actor_id(std::move(a.actor_id));
}

bool Empty(const Attribution& a) {
  return a.source_framework.empty() && a.trace_id.empty() && a.run_id.empty() &&
         a.correlation_id.empty() && a.parent_event_id.empty() && a.causation_event_id.empty() &&
         a.agent_version.empty() && a.tool_type.empty() && a.target_system.empty() &&
         a.operation.empty() && a.initiator_type.empty() && a.initiator_id.empty() &&
         a.actor_type.empty() && a.actor_id.empty();
}

void MoveStrings(std::vector<std::string>&& in,
                 google::protobuf::RepeatedPtrField<std::string>* out) {
  out->Reserve(static_cast<int>(in.size()));
  for (auto& s : in) out->Add(std::move(s));
}

}  // namespace

void ToProto(Event&& in, v1::Event* out) {
  out->set_event_id(std::move(in.event_id));
  out->set_agent_id(std::move(in.agent_id));
  out->set_session_id(std::move(in.session_id));
  out->set_source_timestamp(std::move(in.source_timestamp));
  if (!Empty(in.attribution)) ToProto(std::move(in.attribution), out->mutable_attribution());
  std::visit(
      [out](auto&& k) {
        using K = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<K, ToolCall>) {
          auto* t = out->mutable_tool_call();
          t->set_tool_name(std::move(k.tool_name));
          t->set_arguments_json(std::move(k.arguments_json));
          t->set_arguments_hash(std::move(k.arguments_hash));
          t->set_response_status(std::move(k.response_status));
          t->set_endpoint(std::move(k.endpoint));
          t->set_duration_ms(k.duration_ms);
        } else if constexpr (std::is_same_v<K, Identity>) {
          auto* i = out->mutable_identity();
          i->set_agent_name(std::move(k.agent_name));
          i->set_version(std::move(k.version));
          MoveStrings(std::move(k.capabilities), i->mutable_capabilities());
        } else if constexpr (std::is_same_v<K, Reasoning>) {
          auto* r = out->mutable_reasoning();
          r->set_summary(std::move(k.summary));
          r->set_confidence(k.confidence);
          MoveStrings(std::move(k.alternatives), r->mutable_alternatives());
        } else if constexpr (std::is_same_v<K, DataMovement>) {
          auto* d = out->mutable_data_movement();
          d->set_operation(std::move(k.operation));
          MoveStrings(std::move(k.object_ids), d->mutable_object_ids());
          d->set_diff_summary(std::move(k.diff_summary));
        } else if constexpr (std::is_same_v<K, Approval>) {
          auto* a = out->mutable_approval();
          a->set_approver_id(std::move(k.approver_id));
          a->set_scope(std::move(k.scope));
          a->set_decision(std::move(k.decision));
          a->set_reason(std::move(k.reason));
          a->set_pending_action_id(std::move(k.pending_action_id));
        } else if constexpr (std::is_same_v<K, SessionStart>) {
          out->mutable_session_start();
        } else if constexpr (std::is_same_v<K, SessionEnd>) {
          auto* e = out->mutable_session_end();
          e->set_outcome(k.outcome == SessionEnd::Outcome::kFailed ? v1::SessionEnd::FAILED
                                                                   : v1::SessionEnd::COMPLETED);
          e->set_error_message(std::move(k.error_message));
          e->set_error_type(std::move(k.error_type));
        } else {
          static_assert(std::is_same_v<K, Generic>, "every kind of toolgate::Event is handled");
          auto* g = out->mutable_generic();
          g->set_category(std::move(k.category));
          g->set_payload_json(std::move(k.payload_json));
        }
      },
      std::move(in.kind));
}

void ToProto(const Action& in, v1::Action* out) {
  out->set_agent_id(in.agent_id);
  out->set_session_id(in.session_id);
  out->set_tool_name(in.tool_name);
  out->set_tool_type(in.tool_type);
  out->set_operation(in.operation);
  out->set_target_system(in.target_system);
  out->set_initiator_type(in.initiator_type);
  out->set_initiator_id(in.initiator_id);
  out->set_arguments_json(in.arguments_json);
}

Decision FromProto(v1::Decision d) {
  switch (d) {
    case v1::ALLOW:
      return Decision::kAllow;
    case v1::DENY:
      return Decision::kDeny;
    case v1::REQUIRE_APPROVAL:
      return Decision::kRequireApproval;
    default:
      return Decision::kUnspecified;
  }
}

CheckResult FromProto(const v1::CheckResponse& in) {
  CheckResult r;
  r.decision = FromProto(in.decision());
  r.rule_id = in.rule_id();
  r.reason = in.reason();
  r.policy_revision = in.policy_revision();
  r.decision_id = in.decision_id();
  r.shadow = in.shadow();
  r.shadow_decision = FromProto(in.shadow_decision());
  r.pending_action_id = in.pending_action_id();
  r.expires_at = in.expires_at();
  r.event_id = in.event_id();
  return r;
}

ApprovalResult FromProto(const v1::WaitUpdate& in) {
  ApprovalResult r;
  switch (in.status()) {
    case v1::APPROVED:
      r.status = ApprovalStatus::kApproved;
      break;
    case v1::REJECTED:
      r.status = ApprovalStatus::kRejected;
      break;
    case v1::EXPIRED:
      r.status = ApprovalStatus::kExpired;
      break;
    default:
      r.status = ApprovalStatus::kPending;
  }
  // The daemon states the final effect (an expired action may be allowed by on_timeout).
  r.allowed = r.status != ApprovalStatus::kPending && in.decision() == v1::ALLOW;
  r.approver_id = in.approver_id();
  r.reason = in.reason();
  r.decided_at = in.decided_at();
  return r;
}

}  // namespace toolgate::client_internal
