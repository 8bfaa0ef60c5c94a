#include "daemon/policy/policy_service.h"

#include <pthread.h>

#include <deque>

#include "daemon/common/crypto.h"
#include "daemon/common/log.h"
#include "daemon/normalize/jcs.h"
#include "daemon/normalize/normalizer.h"

namespace toolgate::policy {

using toolgate::v1::CheckResponse;

toolgate::v1::Decision ToProto(Effect effect) {
  switch (effect) {
    case Effect::kAllow:
      return toolgate::v1::ALLOW;
    case Effect::kDeny:
      return toolgate::v1::DENY;
    case Effect::kRequireApproval:
      return toolgate::v1::REQUIRE_APPROVAL;
  }
  return toolgate::v1::DECISION_UNSPECIFIED;
}

PolicyService::PolicyService(config::PolicyOptions options, uint64_t max_argument_bytes,
                             PolicySource* source, const normalize::Normalizer* normalizer,
                             spool::Spool* spool, guardian::Guardian* guardian, Clock* clock)
    : options_(std::move(options)),
      max_argument_bytes_(max_argument_bytes),
      source_(source),
      normalizer_(normalizer),
      spool_(spool),
      clock_(clock),
      guardian_(guardian) {
  heartbeat_ = std::thread([this] { HeartbeatLoop(); });
}

PolicyService::~PolicyService() {
  {
    std::lock_guard<std::mutex> l(waits_mu_);
    stopping_ = true;
  }
  waits_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

absl::Status PolicyService::Validate(const toolgate::v1::Action& a, std::string* canonical) {
  auto invalid = [](const char* field, const std::string& rule) {
    return absl::InvalidArgumentError(std::string("action.") + field + ": " + rule);
  };
  if (a.agent_id().empty() || a.agent_id().size() > 255) {
    return invalid("agent_id", "required, 1-255 characters");
  }
  if (a.session_id().empty() || a.session_id().size() > 255) {
    return invalid("session_id", "required, 1-255 characters");
  }
  if (a.tool_name().empty()) return invalid("tool_name", "required");
  if (a.arguments_json().size() > max_argument_bytes_) {
    return invalid("arguments_json", "larger than ingest.max_argument_bytes");
  }
  // Canonical form is both the validation and what the hash is taken of; the rules parse the
  // text only if one of them looks at an argument, and the hash is taken off this thread.
  auto c = normalize::CanonicalizeJson(a.arguments_json().empty() ? std::string_view("{}")
                                                                  : a.arguments_json());
  if (!c.ok()) {
    return invalid("arguments_json", "must be JSON: " + std::string(c.status().message()));
  }
  *canonical = *std::move(c);
  return absl::OkStatus();
}

absl::Status PolicyService::Decide(const toolgate::v1::Action& a, CheckResponse* response,
                                   std::string* canonical) {
  if (absl::Status s = Validate(a, canonical); !s.ok()) return s;
  response->set_decision_id(NewUuid());
  auto rules = source_->Current();
  if (!rules && options_.mode == "sync") {
    // Nothing synced yet (and nothing cached): the failure mode decides, and says so.
    const bool open = options_.failure_mode == "open";
    response->set_decision(open ? toolgate::v1::ALLOW : toolgate::v1::DENY);
    response->set_source(open ? toolgate::v1::FAILED_OPEN : toolgate::v1::FAILED_CLOSED);
    response->set_reason(std::string("no rules synced from the upstream yet: failing ") +
                         (open ? "open" : "closed"));
    return absl::OkStatus();
  }
  if (!rules) {
    response->set_decision(toolgate::v1::ALLOW);
    response->set_source(toolgate::v1::LOCAL_DEFAULT);
    response->set_reason("no policy configured");
    return absl::OkStatus();
  }
  const std::shared_ptr<const ToolLookup> tools = tools_of_ ? tools_of_(a.agent_id()) : nullptr;
  // Absent arguments are an empty object (so `pointer: ""` exists), as the hash takes them.
  Action action{a.agent_id(),
                a.session_id(),
                a.tool_name(),
                a.tool_type(),
                a.operation(),
                a.target_system(),
                a.initiator_type(),
                a.initiator_id(),
                ActionArguments::FromText(a.arguments_json().empty() ? std::string_view("{}")
                                                                     : a.arguments_json()),
                tools.get()};
  const Decision d = rules->Evaluate(action, &rate_state_, clock_->Now());
  response->set_decision(ToProto(d.effect));
  response->set_rule_id(std::string(d.rule_id));
  response->set_reason(std::string(d.reason));
  response->set_policy_revision(rules->revision());
  response->set_source(d.rule ? toolgate::v1::LOCAL_RULE : toolgate::v1::LOCAL_DEFAULT);
  if (d.shadow) {
    response->set_shadow(true);
    response->set_shadow_decision(ToProto(d.shadow_effect));
  }
  if (d.effect == Effect::kRequireApproval && guardian_ != nullptr) {
    // With `default: require_approval` no rule decided: the rule defaults apply (5m, deny).
    const Rule defaults;
    const Rule& rule = d.rule != nullptr ? *d.rule : defaults;
    auto pending =
        guardian_->Create(a, normalizer_->HashArguments(*canonical), std::string(d.rule_id),
                          std::string(d.reason), rule.approval_timeout, ToProto(rule.on_timeout));
    if (!pending.ok()) return pending.status();
    response->set_pending_action_id(pending->id());
    response->set_expires_at(pending->expires_at());
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PolicyService::Check(grpc::CallbackServerContext* ctx,
                                               const toolgate::v1::CheckRequest* request,
                                               CheckResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  std::string canonical;
  absl::Status s;
  if (remote_ != nullptr) {
    s = Validate(request->action(), &canonical);
    if (s.ok()) {
      CheckRemote(reactor, request, response, std::move(canonical));
      return reactor;
    }
  } else {
    s = Decide(request->action(), response, &canonical);
  }
  if (!s.ok()) {
    if (absl::IsInvalidArgument(s)) invalid_.fetch_add(1, std::memory_order_relaxed);
    reactor->Finish(
        grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message())));
    return reactor;
  }
  Answer(reactor, request->action(), response, std::move(canonical));
  return reactor;
}

void PolicyService::CheckRemote(grpc::ServerUnaryReactor* reactor,
                                const toolgate::v1::CheckRequest* request, CheckResponse* response,
                                std::string canonical) {
  remote_->Check(request->action(), [this, reactor, request, response,
                                     canonical = std::move(canonical)](RemoteVerdict v) mutable {
    response->set_decision_id(NewUuid());
    response->set_decision(v.decision);
    response->set_source(v.source);
    response->set_reason(v.reason);
    response->set_policy_revision("remote");
    if (v.decision == toolgate::v1::REQUIRE_APPROVAL) {
      if (guardian_ == nullptr) {
        response->set_decision(toolgate::v1::DENY);
        response->set_reason(v.reason + " (no guardian to hold the approval: denied)");
      } else {
        auto pending = guardian_->Create(request->action(), normalizer_->HashArguments(canonical),
                                         "remote", v.reason, options_.remote_approval_timeout,
                                         toolgate::v1::DENY, v.pending_action_id);
        if (!pending.ok()) {
          reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(pending.status().code()),
                                       std::string(pending.status().message())));
          return;
        }
        response->set_pending_action_id(pending->id());
        response->set_expires_at(pending->expires_at());
      }
    }
    Answer(reactor, request->action(), response, std::move(canonical));
  });
}

