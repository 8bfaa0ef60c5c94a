// What the notifier does with a receiver's answer, and when it tries again: a small pure
// function, tested by table (notifier/notifier_test.cc).
//
// Receivers must answer 2xx within the timeout (5 s by default). Anything else — another
// status, a timeout, a refused connection — is retried after each delay of the schedule in
// turn (10 s, 40 s, 90 s by default); after the last one the delivery is dead (logged, counted,
// kept aside in notifier.db).
#ifndef TOOLGATE_DAEMON_NOTIFIER_DELIVERY_POLICY_H_
#define TOOLGATE_DAEMON_NOTIFIER_DELIVERY_POLICY_H_

#include <chrono>
#include <vector>

namespace toolgate::notifier {

enum class DeliveryOutcome {
  kDelivered,  // 2xx: the delivery is done and leaves the store
  kRetry,      // try again after `delay`
  kDead,       // the schedule is exhausted: give up
};
const char* DeliveryOutcomeName(DeliveryOutcome o);

struct DeliveryDecision {
  DeliveryOutcome outcome = DeliveryOutcome::kDelivered;
  std::chrono::milliseconds delay{0};  // kRetry only
};

// `http_status` is 0 when no answer arrived (`transport_error`). `attempts` counts the attempts
// made, this one included (>= 1): attempt n failing is retried after retry_delays[n-1].
DeliveryDecision DecideDelivery(long http_status, bool transport_error, int attempts,
                                const std::vector<std::chrono::milliseconds>& retry_delays);

}  // namespace toolgate::notifier

#endif  // TOOLGATE_DAEMON_NOTIFIER_DELIVERY_POLICY_H_
