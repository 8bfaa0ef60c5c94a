#include "client/lib/ack_policy.h"

namespace toolgate::client_internal {

AckAction DecideAck(int32_t code, size_t batch_events) {
  constexpr int32_t kOk = 0, kInvalidArgument = 3;
  if (code == kOk) return AckAction::kDurable;
  if (code == kInvalidArgument) {
    return batch_events > 1 ? AckAction::kSplit : AckAction::kReject;
  }
  // RESOURCE_EXHAUSTED (spool full), UNAVAILABLE / INTERNAL (a failed store) and anything new:
  // nothing is lost by trying again later, and the bounded buffer limits what waits.
  return AckAction::kRetryLater;
}

}  // namespace toolgate::client_internal
