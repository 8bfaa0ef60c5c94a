// toolgate/client.h: the C++ client of toolgated, the audit and policy sidecar.
//
// A Client talks to one daemon over its Unix socket ("unix:/run/toolgate/toolgate.sock") or
// loopback TCP ("127.0.0.1:7470"). It does two things:
//
//  * Records audit events without blocking the agent. Record() only validates the event,
//    stamps its id and time, and appends it to a bounded in-memory buffer; one background
//    thread sends the buffer over one Events.Stream in batches and releases an event when the
//    daemon acknowledges its batch (by sequence number, once the event is durable). When the
//    stream breaks, the client reconnects with exponential backoff and resends every
//    unacknowledged event with the same eventId. When the buffer is full, the newest event is
//    dropped and counted (ClientStats::dropped): the agent is never slowed down by the audit
//    path. Flush() and Close() wait, up to a deadline, for what was recorded to be durable.
//
//  * Asks the daemon's policy before a tool runs: Check() answers ALLOW, DENY or
//    REQUIRE_APPROVAL; WaitForDecision() waits for a human's decision on a pending action (the
//    daemon pushes it); Authorize() does both. GuardedCall() (toolgate/guarded_call.h) wraps a
//    tool function: authorize, run, record the outcome and the duration.
//
// Errors are absl::Status: UNAVAILABLE when the daemon cannot be reached, DEADLINE_EXCEEDED when
// a deadline passed, INVALID_ARGUMENT naming the field the daemon refused, RESOURCE_EXHAUSTED
// when Record() dropped an event because the buffer was full.
//
// Delivery is at least once: an event whose acknowledgement was lost with a broken stream is
// sent again with the same eventId (upstream deduplicates by eventId).
//
// Thread-safe: any number of threads may call any method, Close() included.
#ifndef TOOLGATE_CLIENT_H_
#define TOOLGATE_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "toolgate/event.h"

namespace toolgate {

struct ClientOptions {
  // "unix:PATH" or "HOST:PORT". Empty (the default): $TOOLGATE_ADDRESS, else the daemon's
  // default socket when it exists and is writable ($RUNTIME_DIRECTORY/toolgate.sock,
  // /run/toolgate/toolgate.sock, $XDG_RUNTIME_DIR/toolgate/toolgate.sock,
  // /tmp/toolgate-UID/toolgate.sock), else 127.0.0.1:7470 — as the toolgate CLI does.
  std::string address;

  // Filled into events and actions whose own agent_id / session_id are empty. Default: empty.
  std::string agent_id;
  std::string session_id;

  // Bounds of the buffer: events recorded and not yet acknowledged (sent or not). Beyond either
  // bound Record() drops the new event and counts it. Defaults: 10000 events, 64 MiB (counted
  // as the events' serialized size).
  size_t max_buffered_events = 10000;
  size_t max_buffered_bytes = 64 << 20;

  // A batch (one stream message) holds at most this many events / bytes; an event larger than
  // max_batch_bytes goes alone. Defaults: 500 events, 1 MiB (the daemon takes up to 10000
  // events and 8 MiB per message by default).
  size_t max_batch_events = 500;
  size_t max_batch_bytes = 1 << 20;

  // How long a batch may wait to fill before it is sent (Flush and Close do not wait).
  // Default 5 ms.
  absl::Duration batch_delay = absl::Milliseconds(5);

  // Batches sent and not yet acknowledged, at most. Keep it below the daemon's
  // ingest.stream_window (64) so that the daemon never stops reading the stream. Default 32.
  size_t max_in_flight_batches = 32;

  // Reconnection: the first wait after a broken stream, doubled after each failure up to
  // backoff_max, with jitter (a random wait between half the bound and the bound); reset once
  // the daemon acknowledges a batch. Defaults: 100 ms, 5 s.
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(5);

  // Deadline of one Check() call, which also waits this long for the daemon to come up (a
  // sidecar that starts after the agent). Default 5 s.
  absl::Duration check_timeout = absl::Seconds(5);

  // How long the destructor waits for unacknowledged events when Close() was not called.
  // Default 5 s.
  absl::Duration close_timeout = absl::Seconds(5);

