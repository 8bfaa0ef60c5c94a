// InboundWebhooks: webhooks the upstream sends to toolgate (POST /v1/webhooks/kaplaix on the
// local HTTP port), verified with `x-kaplaix-signature` (signature.h) before anything is read.
//
// A request whose signature is missing, malformed, stale (|now - t| > 300 s) or wrong is
// answered 401 AUTHENTICATION_FAILED and changes nothing. A verified body of the form
//   {"type": "guardian.decision", "pendingActionId": "...", "decision": "approved"|"rejected",
//    "reason": "...", "approverId": "..."}
// is applied through Guardian::Decide, so a waiting agent wakes at once (200). The id may be
// toolgate's or the upstream's own (upstream_id, remote policy mode). Sending the same decision
// again answers 200 without a second decision; a different one for a decided action 409; an
// id this daemon does not hold 202 (the channel may serve several daemons). Any other verified
// body is acknowledged 202 and logged. docs/notifier.md has the whole contract.
//
// Thread-safe (the HTTP server's threads call Handle concurrently).
#ifndef TOOLGATE_DAEMON_NOTIFIER_INBOUND_H_
#define TOOLGATE_DAEMON_NOTIFIER_INBOUND_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "daemon/common/clock.h"
#include "daemon/guardian/guardian.h"

namespace toolgate::notifier {

// Bodies larger than this are refused (413) before their signature is computed.
inline constexpr size_t kMaxInboundBodyBytes = 1 << 20;

struct InboundResponse {
  int status = 200;
  std::string body;  // JSON: a result, or the error envelope of kaplaix-api.md
};

struct InboundStats {
  uint64_t accepted = 0;   // verified requests
  uint64_t rejected = 0;   // refused with 401 (signature) or 413 (size)
  uint64_t decisions = 0;  // guardian decisions applied
};

class InboundWebhooks {
 public:
  // `secret`: the channel secret; must not be empty. `guardian` may be null (decisions are then
  // acknowledged 202 and not applied).
  InboundWebhooks(std::string secret, Clock* clock, guardian::Guardian* guardian);

  // `signature_header`: the value of x-kaplaix-signature ("" when absent); `body`: raw bytes.
  InboundResponse Handle(std::string_view signature_header, const std::string& body);

  InboundStats stats() const;

 private:
  InboundResponse ApplyDecision(const std::string& id, bool approve, const std::string& reason,
                                const std::string& approver);

  const std::string secret_;
  Clock* const clock_;
  guardian::Guardian* const guardian_;
  std::atomic<uint64_t> accepted_{0}, rejected_{0}, decisions_{0};
};

}  // namespace toolgate::notifier

#endif  // TOOLGATE_DAEMON_NOTIFIER_INBOUND_H_
