// Normalizer: validates an agent's Event, fills what is missing (eventId, sourceTimestamp),
// hashes the tool arguments and builds the upstream envelope in canonical (RFC 8785) form.
// The raw arguments are not copied anywhere: only their hash leaves this stage.
//
// Thread-safe: immutable after construction; called concurrently from gRPC reactions.
#ifndef TOOLGATE_DAEMON_NORMALIZE_NORMALIZER_H_
#define TOOLGATE_DAEMON_NORMALIZE_NORMALIZER_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "daemon/common/clock.h"
#include "toolgate/v1/events.pb.h"

namespace toolgate::normalize {

struct NormalizerOptions {
  uint64_t max_argument_bytes = 1 << 20;  // larger arguments_json → INVALID_ARGUMENT
  std::string hmac_key;                   // non-empty: argumentsHash = HMAC-SHA256
};

// An event ready to be chained: its canonical envelope split around the place where
// `previousHash` goes (JCS orders keys, and "previousHash" falls after "payload"),
// so the chain stage only concatenates.
struct NormalizedEvent {
  std::string event_id;
  // The agent chose the eventId (else the daemon drew it). Only such an event can come again
  // (a resend after a lost acknowledgement): the spool looks only these up (RecentIds).
  bool id_from_client = false;
  std::string agent_id;
  std::string session_id;
  // The canonical envelope without previousHash, and where it goes: JCS orders keys, and
  // "previousHash" falls right after "payload", so the chain stage only splices it in. One
  // string (not two) because every allocation here is freed on another thread.
  std::string envelope;
  size_t split = 0;

  std::string_view head() const { return std::string_view(envelope).substr(0, split); }
  std::string_view tail() const { return std::string_view(envelope).substr(split); }
  void SetParts(std::string_view head, std::string_view tail) {
    envelope.assign(head);
    split = envelope.size();
    envelope.append(tail);
  }
  size_t size() const { return envelope.size() + 81; }
};

class Normalizer {
 public:
  Normalizer(NormalizerOptions options, Clock* clock);

  // Fills `out` from `in`. On error returns INVALID_ARGUMENT whose message names the field
  // as "<field_prefix>.<field>: <rule>", e.g. "events[2].session_id: required".
  absl::Status Normalize(const toolgate::v1::Event& in, const std::string& field_prefix,
                         NormalizedEvent* out) const;

  // The argumentsHash of a canonical JSON text (SHA-256 or HMAC-SHA256 hex).
  std::string HashArguments(const std::string& canonical) const;
  void AppendArgumentsHash(std::string_view canonical, std::string* out) const;

 private:
  NormalizerOptions options_;
  Clock* clock_;
};

// Appends `"key":` then a JSON string value (both in JCS escaping).
void AppendMember(std::string* out, std::string_view key, std::string_view value, bool* first);

}  // namespace toolgate::normalize

#endif  // TOOLGATE_DAEMON_NORMALIZE_NORMALIZER_H_
