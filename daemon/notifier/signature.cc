#include "daemon/notifier/signature.h"

#include <cstdlib>

#include "daemon/common/crypto.h"

namespace toolgate::notifier {
namespace {

constexpr size_t kMacHexLength = 64;  // SHA-256
constexpr size_t kMaxTimestampDigits = 12;
// A header is short; anything longer is not one (and would only cost time to split).
constexpr size_t kMaxHeaderLength = 4096;
constexpr size_t kMaxSignatures = 8;

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool IsHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

const char* SignatureCheckName(SignatureCheck c) {
  switch (c) {
    case SignatureCheck::kOk:
      return "ok";
    case SignatureCheck::kMissingHeader:
      return "missing_header";
    case SignatureCheck::kMalformed:
      return "malformed";
    case SignatureCheck::kMissingTimestamp:
      return "missing_timestamp";
    case SignatureCheck::kBadTimestamp:
      return "bad_timestamp";
    case SignatureCheck::kMissingSignature:
      return "missing_signature";
    case SignatureCheck::kBadSignature:
      return "bad_signature";
    case SignatureCheck::kStale:
      return "stale";
    case SignatureCheck::kMismatch:
      return "mismatch";
  }
  return "unknown";
}

SignatureCheck ParseSignatureHeader(std::string_view header, SignatureHeader* out) {
  *out = SignatureHeader();
  header = TrimSpaces(header);
  if (header.empty()) return SignatureCheck::kMissingHeader;
  if (header.size() > kMaxHeaderLength) return SignatureCheck::kMalformed;
  bool have_t = false;
  for (bool last = false; !last;) {
    const size_t comma = header.find(',');
    last = comma == std::string_view::npos;
    std::string_view part = TrimSpaces(header.substr(0, comma));
    header = last ? std::string_view() : header.substr(comma + 1);
    const size_t eq = part.find('=');
    if (part.empty() || eq == std::string_view::npos || eq == 0) return SignatureCheck::kMalformed;
    const std::string_view key = TrimSpaces(part.substr(0, eq));
    const std::string_view value = TrimSpaces(part.substr(eq + 1));
    if (key == "t") {
      if (have_t) return SignatureCheck::kMalformed;  // which one was signed?
      have_t = true;
      if (value.empty() || value.size() > kMaxTimestampDigits) return SignatureCheck::kBadTimestamp;
      int64_t t = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return SignatureCheck::kBadTimestamp;
        t = t * 10 + (c - '0');
      }
      out->timestamp = t;
      out->timestamp_text = std::string(value);
    } else if (key == "v1") {
      if (value.size() != kMacHexLength) return SignatureCheck::kBadSignature;
      std::string mac(value);
      for (char& c : mac) {
        if (!IsHex(c)) return SignatureCheck::kBadSignature;
        if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
      }
      if (out->v1.size() >= kMaxSignatures) return SignatureCheck::kMalformed;
      out->v1.push_back(std::move(mac));
    }
    // Other schemes (v0, …) are not ours to check; they neither help nor hurt.
  }
  if (!have_t) return SignatureCheck::kMissingTimestamp;
  if (out->v1.empty()) return SignatureCheck::kMissingSignature;
  return SignatureCheck::kOk;
}

SignatureCheck VerifyKaplaixSignature(std::string_view header, std::string_view body,
                                      std::string_view secret, int64_t now_unix_seconds,
                                      int64_t tolerance_seconds) {
  SignatureHeader parsed;
  if (SignatureCheck c = ParseSignatureHeader(header, &parsed); c != SignatureCheck::kOk) return c;
  // Both are bounded (12 digits; a real clock), so the difference cannot overflow.
  if (std::llabs(now_unix_seconds - parsed.timestamp) > tolerance_seconds) {
    return SignatureCheck::kStale;
  }
  if (secret.empty()) return SignatureCheck::kMismatch;
  std::string signed_text = parsed.timestamp_text;
  signed_text += '.';
  signed_text.append(body.data(), body.size());
  const std::string expected = HmacSha256Hex(secret, signed_text);
  bool match = false;
  // Every candidate is compared (no early exit), each in constant time after a length check.
  for (const std::string& mac : parsed.v1) match |= ConstantTimeEquals(mac, expected);
  return match ? SignatureCheck::kOk : SignatureCheck::kMismatch;
}

std::string KaplaixSignatureHeader(std::string_view secret, int64_t timestamp,
                                   std::string_view body) {
  std::string signed_text = std::to_string(timestamp);
  signed_text += '.';
  signed_text.append(body.data(), body.size());
  return "t=" + std::to_string(timestamp) + ",v1=" + HmacSha256Hex(secret, signed_text);
}

std::string WebhookSignature(std::string_view secret, std::string_view body) {
  return HmacSha256Hex(secret, body);
}

}  // namespace toolgate::notifier
