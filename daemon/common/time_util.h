// RFC 3339 timestamps: formatting the daemon's own and validating the agents'.
#ifndef TOOLGATE_DAEMON_COMMON_TIME_UTIL_H_
#define TOOLGATE_DAEMON_COMMON_TIME_UTIL_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "daemon/common/clock.h"

namespace toolgate {

// "2026-11-23T17:04:00.123456Z" (UTC, microseconds).
std::string FormatRfc3339(SystemTime t);
void AppendRfc3339(SystemTime t, std::string* out);  // the same, appended to `*out`

// Parses an RFC 3339 date-time that carries a timezone ("Z" or "+hh:mm"/"-hh:mm");
// fractional seconds optional. A time without a timezone is an error, so that an
// agent's local time can never be mistaken for UTC.
absl::StatusOr<SystemTime> ParseRfc3339(std::string_view text);

}  // namespace toolgate

#endif  // TOOLGATE_DAEMON_COMMON_TIME_UTIL_H_
