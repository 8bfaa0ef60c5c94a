// Verifier: checks previousHash chains offline, from events as JSON lines (an export, or what
// an upstream received). Used by `toolgate verify` and by the tests.
//
// Thread-compatible: one instance per input.
#ifndef TOOLGATE_DAEMON_CHAIN_VERIFIER_H_
#define TOOLGATE_DAEMON_CHAIN_VERIFIER_H_

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace toolgate::chain {

struct VerifyProblem {
  size_t line = 0;  // 1-based
  std::string session_id;
  std::string event_id;
  std::string message;
};

struct VerifyReport {
  size_t events = 0;
  size_t sessions = 0;
  size_t duplicates = 0;        // same eventId seen again with identical bytes (allowed)
  size_t partial_sessions = 0;  // chain starts mid-session (older events not in the input)
  std::vector<VerifyProblem> problems;
  bool ok() const { return problems.empty(); }
};

// Order-independent: events may arrive upstream in any order (concurrent requests), so each
// session's chain is rebuilt from its links. A session verifies when its distinct events form
// one unbroken line: one start (no previousHash, or one link to an event not in the input, which
// counts as a partial session), no event pointing to an unknown hash after that, no fork.
class Verifier {
 public:
  // Feeds one line (one JSON event envelope).
  void Add(std::string_view line);
  VerifyReport Finish();

 private:
  struct Node {
    size_t line;
    std::string event_id;
    std::string previous_hash;
  };
  size_t line_no_ = 0;
  VerifyReport report_;
  std::map<std::string, std::map<std::string, Node>> sessions_;  // session → hash → event
  std::map<std::string, std::string> seen_;  // eventId → hash, to tell duplicates apart
};

}  // namespace toolgate::chain

#endif  // TOOLGATE_DAEMON_CHAIN_VERIFIER_H_
