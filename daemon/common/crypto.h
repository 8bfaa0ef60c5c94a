// Hashing, MACs and identifiers (OpenSSL libcrypto). Thread-safe.
#ifndef TOOLGATE_DAEMON_COMMON_CRYPTO_H_
#define TOOLGATE_DAEMON_COMMON_CRYPTO_H_

#include <string>
#include <string_view>

namespace toolgate {

// Lowercase hex SHA-256 of `data` (64 characters).
std::string Sha256Hex(std::string_view data);

// Lowercase hex HMAC-SHA256 of `data` under `key`.
std::string HmacSha256Hex(std::string_view key, std::string_view data);

// The same two, appended to `*out` (no string of their own: the per-event path).
void AppendSha256Hex(std::string_view data, std::string* out);
void AppendHmacSha256Hex(std::string_view key, std::string_view data, std::string* out);

// Compares in time independent of where the inputs differ (lengths may leak).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// A random (version 4) UUID in its canonical lowercase form.
std::string NewUuid();

}  // namespace toolgate

#endif  // TOOLGATE_DAEMON_COMMON_CRYPTO_H_