void PolicyService::Answer(grpc::ServerUnaryReactor* reactor, const toolgate::v1::Action& a,
                           CheckResponse* response, std::string canonical) {
  switch (response->decision()) {
    case toolgate::v1::DENY:
      deny_.fetch_add(1, std::memory_order_relaxed);
      break;
    case toolgate::v1::REQUIRE_APPROVAL:
      require_approval_.fetch_add(1, std::memory_order_relaxed);
      break;
    default:
      allow_.fetch_add(1, std::memory_order_relaxed);
  }
  if (!options_.record_checks) {
    reactor->Finish(grpc::Status::OK);
    return;
  }
  // The record takes its place in the session's chain before the answer leaves, so an event
  // the agent sends once it has the answer is chained after it; the spool's writer builds it
  // later, off this thread, from copies (gRPC may free the request and response at Finish).
  response->set_event_id(NewUuid());
  Pending record;
  record.answer = *response;
  record.canonical = std::move(canonical);
  auto& c = record.action;
  c.set_agent_id(a.agent_id());
  c.set_session_id(a.session_id());
  c.set_tool_name(a.tool_name());
  c.set_tool_type(a.tool_type());
  c.set_operation(a.operation());
  c.set_target_system(a.target_system());
  c.set_initiator_type(a.initiator_type());
  c.set_initiator_id(a.initiator_id());
  // Until it is built the record holds the canonical arguments too.
  const uint64_t estimate =
      kRecordBytes + c.ByteSizeLong() + record.answer.ByteSizeLong() + record.canonical.size();
  const std::string decision_id = record.answer.decision_id();
  spool_->AppendDeferred(
      [this, record = std::move(record)](std::vector<normalize::NormalizedEvent>* out) {
        out->resize(1);
        return BuildRecord(record, &(*out)[0]);
      },
      estimate,
      [this, decision_id](const absl::Status& st) {
        if (!st.ok()) {
          audit_failures_.fetch_add(1);
          LogWarn("check not recorded in the audit chain",
                  {{"decision_id", decision_id}, {"error", std::string(st.message())}});
        }
      });
  reactor->Finish(grpc::Status::OK);
}

