// Agent execution webhooks: the events and their JSON bodies (kaplaix-api.md, "Webhook
// signatures"), built by small pure functions.
//
// An "agent execution" is a session: its id is the session id. The body is
//   {"event", "agent_execution": {"id", "started_at", "ended_at" | null, "status", "agent_id"},
//    "agent": {"id", "name"}}
// plus "handoff": {"node_name", "handoff_datetime", "handoff_reason", "pending_action_id"} for
// agent_execution_handoff and "failure": {"error": {"message", "type"}, "failed_at"} for
// agent_execution_failed. `pending_action_id` is toolgate's addition: the id a decision names.
//
// Thread-safe (pure functions).
#ifndef TOOLGATE_DAEMON_NOTIFIER_PAYLOAD_H_
#define TOOLGATE_DAEMON_NOTIFIER_PAYLOAD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace toolgate::notifier {

enum class WebhookEvent : uint8_t {
  kStarted = 0,  // agent_execution_started: a session_start event was recorded
  kEnded = 1,    // agent_execution_ended: session_end, outcome completed
  kFailed = 2,   // agent_execution_failed: session_end, outcome failed
  kHandoff = 3,  // agent_execution_handoff: an action is pending a human's approval
};
inline constexpr int kWebhookEventCount = 4;

// "agent_execution_started", … (the X-Webhook-Event header and the body's "event").
const char* WebhookEventName(WebhookEvent e);
// The inverse; nullopt for an unknown name.
std::optional<WebhookEvent> ParseWebhookEvent(std::string_view name);

// What a body is built from. Timestamps are RFC 3339 text; an empty one is written as null.
struct ExecutionInfo {
  WebhookEvent event = WebhookEvent::kStarted;
  std::string session_id;  // agent_execution.id
  std::string agent_id;
  std::string agent_name;  // empty: the agent id stands in
  std::string started_at;  // empty when the session's start was not seen
  std::string ended_at;    // ended / failed
  // kFailed
  std::string error_message;
  std::string error_type;
  // kHandoff
  std::string node_name;  // the tool waiting for approval
  std::string handoff_at;
  std::string handoff_reason;
  std::string pending_action_id;
};

// The body of one webhook, as compact JSON.
std::string BuildPayload(const ExecutionInfo& info);

}  // namespace toolgate::notifier

#endif  // TOOLGATE_DAEMON_NOTIFIER_PAYLOAD_H_
