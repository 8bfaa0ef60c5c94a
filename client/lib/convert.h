// Conversions between the public plain types (toolgate/event.h, toolgate/client.h) and the
// generated toolgate.v1 messages, which stay private to the library. Thread-safe (pure).
#ifndef TOOLGATE_CLIENT_LIB_CONVERT_H_
#define TOOLGATE_CLIENT_LIB_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include "toolgate/client.h"
#include "toolgate/event.h"
#include "toolgate/v1/events.pb.h"
#include "toolgate/v1/policy.pb.h"

namespace toolgate::client_internal {

// Moves the strings of `in` into `out` (a fresh message).
void ToProto(Event&& in, v1::Event* out);

void ToProto(const Action& in, v1::Action* out);

CheckResult FromProto(const v1::CheckResponse& in);
ApprovalResult FromProto(const v1::WaitUpdate& in);

Decision FromProto(v1::Decision d);

}  // namespace toolgate::client_internal

#endif  // TOOLGATE_CLIENT_LIB_CONVERT_H_
