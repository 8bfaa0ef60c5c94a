// libFuzzer target for the RFC 8785 canonicalizer.
//
// Invariants checked (abort on violation):
//  1. Errors are always InvalidArgument (no crash, no other code).
//  2. Canonicalization is idempotent: canonicalizing the output again yields the same bytes.
//  3. Differential check against nlohmann::json: the canonical output parses with nlohmann and
//     AppendCanonical of that value reproduces it byte for byte; and any input nlohmann accepts
//     whose value AppendCanonical can serialize is accepted by CanonicalizeJson too, except for
//     the documented stricter rules (duplicate keys, nesting limit, byte order mark) and inputs
//     containing a NUL byte (nlohmann treats NUL as end of input and ignores what follows).
//  4. Whatever CanonicalizeJson accepts, nlohmann accepts too: Policy.Check validates arguments
//     with the canonicalizer alone, and the policy engine parses them with nlohmann later.
//
// Build and run (from the repository root; one command per line):
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined
//       -fno-sanitize-recover=undefined -I. daemon/normalize/jcs.cc tests/fuzz/jcs_fuzz.cc
//       $(pkg-config --libs absl_statusor absl_status absl_strings) -o /tmp/jcs_fuzz
//   mkdir -p /tmp/jcs_corpus
//   /tmp/jcs_fuzz -max_total_time=60 /tmp/jcs_corpus tests/fuzz/corpus/jcs
// (New inputs go to the first directory, so the checked-in seeds stay as they are.)

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/normalize/jcs.h"

namespace {

[[noreturn]] void Fail(const char* what, std::string_view a, std::string_view b) {
  std::fprintf(stderr, "jcs_fuzz invariant violated: %s\n  a=[%.*s]\n  b=[%.*s]\n", what,
               static_cast<int>(a.size()), a.data(), static_cast<int>(b.size()), b.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using toolgate::normalize::AppendCanonical;
  using toolgate::normalize::CanonicalizeJson;
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  const absl::StatusOr<std::string> first = CanonicalizeJson(input);
  if (!first.ok()) {
    const std::string message(first.status().message());
    if (first.status().code() != absl::StatusCode::kInvalidArgument) {
      Fail("unexpected status code", input, message);
    }
    // Inputs nlohmann accepts and AppendCanonical can serialize must only be rejected for the
    // documented stricter rules.
    const nlohmann::json parsed = nlohmann::json::parse(input, nullptr, /*allow_exceptions=*/false);
    std::string via;
    if (!parsed.is_discarded() && AppendCanonical(parsed, &via).ok() &&
        message.find("duplicate object key") == std::string::npos &&
        message.find("max_depth") == std::string::npos && input.substr(0, 3) != "\xEF\xBB\xBF" &&
        input.find('\0') == std::string_view::npos) {
      Fail("rejected input that nlohmann accepts", input, message);
    }
    return 0;
  }

  if (!nlohmann::json::accept(input)) Fail("nlohmann rejects accepted input", input, *first);

  const absl::StatusOr<std::string> second = CanonicalizeJson(*first);
  if (!second.ok()) {
    Fail("canonical output rejected", *first, std::string(second.status().message()));
  }
  if (*second != *first) Fail("not idempotent", *first, *second);

  const nlohmann::json parsed = nlohmann::json::parse(*first, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) Fail("nlohmann rejects canonical output", input, *first);
  std::string via;
  if (const absl::Status s = AppendCanonical(parsed, &via); !s.ok()) {
    Fail("AppendCanonical failed on canonical output", *first, std::string(s.message()));
  }
  if (via != *first) Fail("AppendCanonical disagrees", *first, via);
  return 0;
}
