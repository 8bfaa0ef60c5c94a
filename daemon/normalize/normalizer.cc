#include "daemon/normalize/normalizer.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/common/crypto.h"
#include "daemon/common/time_util.h"
#include "daemon/normalize/jcs.h"

namespace toolgate::normalize {
namespace {

using toolgate::v1::Event;

size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool IsUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

bool IsSha256Hex(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool IsKnownCategory(std::string_view c) {
  static const char* kKnown[] = {"identity", "reasoning",     "tool_api",   "data_movement",
                                 "approval", "session_start", "session_end"};
  for (const char* k : kKnown) {
    if (c == k) return true;
  }
  return c.size() > 2 && c.rfind("x-", 0) == 0;
}

absl::Status Invalid(const std::string& prefix, std::string_view field, std::string_view rule) {
  std::string msg = prefix;
  msg.append(".").append(field).append(": ").append(rule);
  return absl::InvalidArgumentError(msg);
}

// Builds a JSON object whose members are added in any order and emitted in JCS order.
// Member values are already-canonical JSON texts.
class ObjectBuilder {
 public:
  void Str(std::string_view key, std::string_view value) {
    std::string v;
    AppendCanonicalString(value, &v);
    members_.emplace_back(key, std::move(v));
  }
  void StrIfSet(std::string_view key, std::string_view value) {
    if (!value.empty()) Str(key, value);
  }
  void Raw(std::string_view key, std::string value) {
    members_.emplace_back(key, std::move(value));
  }
  void StrArray(std::string_view key, const google::protobuf::RepeatedPtrField<std::string>& v) {
    std::string out = "[";
    for (int i = 0; i < v.size(); ++i) {
      if (i) out.push_back(',');
      AppendCanonicalString(v[i], &out);
    }
    out.push_back(']');
    Raw(key, std::move(out));
  }
  std::string Build() {
    // All keys the daemon writes are ASCII, where UTF-16 order equals byte order.
    std::sort(members_.begin(), members_.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string out = "{";
    for (size_t i = 0; i < members_.size(); ++i) {
      if (i) out.push_back(',');
      AppendCanonicalString(members_[i].first, &out);
      out.push_back(':');
      out += members_[i].second;
    }
    out.push_back('}');
    return out;
  }

 private:
  std::vector<std::pair<std::string_view, std::string>> members_;
};

}  // namespace

void AppendMember(std::string* out, std::string_view key, std::string_view value, bool* first) {
  if (!*first) out->push_back(',');
  *first = false;
  // Keys are the daemon's own ASCII identifiers: no escaping needed, checked in debug builds.
  assert(key.find_first_of("\"\\") == std::string_view::npos);
  out->push_back('"');
  out->append(key);
  out->append("\":", 2);
  AppendCanonicalString(value, out);
}

Normalizer::Normalizer(NormalizerOptions options, Clock* clock)
    : options_(std::move(options)), clock_(clock) {}

std::string Normalizer::HashArguments(const std::string& canonical) const {
  std::string out;
  AppendArgumentsHash(canonical, &out);
  return out;
}

void Normalizer::AppendArgumentsHash(std::string_view canonical, std::string* out) const {
  if (options_.hmac_key.empty()) {
    AppendSha256Hex(canonical, out);
  } else {
    AppendHmacSha256Hex(options_.hmac_key, canonical, out);
  }
}

absl::Status Normalizer::Normalize(const Event& in, const std::string& p,
                                   NormalizedEvent* out) const {
  if (in.agent_id().empty() || CodePoints(in.agent_id()) > 255) {
    return Invalid(p, "agent_id", "required, 1-255 characters");
  }
  if (in.session_id().empty() || CodePoints(in.session_id()) > 255) {
    return Invalid(p, "session_id", "required, 1-255 characters");
  }
  if (!in.event_id().empty() && !IsUuid(in.event_id())) {
    return Invalid(p, "event_id", "must be a UUID (or empty to have one assigned)");
  }
  // Scratch buffers of this thread, reused event after event: this runs for every event on
  // gRPC's threads, and an allocation here is freed on the spool's thread.
  thread_local std::string generated_timestamp, canonical, payload_text;
  for (std::string* b : {&canonical, &payload_text}) {
    if (b->capacity() > 64 * 1024) std::string().swap(*b);  // after a large event: let it go
  }
  std::string_view timestamp = in.source_timestamp();
  if (timestamp.empty()) {
    generated_timestamp.clear();
    AppendRfc3339(clock_->Now(), &generated_timestamp);
    timestamp = generated_timestamp;
  } else if (auto t = ParseRfc3339(timestamp); !t.ok()) {
    return Invalid(p, "source_timestamp", std::string(t.status().message()));
  }
  const auto& a = in.attribution();
  if (!a.initiator_type().empty() && a.initiator_type() != "human" &&
      a.initiator_type() != "agent" && a.initiator_type() != "system") {
    return Invalid(p, "attribution.initiator_type", "must be human, agent or system");
  }

  std::string category;
  ObjectBuilder payload;
  payload_text.clear();  // set directly by tool calls and the generic kind, else from `payload`
  switch (in.kind_case()) {
    case Event::kToolCall: {
      const auto& t = in.tool_call();
      category = "tool_api";
      if (t.tool_name().empty()) return Invalid(p, "tool_call.tool_name", "required");
      // The hot path: members written directly, already in JCS order.
      payload_text = "{\"argumentsHash\":\"";
      if (!t.arguments_hash().empty()) {
        if (!t.arguments_json().empty()) {
          return Invalid(p, "tool_call.arguments_hash",
                         "give arguments_json or arguments_hash, not both");
        }
        if (!IsSha256Hex(t.arguments_hash())) {
          return Invalid(p, "tool_call.arguments_hash", "must be 64 lowercase hex characters");
        }
        payload_text += t.arguments_hash();
      } else {
        if (t.arguments_json().size() > options_.max_argument_bytes) {
          return Invalid(p, "tool_call.arguments_json",
                         absl::StrCat("larger than the limit of ", options_.max_argument_bytes,
                                      " bytes (ingest.max_argument_bytes)"));
        }
        const std::string_view text =
            t.arguments_json().empty() ? std::string_view("{}") : t.arguments_json();
        if (absl::Status c = CanonicalizeJsonTo(text, &canonical); !c.ok()) {
          return Invalid(p, "tool_call.arguments_json",
                         "must be JSON: " + std::string(c.message()));
        }
        AppendArgumentsHash(canonical, &payload_text);
      }
      if (t.duration_ms() < 0) return Invalid(p, "tool_call.duration_ms", "must be >= 0");
      payload_text.push_back('"');
      if (t.duration_ms() > 0) {
        payload_text += ",\"durationMs\":";
        payload_text += std::to_string(t.duration_ms());
      }
      bool first = false;
      if (!t.endpoint().empty()) AppendMember(&payload_text, "endpoint", t.endpoint(), &first);
      if (!t.response_status().empty()) {
        AppendMember(&payload_text, "responseStatus", t.response_status(), &first);
      }
      AppendMember(&payload_text, "toolName", t.tool_name(), &first);
      payload_text.push_back('}');
      break;
    }
    case Event::kIdentity: {
      const auto& i = in.identity();
      category = "identity";
      if (i.agent_name().empty()) return Invalid(p, "identity.agent_name", "required");
      payload.Str("agentName", i.agent_name());
      payload.StrIfSet("version", i.version());
      payload.StrArray("capabilities", i.capabilities());
      payload.StrIfSet("snapshotHash", i.snapshot_hash());
      break;
    }
    case Event::kReasoning: {
      const auto& r = in.reasoning();
      category = "reasoning";
      if (r.summary().empty()) return Invalid(p, "reasoning.summary", "required");
      if (!std::isfinite(r.confidence()) || r.confidence() < 0 || r.confidence() > 1) {
        return Invalid(p, "reasoning.confidence", "must be between 0 and 1");
      }
      payload.Str("summary", r.summary());
      std::string c;
      AppendCanonicalNumber(r.confidence(), &c);
      payload.Raw("confidence", std::move(c));
      payload.StrArray("alternatives", r.alternatives());
      break;
    }
    case Event::kDataMovement: {
      const auto& d = in.data_movement();
      category = "data_movement";
      const std::string& op = d.operation();
      if (op != "read" && op != "write" && op != "delete" && op != "export") {
        return Invalid(p, "data_movement.operation", "must be read, write, delete or export");
      }
      payload.Str("operation", op);
      payload.StrArray("objectIds", d.object_ids());
      payload.StrIfSet("diffSummary", d.diff_summary());
      break;
    }
    case Event::kApproval: {
      const auto& ap = in.approval();
      category = "approval";
      if (ap.approver_id().empty()) return Invalid(p, "approval.approver_id", "required");
      payload.Str("approverId", ap.approver_id());
      payload.StrIfSet("scope", ap.scope());
      payload.StrIfSet("decision", ap.decision());
      payload.StrIfSet("reason", ap.reason());
      payload.StrIfSet("pendingActionId", ap.pending_action_id());
      break;
    }
    case Event::kSessionStart:
      category = "session_start";
      break;
    case Event::kSessionEnd: {
      const auto& e = in.session_end();
      category = "session_end";
      if (e.outcome() == v1::SessionEnd::COMPLETED) {
        payload.Str("outcome", "completed");
      } else if (e.outcome() == v1::SessionEnd::FAILED) {
        payload.Str("outcome", "failed");
        ObjectBuilder err;
        err.Str("message", e.error_message());
        err.StrIfSet("type", e.error_type());
        payload.Raw("error", err.Build());
      } else {
        return Invalid(p, "session_end.outcome", "must be COMPLETED or FAILED");
      }
      break;
    }
    case Event::kGeneric: {
      const auto& g = in.generic();
      if (!IsKnownCategory(g.category())) {
        return Invalid(p, "generic.category",
                       "unknown category (identity, reasoning, tool_api, data_movement, approval, "
                       "session_start, session_end, or x-<name>)");
      }
      category = g.category();
      if (g.payload_json().size() > options_.max_argument_bytes) {
        return Invalid(p, "generic.payload_json", "larger than ingest.max_argument_bytes");
      }
      if (absl::Status c =
              CanonicalizeJsonTo(g.payload_json().empty() ? "{}" : g.payload_json(), &payload_text);
          !c.ok()) {
        return Invalid(p, "generic.payload_json", "must be JSON: " + std::string(c.message()));
      }
      if (payload_text.empty() || payload_text[0] != '{') {
        return Invalid(p, "generic.payload_json", "must be a JSON object");
      }
      // Generic payloads are audit content of the agent's own choosing: they are stored as
      // given (canonicalized), unlike tool arguments.
      break;
    }
    case Event::KIND_NOT_SET:
      return Invalid(p, "kind",
                     "one of tool_call, identity, reasoning, data_movement, approval, "
                     "session_start, session_end, generic is required");
  }

  if (payload_text.empty()) payload_text = payload.Build();

  out->id_from_client = !in.event_id().empty();
  out->event_id = out->id_from_client ? in.event_id() : NewUuid();
  out->agent_id = in.agent_id();
  out->session_id = in.session_id();

  // Envelope members in JCS (byte) order; "previousHash" goes between head and tail.
  std::string& h = out->envelope;
  h.clear();
  h.reserve(256 + payload_text.size());
  h.push_back('{');
  bool first = true;
  auto opt = [&](std::string* s, const char* key, const std::string& v, bool* f) {
    if (!v.empty()) AppendMember(s, key, v, f);
  };
  opt(&h, "actorId", a.actor_id(), &first);
  opt(&h, "actorType", a.actor_type(), &first);
  AppendMember(&h, "agentId", in.agent_id(), &first);
  opt(&h, "agentVersion", a.agent_version(), &first);
  AppendMember(&h, "category", category, &first);
  opt(&h, "causationEventId", a.causation_event_id(), &first);
  opt(&h, "correlationId", a.correlation_id(), &first);
  AppendMember(&h, "eventId", out->event_id, &first);
  opt(&h, "initiatorId", a.initiator_id(), &first);
  opt(&h, "initiatorType", a.initiator_type(), &first);
  opt(&h, "operation", a.operation(), &first);
  opt(&h, "parentEventId", a.parent_event_id(), &first);
  h += ",\"payload\":";
  h += payload_text;

  out->split = h.size();
  std::string& t = out->envelope;
  bool tail_first = false;  // the tail always follows the head's members
  opt(&t, "runId", a.run_id(), &tail_first);
  AppendMember(&t, "schemaVersion", "1.0", &tail_first);
  AppendMember(&t, "sessionId", in.session_id(), &tail_first);
  opt(&t, "sourceFramework", a.source_framework(), &tail_first);
  AppendMember(&t, "sourceTimestamp", timestamp, &tail_first);
  opt(&t, "targetSystem", a.target_system(), &tail_first);
  opt(&t, "toolType", a.tool_type(), &tail_first);
  opt(&t, "traceId", a.trace_id(), &tail_first);
  t.push_back('}');
  return absl::OkStatus();
}

}  // namespace toolgate::normalize
