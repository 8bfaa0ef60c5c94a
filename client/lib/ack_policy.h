// What the client does with the daemon's answer to one stream batch (a StreamAck's code).
// A small pure function so that the table is tested on its own (client/tests/client_test.cc).
#ifndef TOOLGATE_CLIENT_LIB_ACK_POLICY_H_
#define TOOLGATE_CLIENT_LIB_ACK_POLICY_H_

#include <cstddef>
#include <cstdint>

namespace toolgate::client_internal {

enum class AckAction {
  kDurable,     // OK: the batch is stored; release it
  kRetryLater,  // the daemon could not store it now (RESOURCE_EXHAUSTED, a failed store …):
                // send it again after the retry hint or a backoff
  kSplit,       // INVALID_ARGUMENT for a batch of several events: the daemon stores all or
                // none, so send each event alone to find the bad one(s)
  kReject,      // INVALID_ARGUMENT for a single event: drop it and count it
};

// `code` is the gRPC status code carried by the ack.
AckAction DecideAck(int32_t code, size_t batch_events);

}  // namespace toolgate::client_internal

#endif  // TOOLGATE_CLIENT_LIB_ACK_POLICY_H_
