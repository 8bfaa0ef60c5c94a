// RemoteChecker: policy decisions from the upstream (remote policy mode).
//
// Each check is POST /v1/policies/check with the four fields the upstream decides on
// (toolType, operation, targetSystem, initiatorType); the answer is
// {"verdict": "ALLOW"|"DENY"|"REQUIRE_APPROVAL", "reason", "pendingActionId"?}. Around it:
//   - a timeout (policy.remote_timeout);
//   - a circuit breaker: `breaker_failures` consecutive failures (transport error, timeout,
//     non-2xx, or an answer without a known verdict) open it; while open no request goes out;
//     after `breaker_reset` one probe is let through (half-open);
//   - a short-lived cache of ALLOW and DENY verdicts keyed by the four fields
//     (policy.remote_cache_ttl; REQUIRE_APPROVAL is never cached: each needs its own pending
//     action). At most kMaxCacheEntries; when full, expired entries go, then everything.
// When no verdict can be had, the answer is the configured failure mode (open → ALLOW,
// closed → DENY) with the source FAILED_OPEN / FAILED_CLOSED and the reason why.
//
// Thread-safe. `done` runs either at once on the caller's thread (cache hit, breaker open) or
// on the HTTP client's thread; it must not block.
#ifndef TOOLGATE_DAEMON_POLICY_REMOTE_CHECKER_H_
#define TOOLGATE_DAEMON_POLICY_REMOTE_CHECKER_H_

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "daemon/common/clock.h"
#include "daemon/common/http_client.h"
#include "daemon/config/config.h"
#include "daemon/policy/circuit_breaker.h"
#include "toolgate/v1/policy.pb.h"

namespace toolgate::policy {

struct RemoteVerdict {
  toolgate::v1::Decision decision = toolgate::v1::DENY;
  toolgate::v1::DecisionSource source = toolgate::v1::REMOTE;
  std::string reason;
  std::string pending_action_id;  // the upstream's, with REQUIRE_APPROVAL
};

struct RemoteStats {
  uint64_t requests = 0, failures = 0, cache_hits = 0, failed_open = 0, failed_closed = 0;
  uint64_t breaker_opened = 0;
};

// Parses the upstream's answer body; InvalidArgument naming what is wrong. Pure, for tests.
absl::StatusOr<RemoteVerdict> ParseRemoteVerdict(const std::string& body);

class RemoteChecker {
 public:
  RemoteChecker(const config::PolicyOptions& options, HttpClient* http, Clock* clock);

  void Check(const toolgate::v1::Action& action, std::function<void(RemoteVerdict)> done);

  CircuitBreaker::State breaker_state() const { return breaker_.state(); }
  RemoteStats stats() const;

 private:
  RemoteVerdict Failed(const std::string& why);

  struct Cached {
    RemoteVerdict verdict;
    SteadyTime expires;
  };
  static constexpr size_t kMaxCacheEntries = 10000;

  const std::chrono::milliseconds timeout_;
  const std::chrono::milliseconds cache_ttl_;
  const bool fail_open_;
  HttpClient* const http_;
  Clock* const clock_;
  CircuitBreaker breaker_;
  std::mutex cache_mu_;
  std::unordered_map<std::string, Cached> cache_;  // guarded by cache_mu_
  std::atomic<uint64_t> requests_{0}, failures_{0}, cache_hits_{0}, failed_open_{0},
      failed_closed_{0};
};

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_REMOTE_CHECKER_H_
