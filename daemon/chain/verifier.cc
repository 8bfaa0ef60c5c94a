#include "daemon/chain/verifier.h"

#include <nlohmann/json.hpp>

#include "daemon/common/crypto.h"
#include "daemon/normalize/jcs.h"

namespace toolgate::chain {

void Verifier::Add(std::string_view line) {
  ++line_no_;
  if (line.find_first_not_of(" \t\r\n") == std::string_view::npos) return;
  auto problem = [&](std::string session, std::string id, std::string msg) {
    report_.problems.push_back({line_no_, std::move(session), std::move(id), std::move(msg)});
  };
  nlohmann::json ev = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (ev.is_discarded() || !ev.is_object()) {
    problem("", "", "not a JSON object");
    return;
  }
  auto str = [&](const char* key) -> std::string {
    auto it = ev.find(key);
    return it != ev.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  const std::string session = str("sessionId");
  const std::string event_id = str("eventId");
  const std::string prev = str("previousHash");
  if (session.empty()) {
    problem("", event_id, "sessionId missing");
    return;
  }
  std::string canonical;
  if (absl::Status s = normalize::AppendCanonical(ev, &canonical); !s.ok()) {
    problem(session, event_id, std::string(s.message()));
    return;
  }
  const std::string hash = Sha256Hex(canonical);
  ++report_.events;
  if (auto it = seen_.find(event_id); it != seen_.end() && !event_id.empty()) {
    if (it->second == hash) {
      ++report_.duplicates;  // at-least-once delivery: a resend of the same event
    } else {
      problem(session, event_id, "eventId seen before with different content");
    }
    return;
  }
  seen_[event_id] = hash;
  sessions_[session][hash] = Node{line_no_, event_id, prev};
}

VerifyReport Verifier::Finish() {
  for (const auto& [session, nodes] : sessions_) {
    ++report_.sessions;
    std::map<std::string, const Node*> by_prev;  // previousHash → the event that names it
    size_t starts = 0;
    for (const auto& [hash, node] : nodes) {
      const std::string key = node.previous_hash;
      if (key.empty() || nodes.count(key) == 0) {
        if (++starts > 1) {
          report_.problems.push_back(
              {node.line, session, node.event_id,
               key.empty() ? "a second chain start (no previousHash) in the session"
                           : "previousHash " + key + " names no event of the session (gap)"});
        } else if (!key.empty()) {
          ++report_.partial_sessions;
        }
        continue;
      }
      auto [it, inserted] = by_prev.emplace(key, &node);
      if (!inserted) {
        report_.problems.push_back(
            {node.line, session, node.event_id,
             "fork: event " + it->second->event_id + " has the same previousHash " + key});
      }
    }
  }
  return std::move(report_);
}

}  // namespace toolgate::chain