absl::Status PolicyService::BuildRecord(const Pending& p, normalize::NormalizedEvent* out) const {
  const toolgate::v1::Action& a = p.action;
  const CheckResponse& r = p.answer;
  toolgate::v1::Event ev;
  ev.set_event_id(r.event_id());
  ev.set_agent_id(a.agent_id());
  ev.set_session_id(a.session_id());
  auto* at = ev.mutable_attribution();
  at->set_tool_type(a.tool_type());
  at->set_operation(a.operation());
  at->set_target_system(a.target_system());
  at->set_initiator_type(a.initiator_type());
  at->set_initiator_id(a.initiator_id());
  // The payload is written directly (the normalizer puts it in canonical form); the arguments'
  // hash is taken here, off the request's thread.
  std::string* payload = ev.mutable_generic()->mutable_payload_json();
  payload->reserve(512 + r.reason().size());
  payload->push_back('{');
  bool first = true;
  auto member = [&](std::string_view key, std::string_view value) {
    normalize::AppendMember(payload, key, value, &first);
  };
  member("approverId", "toolgate-policy");
  member("scope", a.tool_name());
  member("decision", r.decision() == toolgate::v1::ALLOW  ? "allow"
                     : r.decision() == toolgate::v1::DENY ? "deny"
                                                          : "require_approval");
  member("reason", r.reason());
  member("decisionId", r.decision_id());
  member("argumentsHash", normalizer_->HashArguments(p.canonical));
  if (!r.rule_id().empty()) member("ruleId", r.rule_id());
  if (!r.policy_revision().empty()) member("policyRevision", r.policy_revision());
  if (r.source() != toolgate::v1::LOCAL_RULE && r.source() != toolgate::v1::LOCAL_DEFAULT) {
    member("source", toolgate::v1::DecisionSource_Name(r.source()));  // REMOTE, FAILED_OPEN…
  }
  if (r.shadow()) member("shadowDecision", toolgate::v1::Decision_Name(r.shadow_decision()));
  payload->push_back('}');
  ev.mutable_generic()->set_category("approval");
  absl::Status s = normalizer_->Normalize(ev, "check", out);
  // The id is the daemon's own, minted for this record, which nobody sends again: nothing for
  // the spool's window of recent client ids to remember (and persist) for deduplication.
  out->id_from_client = false;
  return s;
}

// One WaitForDecision call. The guardian's waiter and the heartbeat thread reach the reactor
// only through this state and only while `reactor` is set; OnDone clears it under `mu` before
// the reactor is deleted.
struct PolicyService::WaitState {
  std::mutex mu;
  grpc::ServerWriteReactor<toolgate::v1::WaitUpdate>* reactor = nullptr;  // guarded by mu
  std::deque<toolgate::v1::WaitUpdate> queue;                             // guarded by mu
  toolgate::v1::WaitUpdate current;                                       // guarded by mu
  bool writing = false, final_queued = false, finished = false;           // guarded by mu
  grpc::Status end = grpc::Status::OK;  // how the call ends after its last update; guarded by mu
  std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
  std::chrono::milliseconds heartbeat{5000};
  std::string id;
  uint64_t token = 0;

  // Requires mu. Shutdown: the wait ends without a decision (the client waits again on the
  // next daemon: the pending action is durable).
  void EndLocked() {
    if (final_queued) return;
    queue.clear();
    final_queued = true;
    end = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                       "toolgated is shutting down: wait again after it restarts");
    WriteNextLocked();
  }
  // Requires mu.
  void WriteNextLocked() {
    if (reactor == nullptr || writing || finished) return;
    if (queue.empty()) {
      if (final_queued) {
        finished = true;
        reactor->Finish(end);
      }
      return;
    }
    current = std::move(queue.front());
    queue.pop_front();
    writing = true;
    last_write = std::chrono::steady_clock::now();
    reactor->StartWrite(&current);
  }
};

