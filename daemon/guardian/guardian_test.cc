#include "daemon/guardian/guardian.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <future>

namespace toolgate::guardian {
namespace {

class GuardianTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::path(::testing::TempDir()) /
             ("guardian_" + std::to_string(::getpid()) + "_" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db"))
                .string();
    std::filesystem::remove(path_);
  }
  std::unique_ptr<Guardian> Open(Clock* clock = Clock::Real()) {
    auto g = Guardian::Open(path_, clock, [this](const PendingAction& a) {
      std::lock_guard<std::mutex> l(mu_);
      audited_.push_back(a);
    });
    EXPECT_TRUE(g.ok()) << g.status();
    return std::move(*g);
  }
  static toolgate::v1::Action Act() {
    toolgate::v1::Action a;
    a.set_agent_id("agent");
    a.set_session_id("s");
    a.set_tool_name("send_payment");
    a.set_arguments_json(R"({"amount": 5000})");
    return a;
  }
  std::string path_;
  std::mutex mu_;
  std::vector<PendingAction> audited_;
};

TEST_F(GuardianTest, ApproveWakesTheWaiterAndIsAudited) {
  auto g = Open();
  auto p = g->Create(Act(), "hash", "big-payment", "over 1000", std::chrono::minutes(5),
                     toolgate::v1::DENY);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->action().arguments_json().empty());  // arguments are never stored
  std::promise<PendingAction> woke;
  ASSERT_TRUE(g->Wait(p->id(), [&](const PendingAction& a) { woke.set_value(a); }).ok());
  ASSERT_TRUE(g->Decide(p->id(), true, "looks fine", "alice").ok());
  const PendingAction a = woke.get_future().get();
  EXPECT_EQ(a.status(), toolgate::v1::APPROVED);
  EXPECT_EQ(a.approver_id(), "alice");
  EXPECT_EQ(a.decision_reason(), "looks fine");
  ASSERT_EQ(audited_.size(), 1u);
  // Deciding twice is refused and says how it was decided.
  auto again = g->Decide(p->id(), false, "no", "bob");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.status().message().find("approved by alice"), std::string::npos);
  EXPECT_EQ(g->Decide("nope", true, "", "x").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(GuardianTest, TimeoutExpiresWithTheRulesDefaultNeverApproved) {
  auto g = Open();
  auto p = g->Create(Act(), "h", "r", "why", std::chrono::milliseconds(50), toolgate::v1::DENY);
  std::promise<PendingAction> woke;
  ASSERT_TRUE(g->Wait(p->id(), [&](const PendingAction& a) { woke.set_value(a); }).ok());
  auto f = woke.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  const PendingAction a = f.get();
  EXPECT_EQ(a.status(), toolgate::v1::EXPIRED);
  EXPECT_EQ(a.on_timeout(), toolgate::v1::DENY);
  EXPECT_EQ(a.approver_id(), "toolgate-timeout");
  EXPECT_EQ(g->pending(), 0u);
}

TEST_F(GuardianTest, PendingActionsSurviveARestartAndLateWaitersGetTheDecision) {
  std::string id;
  {
    auto g = Open();
    id = g->Create(Act(), "h", "r", "why", std::chrono::minutes(5), toolgate::v1::DENY)->id();
  }
  auto g = Open();
  EXPECT_EQ(g->pending(), 1u);
  auto listed = g->List(toolgate::v1::PENDING, 10);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id(), id);
  ASSERT_TRUE(g->Decide(id, false, "too risky", "carol").ok());
  // A waiter that arrives after the decision gets it at once.
  PendingAction got;
  ASSERT_TRUE(g->Wait(id, [&](const PendingAction& a) { got = a; }).ok());
  EXPECT_EQ(got.status(), toolgate::v1::REJECTED);
  EXPECT_EQ(got.decision_reason(), "too risky");
}

TEST_F(GuardianTest, UpstreamIdsAreFoundPendingOrDecidedAndOlderDatabasesAreMigrated) {
  const auto minutes = std::chrono::minutes(5);
  std::string first;
  {
    auto g = Open();
    first = g->Create(Act(), "h", "r", "why", minutes, toolgate::v1::DENY, "up-1")->id();
    g->Create(Act(), "h", "r", "local", minutes, toolgate::v1::DENY);  // no upstream id
  }
  {
    // As a database made before the column: no column, no index.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "DROP INDEX pending_upstream; "
                           "ALTER TABLE pending DROP COLUMN upstream_id",
                           nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  auto g = Open();
  auto found = g->GetByUpstreamId("up-1");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->id(), first);
  EXPECT_TRUE(absl::IsNotFound(g->GetByUpstreamId("up-2").status()));
  EXPECT_TRUE(absl::IsNotFound(g->GetByUpstreamId("").status()));  // local ones have none
  // Decided, it is still found; a pending one with the same upstream id comes first.
  ASSERT_TRUE(g->Decide(first, true, "ok", "alice").ok());
  EXPECT_EQ(g->GetByUpstreamId("up-1")->status(), toolgate::v1::APPROVED);
  const std::string second =
      g->Create(Act(), "h", "r", "again", minutes, toolgate::v1::DENY, "up-1")->id();
  EXPECT_EQ(g->GetByUpstreamId("up-1")->id(), second);
}

}  // namespace
}  // namespace toolgate::guardian
