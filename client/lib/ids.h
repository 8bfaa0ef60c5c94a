// Event ids and timestamps the client stamps on events at Record() time, so that a resend
// after a reconnect carries the same eventId and sourceTimestamp. Thread-safe.
#ifndef TOOLGATE_CLIENT_LIB_IDS_H_
#define TOOLGATE_CLIENT_LIB_IDS_H_

#include <string>

#include "absl/time/time.h"

namespace toolgate::client_internal {

// A random (version 4, RFC 4122 variant) UUID, lowercase: xxxxxxxx-xxxx-4xxx-[89ab]xxx-….
// OpenSSL's RAND_bytes: safe across fork(), unlike a seeded generator copied into a child.
std::string NewUuidV4();

// RFC 3339 in UTC with microseconds: 2026-11-23T17:04:00.123456Z.
std::string FormatRfc3339(absl::Time t);

}  // namespace toolgate::client_internal

#endif  // TOOLGATE_CLIENT_LIB_IDS_H_
