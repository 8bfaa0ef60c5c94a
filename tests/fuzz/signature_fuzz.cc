// libFuzzer target: the x-kaplaix-signature header and the body arrive from the network before
// anything is verified. Input: the header, a newline, then the body. Any bytes must give a
// verdict, never a crash; and the verdict must be consistent with the parser and the signer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "daemon/common/crypto.h"
#include "daemon/notifier/signature.h"

namespace tn = toolgate::notifier;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nl = in.find('\n');
  const std::string_view header = in.substr(0, nl);
  const std::string_view body =
      nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
  constexpr std::string_view kSecret = "fuzz-secret";

  tn::SignatureHeader parsed;
  const tn::SignatureCheck parse = tn::ParseSignatureHeader(header, &parsed);
  const int64_t now = parse == tn::SignatureCheck::kOk ? parsed.timestamp : 1'700'000'000;
  const tn::SignatureCheck check = tn::VerifyKaplaixSignature(header, body, kSecret, now);
  if (parse != tn::SignatureCheck::kOk && check != parse) std::abort();  // same first problem
  if (check == tn::SignatureCheck::kOk) {
    // Accepted only when a v1 really is the MAC of "<t>.<body>".
    const std::string expected =
        toolgate::HmacSha256Hex(kSecret, parsed.timestamp_text + "." + std::string(body));
    bool found = false;
    for (const auto& mac : parsed.v1) found |= mac == expected;
    if (!found) std::abort();
  }
  if (parse == tn::SignatureCheck::kOk) {
    if (parsed.v1.empty() || parsed.timestamp < 0) std::abort();
    // What we sign ourselves always verifies, and goes stale just past the window.
    const std::string own = tn::KaplaixSignatureHeader(kSecret, parsed.timestamp, body);
    if (tn::VerifyKaplaixSignature(own, body, kSecret, parsed.timestamp) != tn::SignatureCheck::kOk)
      std::abort();
    if (tn::VerifyKaplaixSignature(own, body, kSecret, parsed.timestamp + 301) !=
        tn::SignatureCheck::kStale)
      std::abort();
  }
  return 0;
}
