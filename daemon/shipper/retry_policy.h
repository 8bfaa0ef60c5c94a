// What the shipper does with an upstream answer, and when it tries again: small pure
// functions, tested by table (shipper/retry_policy_test.cc).
#ifndef TOOLGATE_DAEMON_SHIPPER_RETRY_POLICY_H_
#define TOOLGATE_DAEMON_SHIPPER_RETRY_POLICY_H_

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "daemon/common/clock.h"

namespace toolgate::shipper {

enum class ShipAction {
  kOk,          // 2xx: the events leave the spool
  kRetry,       // 408, 429, 500, 502, 503, 504, transport errors: back off, send again
  kAuthPause,   // 401, 403: the key is bad or revoked; say so loudly, keep the events, pause
  kDeadLetter,  // any other answer: the upstream will never accept these bytes
};

// `http_status` is 0 when no answer arrived (`transport_error`).
ShipAction Classify(long http_status, bool transport_error);
const char* ShipActionName(ShipAction a);

// Retry-After: delta-seconds or an HTTP-date (RFC 9110). nullopt when absent or malformed.
std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value, SystemTime now);

// Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^(attempt-1))].
// `random01` in [0, 1). attempt >= 1.
std::chrono::milliseconds BackoffDelay(int attempt, std::chrono::milliseconds initial,
                                       std::chrono::milliseconds max, double random01);

}  // namespace toolgate::shipper

#endif  // TOOLGATE_DAEMON_SHIPPER_RETRY_POLICY_H_