namespace {

toolgate::v1::WaitUpdate FinalUpdate(const guardian::PendingAction& a) {
  toolgate::v1::WaitUpdate u;
  u.set_pending_action_id(a.id());
  u.set_status(a.status());
  const bool allowed =
      a.status() == toolgate::v1::APPROVED ||
      (a.status() == toolgate::v1::EXPIRED && a.on_timeout() == toolgate::v1::ALLOW);
  u.set_decision(allowed ? toolgate::v1::ALLOW : toolgate::v1::DENY);
  u.set_approver_id(a.approver_id());
  u.set_reason(a.decision_reason());
  u.set_decided_at(a.decided_at());
  return u;
}

class WaitReactor final : public grpc::ServerWriteReactor<toolgate::v1::WaitUpdate> {
 public:
  WaitReactor(std::shared_ptr<PolicyService::WaitState> state, std::function<void()> on_done)
      : state_(std::move(state)), on_done_(std::move(on_done)) {}
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(state_->mu);
    state_->writing = false;
    if (!ok) {
      if (!state_->finished) {
        state_->finished = true;
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      }
      return;
    }
    state_->WriteNextLocked();
  }
  // The client went away (cancelled, deadline): end the call now, not at the next heartbeat,
  // so that nothing (a SIGTERM drain included) waits for it.
  void OnCancel() override {
    std::lock_guard<std::mutex> l(state_->mu);
    if (!state_->finished) {
      state_->finished = true;
      state_->queue.clear();
      Finish(grpc::Status::CANCELLED);
    }
  }
  void OnDone() override {
    {
      std::lock_guard<std::mutex> l(state_->mu);
      state_->reactor = nullptr;
    }
    on_done_();
    delete this;
  }

 private:
  std::shared_ptr<PolicyService::WaitState> state_;
  std::function<void()> on_done_;
};

}  // namespace

grpc::ServerWriteReactor<toolgate::v1::WaitUpdate>* PolicyService::WaitForDecision(
    grpc::CallbackServerContext* ctx, const toolgate::v1::WaitRequest* request) {
  auto state = std::make_shared<WaitState>();
  state->id = request->pending_action_id();
  if (request->heartbeat_ms() > 0) {
    state->heartbeat = std::chrono::milliseconds(std::max<uint32_t>(request->heartbeat_ms(), 50));
  }
  auto* reactor = new WaitReactor(state, [this, state] {
    if (state->token != 0 && guardian_ != nullptr) guardian_->CancelWait(state->token);
    std::lock_guard<std::mutex> l(waits_mu_);
    waits_.erase(state);
  });
  std::lock_guard<std::mutex> l(state->mu);
  state->reactor = reactor;
  if (state->id.empty() || guardian_ == nullptr) {
    state->finished = true;
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "pending_action_id: required"));
    return reactor;
  }
  // The guardian may call the waiter at once (decided already): not under state->mu.
  state->mu.unlock();
  auto token = guardian_->Wait(state->id, [state](const guardian::PendingAction& a) {
    std::lock_guard<std::mutex> wl(state->mu);
    if (state->final_queued) return;
    state->queue.push_back(FinalUpdate(a));
    state->final_queued = true;
    state->WriteNextLocked();
  });
  state->mu.lock();
  if (!token.ok()) {
    state->queue.clear();
    if (!state->finished) {
      state->finished = true;
      reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(token.status().code()),
                                   std::string(token.status().message())));
    }
    return reactor;
  }
  state->token = *token;
  if (!state->final_queued) {
    // Still pending: say so at once, then heartbeats until the waiter pushes the decision.
    toolgate::v1::WaitUpdate hello;
    hello.set_pending_action_id(state->id);
    hello.set_status(toolgate::v1::PENDING);
    hello.set_heartbeat(true);
    state->queue.push_front(std::move(hello));
  }
  {
    std::lock_guard<std::mutex> wl(waits_mu_);
    waits_.insert(state);
    if (ending_) state->EndLocked();
  }
  state->WriteNextLocked();
  return reactor;
}

void PolicyService::EndWaits() {
  std::lock_guard<std::mutex> l(waits_mu_);
  ending_ = true;
  for (const auto& state : waits_) {
    std::lock_guard<std::mutex> sl(state->mu);
    state->EndLocked();
  }
}

void PolicyService::HeartbeatLoop() {
  pthread_setname_np(pthread_self(), "tg-heartbeat");
  std::unique_lock<std::mutex> l(waits_mu_);
  while (!waits_cv_.wait_for(l, std::chrono::milliseconds(50), [this] { return stopping_; })) {
    const auto now = std::chrono::steady_clock::now();
    for (const auto& state : waits_) {
      std::lock_guard<std::mutex> sl(state->mu);
      if (state->reactor == nullptr || state->final_queued || state->writing ||
          now - state->last_write < state->heartbeat) {
        continue;
      }
      toolgate::v1::WaitUpdate hb;
      hb.set_pending_action_id(state->id);
      hb.set_status(toolgate::v1::PENDING);
      hb.set_heartbeat(true);
      state->queue.push_back(std::move(hb));
      state->WriteNextLocked();
    }
  }
}

CheckStats PolicyService::stats() const {
  return {allow_.load(), deny_.load(), require_approval_.load(), invalid_.load(),
          audit_failures_.load()};
}

}  // namespace toolgate::policy
