// The spool's tap (live tails): what it hands over, and when it stays silent.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <mutex>
#include <set>

#include "daemon/common/crypto.h"
#include "daemon/spool/spool.h"

namespace toolgate::spool {
namespace {

normalize::NormalizedEvent Ev(const std::string& agent, const std::string& session, int i,
                              size_t pad = 0) {
  normalize::NormalizedEvent e;
  e.session_id = session;
  e.agent_id = agent;
  e.event_id = NewUuid();
  e.SetParts(R"({"agentId":")" + agent + R"(","category":"x-test","eventId":")" + e.event_id +
                 R"(","payload":{"i":)" + std::to_string(i) + R"(,"pad":")" +
                 std::string(pad, 'p') + R"("})",
             R"(,"schemaVersion":"1.0","sessionId":")" + session +
                 R"(","sourceTimestamp":"2026-01-01T00:00:00Z"})");
  return e;
}

class SpoolTapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("spool_tap_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  std::unique_ptr<Spool> Open(uint64_t max_pages = 0) {
    SpoolOptions o;
    o.path = (dir_ / "spool.db").string();
    o.standalone = false;
    o.max_pages = max_pages;
    auto s = Spool::Open(o, &clock_);
    EXPECT_TRUE(s.ok()) << s.status();
    auto spool = std::move(*s);
    spool->SetTap([this](std::vector<CommittedEvent> events) {
      std::lock_guard<std::mutex> l(mu_);
      ++taps_;
      for (auto& e : events) tapped_.push_back(std::move(e));
    });
    return spool;
  }
  static absl::Status AppendSync(Spool* s, std::vector<normalize::NormalizedEvent> evs) {
    std::promise<absl::Status> p;
    s->Append(std::move(evs), [&](const absl::Status& st) { p.set_value(st); });
    return p.get_future().get();
  }
  static std::vector<StoredEvent> ReadAll(Spool* s) {
    auto r = s->NewReader();
    std::vector<StoredEvent> out;
    EXPECT_TRUE((*r)->ReadAfter(0, 1000000, 1 << 30, &out).ok());
    return out;
  }
  // The tap runs on the writer thread after the appenders' callbacks: a following commit
  // (an append, waited for) orders it before this returns.
  std::vector<CommittedEvent> Tapped(Spool* s) {
    EXPECT_TRUE(AppendSync(s, {Ev("barrier", "barrier", 0)}).ok());
    std::lock_guard<std::mutex> l(mu_);
    std::vector<CommittedEvent> out;
    for (auto& e : tapped_) {
      if (e.session_id != "barrier") out.push_back(e);
    }
    return out;
  }

  std::filesystem::path dir_;
  FakeClock clock_;
  std::mutex mu_;
  std::vector<CommittedEvent> tapped_;  // guarded by mu_
  int taps_ = 0;                        // guarded by mu_
};

TEST_F(SpoolTapTest, OffByDefaultAndWhenTurnedOff) {
  auto s = Open();
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", "s", 1)}).ok());
  s->SetTapping(true);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", "s", 2)}).ok());
  s->SetTapping(false);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", "s", 3)}).ok());
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", "s", 4)}).ok());
  std::lock_guard<std::mutex> l(mu_);
  ASSERT_EQ(tapped_.size(), 1u);
  EXPECT_NE(tapped_[0].body.find("\"i\":2"), std::string::npos);
  EXPECT_EQ(taps_, 1);  // commits while off do not call the tap at all
}

TEST_F(SpoolTapTest, HandsOverCommittedEventsAsStoredWithTheirChainInOrder) {
  auto s = Open();
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", "s1", 0)}).ok());  // before: not tapped
  s->SetTapping(true);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", "s1", 1), Ev("b", "s2", 1)}).ok());
  // Many appends in flight at once share group commits and, past 256 KiB, several chunks.
  std::vector<std::future<absl::Status>> pending;
  for (int i = 2; i < 60; ++i) {
    auto p = std::make_shared<std::promise<absl::Status>>();
    pending.push_back(p->get_future());
    s->Append({Ev("a", "s1", i, 9000)}, [p](const absl::Status& st) { p->set_value(st); });
  }
  for (auto& f : pending) ASSERT_TRUE(f.get().ok());
  const auto tapped = Tapped(s.get());
  const auto stored = ReadAll(s.get());
  // Everything stored after the tap was turned on, with the same seq and the same bytes.
  ASSERT_EQ(tapped.size(), 60u);
  ASSERT_EQ(stored.size(), 62u);  // + the first event and the barrier
  std::set<uint64_t> chunks;
  for (size_t i = 0; i < tapped.size(); ++i) {
    EXPECT_EQ(tapped[i].seq, stored[i + 1].seq) << i;
    EXPECT_EQ(tapped[i].body, stored[i + 1].body) << i;
    chunks.insert(tapped[i].seq);
  }
  EXPECT_GT(chunks.size(), 1u);
  EXPECT_EQ(tapped[0].agent_id, "a");
  EXPECT_EQ(tapped[0].session_id, "s1");
  EXPECT_EQ(tapped[1].agent_id, "b");
  EXPECT_EQ(tapped[1].session_id, "s2");
  // The bodies carry the chain: s1's first tapped event links to the untapped one before it.
  EXPECT_NE(tapped[0].body.find("\"previousHash\":\"" + Sha256Hex(stored[0].body) + "\""),
            std::string::npos);
  EXPECT_EQ(tapped[1].body.find("previousHash"), std::string::npos);  // first of s2
  std::string prev = tapped[0].body;
  for (size_t i = 2; i < tapped.size(); ++i) {
    EXPECT_NE(tapped[i].body.find("\"previousHash\":\"" + Sha256Hex(prev) + "\""),
              std::string::npos)
        << i;
    prev = tapped[i].body;
  }
}

TEST_F(SpoolTapTest, RefusedCommitsAndRetriedDeadLettersAreNotTapped) {
  auto s = Open(/*max_pages=*/(3 << 19) / Spool::kPageSize);  // 1.5 MiB: "the disk"
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", "s", 0)}).ok());
  auto first = ReadAll(s.get());
  ASSERT_EQ(first.size(), 1u);
  s->DeadLetter({{first[0].ref(), first[0].body, 400, "BAD", "no"}});
  s->SetTapping(true);
  absl::Status full;
  int stored = 0;
  for (int i = 1; i < 400 && full.ok(); ++i) {
    full = AppendSync(s.get(), {Ev("a", "s", i, 8000)});
    if (full.ok()) ++stored;
  }
  ASSERT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  {
    std::lock_guard<std::mutex> l(mu_);
    EXPECT_EQ(tapped_.size(), static_cast<size_t>(stored));  // not the refused one
  }
  // Free the disk, then requeue the dead letter: an old event again, not a new one.
  std::vector<EventRef> refs;
  for (const auto& r : ReadAll(s.get())) refs.push_back(r.ref());
  s->Ack(refs);
  std::promise<uint64_t> retried;
  s->RetryDeadLetters({}, [&](uint64_t n) { retried.set_value(n); });
  ASSERT_EQ(retried.get_future().get(), 1u);
  const auto tapped = Tapped(s.get());
  EXPECT_EQ(tapped.size(), static_cast<size_t>(stored));
  for (const auto& e : tapped) EXPECT_EQ(e.body.find("\"i\":0,"), std::string::npos);
}

}  // namespace
}  // namespace toolgate::spool
