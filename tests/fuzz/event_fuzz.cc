// libFuzzer target for event validation: an agent's toolgate.v1.Event, as the daemon receives
// it, through the Normalizer (validation, argument canonicalization and hashing, envelope).
//
// The input is the Event in protobuf's JSON mapping when it starts with '{' (seeds stay
// readable, and the fuzzer reaches the field rules quickly), else in the binary wire format.
//
// Invariants checked (abort on violation):
//  1. A refusal is INVALID_ARGUMENT and names the field: "events[0].<field>: <rule>".
//  2. An accepted event's envelope (head + tail, previousHash not yet spliced in) is RFC 8785
//     canonical JSON: canonicalizing it again yields the same bytes; the split point is inside
//     it; the envelope carries the eventId the Normalizer reports.
//  3. Normalizing the same event twice gives the same envelope (the eventId and the timestamp
//     fixed by the event or the fake clock): the hash is deterministic.
//
// Built and run by scripts/fuzz.sh (`scripts/fuzz.sh event 60`).

#include <google/protobuf/util/json_util.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/strings/match.h"
#include "daemon/common/clock.h"
#include "daemon/normalize/jcs.h"
#include "daemon/normalize/normalizer.h"
#include "toolgate/v1/events.pb.h"

namespace {

[[noreturn]] void Fail(const char* what, std::string_view a, std::string_view b = "") {
  std::fprintf(stderr, "event_fuzz invariant violated: %s\n  a=[%.*s]\n  b=[%.*s]\n", what,
               static_cast<int>(a.size()), a.data(), static_cast<int>(b.size()), b.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static toolgate::FakeClock clock;
  static const toolgate::normalize::Normalizer normalizer({/*max_argument_bytes=*/4096, ""},
                                                          &clock);
  const std::string input(reinterpret_cast<const char*>(data), size);
  toolgate::v1::Event event;
  if (!input.empty() && input[0] == '{') {
    if (!google::protobuf::util::JsonStringToMessage(input, &event).ok()) return 0;
  } else if (!event.ParseFromString(input)) {
    return 0;
  }
  // A fixed id, so that two runs are comparable (an empty one is filled with a random UUID).
  if (event.event_id().empty()) event.set_event_id("0f8fad5b-d9cb-469f-a165-70867728950e");

  toolgate::normalize::NormalizedEvent out;
  const absl::Status s = normalizer.Normalize(event, "events[0]", &out);
  if (!s.ok()) {
    if (s.code() != absl::StatusCode::kInvalidArgument)
      Fail("refusal not INVALID_ARGUMENT", s.ToString());
    const std::string message(s.message());
    if (!absl::StartsWith(message, "events[0].")) Fail("refusal names no field", message);
    return 0;
  }
  if (out.split > out.envelope.size()) Fail("split point outside the envelope", out.envelope);
  auto canonical = toolgate::normalize::CanonicalizeJson(out.envelope);
  if (!canonical.ok()) Fail("envelope is not JSON", out.envelope, canonical.status().ToString());
  if (*canonical != out.envelope) Fail("envelope is not canonical", out.envelope, *canonical);
  if (out.envelope.find("\"eventId\":\"" + out.event_id + "\"") == std::string::npos) {
    Fail("envelope lacks its eventId", out.envelope, out.event_id);
  }
  toolgate::normalize::NormalizedEvent again;
  if (!normalizer.Normalize(event, "events[0]", &again).ok() || again.envelope != out.envelope) {
    Fail("normalizing twice differs", out.envelope, again.envelope);
  }
  return 0;
}