  // Called on the client's background thread when the stream breaks, when the daemon pushes
  // back (RESOURCE_EXHAUSTED) or refuses an event (INVALID_ARGUMENT). Must not block and must
  // not call back into the client. Default: none (the same information is in stats()).
  std::function<void(const absl::Status&)> on_error;
};

// Counters since Create(). recorded + dropped = the events Record() accepted as valid.
struct ClientStats {
  uint64_t recorded = 0;    // taken into the buffer
  uint64_t acked = 0;       // acknowledged by the daemon: durable
  uint64_t dropped = 0;     // refused by Record() because the buffer was full
  uint64_t rejected = 0;    // refused by the daemon as invalid (INVALID_ARGUMENT); not retried
  uint64_t resent = 0;      // event sends after the first (reconnect, RESOURCE_EXHAUSTED)
  uint64_t reconnects = 0;  // streams opened after a broken one
  uint64_t abandoned = 0;   // still unacknowledged when Close() gave up at its deadline
  uint64_t buffered = 0;    // now: recorded, not yet acknowledged nor rejected
  uint64_t in_flight_batches = 0;  // now: sent, waiting for their acknowledgement
  std::string last_error;          // the last stream error, pushback or rejection; empty if none
};

// What a tool call is about to do; the fields of the policy language (docs/policy.md).
struct Action {
  std::string agent_id;    // empty = ClientOptions::agent_id
  std::string session_id;  // empty = ClientOptions::session_id
  std::string tool_name;   // required
  std::string tool_type;
  std::string operation;
  std::string target_system;
  std::string initiator_type;  // human | agent | system
  std::string initiator_id;
  std::string arguments_json;  // the tool's arguments; evaluated and hashed, never stored
};

enum class Decision { kUnspecified, kAllow, kDeny, kRequireApproval };

// The daemon's answer to Check().
struct CheckResult {
  Decision decision = Decision::kUnspecified;
  std::string rule_id;  // the deciding rule; empty when the policy's default applied
  std::string reason;
  std::string policy_revision;
  std::string decision_id;
  bool shadow = false;  // a shadow (log-only) rule matched; it did not decide
  Decision shadow_decision = Decision::kUnspecified;
  std::string pending_action_id;  // with kRequireApproval: what WaitForDecision() takes
  std::string expires_at;         // with kRequireApproval: RFC 3339
  std::string event_id;           // the audit event recording this check
};

enum class ApprovalStatus { kPending, kApproved, kRejected, kExpired };

// A human's decision on a pending action (or its timeout).
struct ApprovalResult {
  ApprovalStatus status = ApprovalStatus::kPending;
  bool allowed = false;  // approved, or expired with the rule's on_timeout: allow
  std::string approver_id;
  std::string reason;
  std::string decided_at;  // RFC 3339
};

// The final word on an action: Check(), then the approval when one was required.
struct Verdict {
  bool allowed = false;
  CheckResult check;
  std::optional<ApprovalResult> approval;  // set when check.decision was kRequireApproval
  bool failed_open = false;  // GuardOptions::fail_open let the call run without an answer

  // "denied by rule deny-rm-rf: recursive delete", "rejected by alice: unknown payee", …
  std::string Explain() const;
};

// A new random (version 4) UUID, the form Record() assigns to events without an id.
std::string NewEventId();

class Client {
 public:
  // Validates `options` and starts the background thread. Does not wait for the daemon: events
  // recorded before it is reachable wait in the buffer.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  // Close(now + close_timeout) when Close() was not called.
  ~Client();

  // Takes the event into the buffer and returns at once; never waits for the daemon. Fills an
  // empty event_id (a UUIDv4, also written to *event_id when given), source_timestamp (now),
  // agent_id and session_id. INVALID_ARGUMENT when agent_id or session_id is still empty;
  // RESOURCE_EXHAUSTED when the buffer is full (the event is dropped and counted);
  // FAILED_PRECONDITION after Close().
  absl::Status Record(Event event, std::string* event_id = nullptr);

  // Waits until every event recorded before the call is acknowledged (or refused as invalid),
  // or until the deadline: DEADLINE_EXCEEDED then, naming how many are left.
  absl::Status Flush(absl::Time deadline);

  // Stops taking events, flushes until the deadline, then ends the stream (cancelling it if
  // the daemon does not answer). What is still unacknowledged is counted as abandoned and the
  // answer is DEADLINE_EXCEEDED. Idempotent; later calls return the first one's answer.
  absl::Status Close(absl::Time deadline);

  // Policy.Check: the daemon's decision on `action`, within ClientOptions::check_timeout.
  absl::StatusOr<CheckResult> Check(const Action& action);

  // Policy.WaitForDecision: waits for the decision on a pending action (the daemon pushes it).
  // Survives a daemon restart (waits again). DEADLINE_EXCEEDED when nobody decided by
  // `deadline`; NOT_FOUND for an unknown id.
  absl::StatusOr<ApprovalResult> WaitForDecision(std::string_view pending_action_id,
                                                 absl::Time deadline);

  // Check(), then WaitForDecision() up to `approval_deadline` when approval is required.
  absl::StatusOr<Verdict> Authorize(const Action& action,
                                    absl::Time approval_deadline = absl::InfiniteFuture());

  ClientStats stats() const;

  const ClientOptions& options() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace toolgate

#endif  // TOOLGATE_CLIENT_H_
