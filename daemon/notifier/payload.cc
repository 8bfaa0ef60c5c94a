#include "daemon/notifier/payload.h"

#include <nlohmann/json.hpp>

namespace toolgate::notifier {
namespace {

nlohmann::json TextOrNull(const std::string& s) {
  return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s);
}

const char* StatusWord(WebhookEvent e) {
  switch (e) {
    case WebhookEvent::kStarted:
      return "started";
    case WebhookEvent::kEnded:
      return "completed";
    case WebhookEvent::kFailed:
      return "failed";
    case WebhookEvent::kHandoff:
      return "handoff";
  }
  return "started";
}

}  // namespace

const char* WebhookEventName(WebhookEvent e) {
  switch (e) {
    case WebhookEvent::kStarted:
      return "agent_execution_started";
    case WebhookEvent::kEnded:
      return "agent_execution_ended";
    case WebhookEvent::kFailed:
      return "agent_execution_failed";
    case WebhookEvent::kHandoff:
      return "agent_execution_handoff";
  }
  return "";
}

std::optional<WebhookEvent> ParseWebhookEvent(std::string_view name) {
  for (int i = 0; i < kWebhookEventCount; ++i) {
    const auto e = static_cast<WebhookEvent>(i);
    if (name == WebhookEventName(e)) return e;
  }
  return std::nullopt;
}

std::string BuildPayload(const ExecutionInfo& info) {
  const bool ended = info.event == WebhookEvent::kEnded || info.event == WebhookEvent::kFailed;
  nlohmann::json body = {
      {"event", WebhookEventName(info.event)},
      {"agent_execution",
       {{"id", info.session_id},
        {"started_at", TextOrNull(info.started_at)},
        {"ended_at", ended ? TextOrNull(info.ended_at) : nlohmann::json(nullptr)},
        {"status", StatusWord(info.event)},
        {"agent_id", info.agent_id}}},
      {"agent",
       {{"id", info.agent_id},
        {"name", info.agent_name.empty() ? info.agent_id : info.agent_name}}},
  };
  if (info.event == WebhookEvent::kHandoff) {
    body["handoff"] = {{"node_name", info.node_name},
                       {"handoff_datetime", TextOrNull(info.handoff_at)},
                       {"handoff_reason", info.handoff_reason},
                       {"pending_action_id", info.pending_action_id}};
  }
  if (info.event == WebhookEvent::kFailed) {
    body["failure"] = {{"error",
                        {{"message", info.error_message},
                         {"type", info.error_type.empty() ? "error" : info.error_type}}},
                       {"failed_at", TextOrNull(info.ended_at)}};
  }
  // Invalid UTF-8 from an agent's strings is replaced, never a reason to throw.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace toolgate::notifier
