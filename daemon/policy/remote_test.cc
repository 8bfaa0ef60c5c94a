// Remote and synced policy: the circuit breaker, the verdict parser, the conversion of the
// upstream's policies, and the guardian poller's parser.
#include <gtest/gtest.h>

#include "daemon/guardian/upstream_poller.h"
#include "daemon/policy/circuit_breaker.h"
#include "daemon/policy/policy.h"
#include "daemon/policy/policy_sync.h"
#include "daemon/policy/remote_checker.h"

namespace toolgate::policy {
namespace {

using std::chrono::milliseconds;
using State = CircuitBreaker::State;

TEST(CircuitBreaker, OpensAfterConsecutiveFailuresAndProbesOnceWhenResetPasses) {
  CircuitBreaker b(3, milliseconds(1000));
  const auto t0 = CircuitBreaker::Time{} + std::chrono::hours(1);
  struct Step {
    const char* what;
    int at_ms;
    char event;  // 'a' Allow, 's' success, 'f' failure
    bool allowed;
    State after;
  };
  const Step steps[] = {
      {"closed lets calls through", 0, 'a', true, State::kClosed},
      {"failure 1", 0, 'f', false, State::kClosed},
      {"failure 2", 0, 'f', false, State::kClosed},
      {"a success resets the count", 0, 's', false, State::kClosed},
      {"failure 1 again", 10, 'f', false, State::kClosed},
      {"failure 2 again", 20, 'f', false, State::kClosed},
      {"failure 3 opens", 30, 'f', false, State::kOpen},
      {"open refuses", 500, 'a', false, State::kOpen},
      {"still open just before reset", 1029, 'a', false, State::kOpen},
      {"after reset one probe goes", 1030, 'a', true, State::kHalfOpen},
      {"only one probe at a time", 1031, 'a', false, State::kHalfOpen},
      {"a failed probe opens again", 1100, 'f', false, State::kOpen},
      {"open for another reset period", 2000, 'a', false, State::kOpen},
      {"next probe", 2100, 'a', true, State::kHalfOpen},
      {"a good probe closes", 2150, 's', false, State::kClosed},
      {"closed again", 2151, 'a', true, State::kClosed},
      {"one failure after closing does not open", 2200, 'f', false, State::kClosed},
  };
  for (const Step& s : steps) {
    const auto now = t0 + milliseconds(s.at_ms);
    if (s.event == 'a') {
      EXPECT_EQ(b.Allow(now), s.allowed) << s.what;
    }
    if (s.event == 's') b.OnSuccess();
    if (s.event == 'f') b.OnFailure(now);
    EXPECT_EQ(b.state(), s.after) << s.what;
  }
  EXPECT_EQ(b.times_opened(), 2u);
}

TEST(RemoteVerdict, ParsesTheUpstreamAnswer) {
  auto v = ParseRemoteVerdict(R"({"verdict":"DENY","reason":"no"})");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->decision, toolgate::v1::DENY);
  EXPECT_EQ(v->reason, "no");
  v = ParseRemoteVerdict(R"({"verdict":"require_approval","pendingActionId":"p-1"})");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->decision, toolgate::v1::REQUIRE_APPROVAL);
  EXPECT_EQ(v->pending_action_id, "p-1");
  EXPECT_EQ(v->reason, "upstream verdict REQUIRE_APPROVAL");
  v = ParseRemoteVerdict(R"({"verdict":"ALLOW"})");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->decision, toolgate::v1::ALLOW);

  for (const char* bad :
       {"", "[]", "{}", R"({"verdict": 1})", R"({"verdict":"MAYBE"})", "not json"}) {
    EXPECT_FALSE(ParseRemoteVerdict(bad).ok()) << bad;
  }
}

TEST(PolicySync, TurnsActivePoliciesIntoOneDocument) {
  const std::string page1 = R"({"data": [
      {"id": "a", "status": "active", "default": "allow",
       "rules": [{"id": "r1", "effect": "deny", "match": {"tool_name": "rm"}}]},
      {"id": "old", "status": "archived", "default": "deny",
       "rules": [{"id": "r-old", "effect": "deny"}]}
    ], "nextCursor": "c2"})";
  const std::string page2 =
      R"([{"id": "b", "default": "require_approval",
           "rules": [{"id": "r2", "effect": "allow", "match": {"tool_name": "ls"}}]}])";
  auto doc = UpstreamPoliciesToDocument({page1, page2});
  ASSERT_TRUE(doc.ok()) << doc.status();
  auto set = CompilePolicy(*doc, "upstream");
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ((*set)->size(), 2u);  // the archived policy's rule is not there
  EXPECT_EQ((*set)->rule(0).id, "r1");
  EXPECT_EQ((*set)->rule(1).id, "r2");
  // The strictest default of the active policies.
  EXPECT_EQ((*set)->default_effect(), Effect::kRequireApproval);
  EXPECT_EQ((*set)->revision().rfind("upstream:", 0), 0u);
  // Same content, same revision.
  auto again = CompilePolicy(*UpstreamPoliciesToDocument({page1, page2}), "upstream");
  EXPECT_EQ((*again)->revision(), (*set)->revision());

  EXPECT_FALSE(UpstreamPoliciesToDocument({R"({"data": [{"id": "x"}]})"}).ok());
  EXPECT_FALSE(UpstreamPoliciesToDocument({R"({"data": [{"id": "x", "rules": [],
      "default": "maybe"}]})"})
                   .ok());
  EXPECT_FALSE(UpstreamPoliciesToDocument({"{}"}).ok());
  auto empty = UpstreamPoliciesToDocument({R"({"data": []})"});
  ASSERT_TRUE(empty.ok());
  auto allow_all = CompilePolicy(*empty, "upstream");
  ASSERT_TRUE(allow_all.ok()) << allow_all.status();
  EXPECT_EQ((*allow_all)->size(), 0u);
}

TEST(UpstreamPoller, ParsesDecisionsAndSkipsWhatItCannotUse) {
  std::string cursor;
  auto list = guardian::ParseUpstreamDecisions(R"({"data": [
      {"id": "u1", "status": "approved", "approverId": "alice", "decisionReason": "ok"},
      {"id": "u2", "status": "rejected", "decidedBy": "bob"},
      {"id": "u3", "status": "pending"},
      {"status": "approved"},
      "junk"
    ], "nextCursor": "next-1"})",
                                               &cursor);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].upstream_id, "u1");
  EXPECT_EQ(list[0].approver_id, "alice");
  EXPECT_EQ(list[0].reason, "ok");
  EXPECT_EQ(list[1].status, "rejected");
  EXPECT_EQ(list[1].approver_id, "bob");
  EXPECT_EQ(cursor, "next-1");
  EXPECT_TRUE(guardian::ParseUpstreamDecisions("not json", &cursor).empty());
  EXPECT_EQ(cursor, "");
}

}  // namespace
}  // namespace toolgate::policy
