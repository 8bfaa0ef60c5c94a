#include "daemon/notifier/delivery_policy.h"

namespace toolgate::notifier {

const char* DeliveryOutcomeName(DeliveryOutcome o) {
  switch (o) {
    case DeliveryOutcome::kDelivered:
      return "delivered";
    case DeliveryOutcome::kRetry:
      return "retry";
    case DeliveryOutcome::kDead:
      return "dead";
  }
  return "unknown";
}

DeliveryDecision DecideDelivery(long http_status, bool transport_error, int attempts,
                                const std::vector<std::chrono::milliseconds>& retry_delays) {
  if (!transport_error && http_status >= 200 && http_status < 300) {
    return {DeliveryOutcome::kDelivered, std::chrono::milliseconds(0)};
  }
  if (attempts < 1) attempts = 1;
  if (static_cast<size_t>(attempts) > retry_delays.size()) {
    return {DeliveryOutcome::kDead, std::chrono::milliseconds(0)};
  }
  return {DeliveryOutcome::kRetry, retry_delays[attempts - 1]};
}

}  // namespace toolgate::notifier
