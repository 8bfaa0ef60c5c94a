// toolgate/event.h: the audit events an agent records (toolgate.v1.Event, as plain C++ types).
//
// These mirror proto/toolgate/v1/events.proto field for field, so that an agent needs neither
// the generated protobuf headers nor protobuf's types to use the client; the client converts
// them when it records them. Every event carries `agent_id` and `session_id` (the client fills
// them from ClientOptions when they are empty) and exactly one kind.
//
// Plain values: thread-compatible (one thread may use an object at a time).
#ifndef TOOLGATE_EVENT_H_
#define TOOLGATE_EVENT_H_

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace toolgate {

// The optional attribution fields of the upstream envelope (traceId, runId, …).
struct Attribution {
  std::string source_framework;
  std::string trace_id;
  std::string run_id;
  std::string correlation_id;
  std::string parent_event_id;
  std::string causation_event_id;
  std::string agent_version;
  std::string tool_type;
  std::string target_system;
  std::string operation;
  std::string initiator_type;  // human | agent | system
  std::string initiator_id;
  std::string actor_type;
  std::string actor_id;
};

// A tool call. `arguments_json` is the raw arguments as JSON text: the daemon canonicalizes and
// hashes it and never stores it. Give `arguments_hash` (lowercase hex SHA-256) instead to hash
// on the agent's side.
struct ToolCall {
  std::string tool_name;
  std::string arguments_json;
  std::string arguments_hash;
  std::string response_status;  // e.g. "success", "error", "200"
  std::string endpoint;
  int64_t duration_ms = 0;
};

struct Identity {
  std::string agent_name;
  std::string version;
  std::vector<std::string> capabilities;
};

struct Reasoning {
  std::string summary;
  double confidence = 0;  // 0..1
  std::vector<std::string> alternatives;
};

struct DataMovement {
  std::string operation;  // read | write | delete | export
  std::vector<std::string> object_ids;
  std::string diff_summary;
};

struct Approval {
  std::string approver_id;
  std::string scope;
  std::string decision;  // approved | rejected | expired
  std::string reason;
  std::string pending_action_id;
};

struct SessionStart {};

struct SessionEnd {
  enum class Outcome { kCompleted, kFailed };
  Outcome outcome = Outcome::kCompleted;
  std::string error_message;  // with kFailed
  std::string error_type;
};

// Forward compatibility: a known category or "x-<name>", with a JSON object payload.
struct Generic {
  std::string category;
  std::string payload_json;
};

struct Event {
  using Kind = std::variant<ToolCall, Identity, Reasoning, DataMovement, Approval, SessionStart,
                            SessionEnd, Generic>;

  Event() = default;
  // Implicit on purpose: `client.Record(toolgate::SessionStart{})`.
  template <typename K, typename = std::enable_if_t<std::is_constructible_v<Kind, K&&>>>
  Event(K&& k) : kind(std::forward<K>(k)) {}  // NOLINT(google-explicit-constructor)

  std::string event_id;          // UUID; empty = the client assigns a random (v4) one
  std::string agent_id;          // empty = ClientOptions::agent_id
  std::string session_id;        // empty = ClientOptions::session_id
  std::string source_timestamp;  // RFC 3339 with timezone; empty = the time of Record
  Attribution attribution;
  Kind kind;
};

}  // namespace toolgate

#endif  // TOOLGATE_EVENT_H_
