// RFC 8785 JSON Canonicalization Scheme (JCS).
//
// The canonical form is what the daemon hashes and signs: object members sorted by key (keys
// compared as UTF-16 code unit sequences), strings escaped minimally, numbers written as
// ECMAScript's Number.prototype.toString of the IEEE-754 double, no whitespace.
//
// All functions are thread-safe and produce UTF-8 output. CanonicalizeJson and AppendCanonical
// never throw (allocation failure becomes absl::ResourceExhaustedError).

#ifndef TOOLGATE_DAEMON_NORMALIZE_JCS_H_
#define TOOLGATE_DAEMON_NORMALIZE_JCS_H_

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace toolgate::normalize {

// Default limit on array/object nesting for CanonicalizeJson.
inline constexpr int kDefaultJcsMaxDepth = 128;

// Parses `json_text` (must be a single JSON value, UTF-8, RFC 8259 grammar; insignificant
// whitespace is allowed around tokens; a leading byte order mark is not) and returns its RFC 8785
// canonical bytes.
//
// Numbers are read as IEEE-754 doubles exactly like JavaScript's JSON.parse (so `1.0` -> `1`,
// `1e2` -> `100`, large integers are rounded to the nearest double, and values below the smallest
// subnormal become `0`).
//
// `max_depth` bounds the nesting of arrays/objects: `[]` has depth 1, a scalar depth 0. The parser
// is iterative, so large limits do not consume stack.
//
// Errors: absl::InvalidArgumentError whose message names the problem and the byte offset in
// `json_text`, e.g. "jcs: duplicate object key at byte 17". Problems: not JSON (syntax error,
// trailing data, NaN/Infinity literals, raw control characters in strings), invalid UTF-8, lone
// surrogate escapes, duplicate object keys (compared after unescaping), numbers whose magnitude
// overflows a finite double, nesting deeper than `max_depth`. If memory allocation fails,
// absl::ResourceExhaustedError.
absl::StatusOr<std::string> CanonicalizeJson(std::string_view json_text,
                                             int max_depth = kDefaultJcsMaxDepth);

// The same, into `*out` (replaced; its capacity is reused, so a caller that keeps a buffer
// canonicalizes without allocating). On error `*out` is unspecified.
absl::Status CanonicalizeJsonTo(std::string_view json_text, std::string* out,
                                int max_depth = kDefaultJcsMaxDepth);

// Appends the canonical bytes of an already parsed value to `*out` (used to serialize envelopes
// the daemon builds). Integers (signed or unsigned) are converted to the nearest double, as
// JavaScript would.
//
// Errors: absl::InvalidArgumentError for non-finite numbers, invalid UTF-8 in strings or keys,
// binary or discarded values, and nesting deeper than 512 levels. On error `*out` is left as it
// was on entry.
absl::Status AppendCanonical(const nlohmann::json& value, std::string* out);

// Appends one canonical JSON string literal (quotes included). Returns false, and leaves
// `*out` unspecified, when `s` is not valid UTF-8. Used to build envelopes without a tree.
bool AppendCanonicalString(std::string_view s, std::string* out);

// Appends one canonical number (ECMAScript Number.prototype.toString). `d` must be finite.
void AppendCanonicalNumber(double d, std::string* out);

}  // namespace toolgate::normalize

#endif  // TOOLGATE_DAEMON_NORMALIZE_JCS_H_
