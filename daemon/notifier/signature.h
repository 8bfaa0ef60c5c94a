// Webhook signatures, both directions (kaplaix-api.md, "Webhook signatures").
//
// Inbound (upstream → toolgate): the header `x-kaplaix-signature: t=<unix seconds>,v1=<hex>`
// carries an HMAC-SHA256 under the channel secret over "<t>.<raw body>". A request is accepted
// only when the header parses, its timestamp is within the tolerance (300 s) of now, and one of
// its v1 values equals the expected MAC (compared in constant time after a length check).
//
// Outbound (toolgate → a receiver): `X-Webhook-Signature` is the lowercase hex HMAC-SHA256 of
// the raw body under the endpoint's secret, with no prefix and no timestamp.
//
// Pure functions over their arguments (the caller passes "now"): thread-safe, no I/O.
#ifndef TOOLGATE_DAEMON_NOTIFIER_SIGNATURE_H_
#define TOOLGATE_DAEMON_NOTIFIER_SIGNATURE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace toolgate::notifier {

// How far a signed timestamp may be from now, either way.
inline constexpr int64_t kSignatureToleranceSeconds = 300;

// What verification concluded. Everything but kOk is answered 401 and changes nothing.
enum class SignatureCheck {
  kOk,
  kMissingHeader,     // no header, or an empty one
  kMalformed,         // not a list of key=value pairs, or a key given twice where it may not be
  kMissingTimestamp,  // no t=
  kBadTimestamp,      // t= is not 1 to 12 decimal digits
  kMissingSignature,  // no v1=
  kBadSignature,      // a v1= that is not 64 hex digits
  kStale,             // |now - t| > tolerance
  kMismatch,          // well formed and fresh, but no v1 matches the expected MAC
};

// A short, stable word for logs and metrics ("ok", "missing_header", "stale", …).
const char* SignatureCheckName(SignatureCheck c);

// The parsed header: the timestamp and every v1 value (lowercased). Several v1 values may be
// present while a secret is rotated; any one matching is enough. Unknown keys (v0, …) are
// ignored.
struct SignatureHeader {
  int64_t timestamp = 0;
  std::string timestamp_text;  // as sent: the MAC covers these bytes, leading zeros included
  std::vector<std::string> v1;
};

// Parses `t=<digits>,v1=<64 hex>[,v1=…]` (spaces around parts tolerated). Returns kOk and
// fills `out`, or the first problem found.
SignatureCheck ParseSignatureHeader(std::string_view header, SignatureHeader* out);

// Full inbound check of `header` for `body` under `secret` at `now_unix_seconds`.
// An empty secret verifies nothing: kMismatch.
SignatureCheck VerifyKaplaixSignature(std::string_view header, std::string_view body,
                                      std::string_view secret, int64_t now_unix_seconds,
                                      int64_t tolerance_seconds = kSignatureToleranceSeconds);

// The header value an upstream would send for `body` at `timestamp` ("t=…,v1=…"). For tests
// and tools that sign on toolgate's behalf.
std::string KaplaixSignatureHeader(std::string_view secret, int64_t timestamp,
                                   std::string_view body);

// X-Webhook-Signature of an outbound delivery: lowercase hex HMAC-SHA256(secret, body).
std::string WebhookSignature(std::string_view secret, std::string_view body);

}  // namespace toolgate::notifier

#endif  // TOOLGATE_DAEMON_NOTIFIER_SIGNATURE_H_
