#include "toolgate/guarded_call.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace toolgate::guarded_call_internal {

absl::Status Before(Client& client, const Action& action, const GuardOptions& options,
                    Verdict* verdict) {
  *verdict = Verdict();
  absl::StatusOr<CheckResult> check = client.Check(action);
  if (!check.ok()) {
    // Fail open only when there was no answer at all; never past a human's wait.
    if (options.fail_open &&
        (absl::IsUnavailable(check.status()) || absl::IsDeadlineExceeded(check.status()))) {
      verdict->allowed = true;
      verdict->failed_open = true;
      return absl::OkStatus();
    }
    return check.status();
  }
  verdict->check = *std::move(check);
  if (verdict->check.decision == Decision::kRequireApproval) {
    const absl::Time deadline = options.approval_timeout == absl::InfiniteDuration()
                                    ? absl::InfiniteFuture()
                                    : absl::Now() + options.approval_timeout;
    absl::StatusOr<ApprovalResult> approval =
        client.WaitForDecision(verdict->check.pending_action_id, deadline);
    if (!approval.ok()) return approval.status();
    verdict->approval = *std::move(approval);
    verdict->allowed = verdict->approval->allowed;
  } else {
    verdict->allowed = verdict->check.decision == Decision::kAllow;
  }
  if (!verdict->allowed) {
    return absl::PermissionDeniedError(
        absl::StrCat("toolgate: ", action.tool_name, " ", verdict->Explain()));
  }
  return absl::OkStatus();
}

void After(Client& client, const Action& action, const GuardOptions& options,
           const Verdict& verdict, const absl::Status& outcome,
           std::chrono::steady_clock::duration elapsed) {
  ToolCall call;
  call.tool_name = action.tool_name;
  call.arguments_json = action.arguments_json;
  call.response_status = outcome.ok() ? "success" : "error";
  call.endpoint = options.endpoint;
  call.duration_ms = std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count();
  Event event(std::move(call));
  event.agent_id = action.agent_id;
  event.session_id = action.session_id;
  Attribution& a = event.attribution;
  a.tool_type = action.tool_type;
  a.operation = action.operation;
  a.target_system = action.target_system;
  a.initiator_type = action.initiator_type;
  a.initiator_id = action.initiator_id;
  a.causation_event_id = verdict.check.event_id;  // the check's audit event
  // Never blocks; a full buffer drops the record and counts it (ClientStats::dropped).
  (void)client.Record(std::move(event));
}

}  // namespace toolgate::guarded_call_internal
