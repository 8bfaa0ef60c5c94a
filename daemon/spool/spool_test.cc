#include "daemon/spool/spool.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "daemon/common/crypto.h"
#include "daemon/spool/recovery.h"

namespace toolgate::spool {
namespace {

normalize::NormalizedEvent Ev(const std::string& session, int i, size_t pad = 0) {
  normalize::NormalizedEvent e;
  e.session_id = session;
  e.agent_id = "agent";
  e.event_id = NewUuid();
  e.id_from_client = true;  // as a client library sends them: resends are recognised
  e.SetParts(R"({"agentId":"agent","category":"x-test","eventId":")" + e.event_id +
                 R"(","payload":{"i":)" + std::to_string(i) + R"(,"pad":")" +
                 std::string(pad, 'p') + R"("})",
             R"(,"schemaVersion":"1.0","sessionId":")" + session +
                 R"(","sourceTimestamp":"2026-01-01T00:00:00Z"})");
  return e;
}

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("spool_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  std::unique_ptr<Spool> Open(bool standalone, uint64_t max_bytes = 1 << 30) {
    SpoolOptions o;
    o.path = (dir_ / "spool.db").string();
    o.standalone = standalone;
    o.limits.max_bytes = max_bytes;
    o.limits.retention_max_bytes = max_bytes;
    auto s = Spool::Open(o, &clock_);
    EXPECT_TRUE(s.ok()) << s.status();
    return std::move(*s);
  }
  // A standalone spool whose events expire after `max_age`.
  SpoolOptions Standalone(std::chrono::milliseconds max_age) const {
    SpoolOptions o;
    o.path = (dir_ / "spool.db").string();
    o.standalone = true;
    o.limits.retention_max_age = max_age;
    return o;
  }
  // Null (and a failure) when it does not open.
  static std::unique_ptr<Spool> OpenWith(const SpoolOptions& o, Clock* clock) {
    auto s = Spool::Open(o, clock);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
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
  std::filesystem::path dir_;
  FakeClock clock_;
};

TEST_F(SpoolTest, AppendIsDurableChainedAndSurvivesReopen) {
  {
    auto s = Open(false);
    ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1), Ev("a", 2), Ev("b", 1)}).ok());
    EXPECT_EQ(s->stats().queue_depth, 3u);
  }
  auto s = Open(false);
  EXPECT_EQ(s->stats().queue_depth, 3u);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 3)}).ok());
  const auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 4u);
  // The chain continues across the reopen: event 3 links to event 2.
  EXPECT_NE(rows[3].body.find("\"previousHash\":\"" + Sha256Hex(rows[1].body) + "\""),
            std::string::npos);
  EXPECT_NE(rows[1].body.find("\"previousHash\":\"" + Sha256Hex(rows[0].body) + "\""),
            std::string::npos);
  EXPECT_EQ(rows[2].body.find("previousHash"), std::string::npos);
}

TEST_F(SpoolTest, AckAndDeadLetterLeaveTheQueue) {
  auto s = Open(false);
  std::vector<normalize::NormalizedEvent> evs = {Ev("a", 1), Ev("a", 2), Ev("a", 3)};
  const std::string dead_id = evs[1].event_id;
  ASSERT_TRUE(AppendSync(s.get(), evs).ok());
  auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].chunk_events, 3u);  // one request, one chunk
  s->Ack({rows[0].ref()});
  s->DeadLetter({{rows[1].ref(), rows[1].body, 422, "NORMALIZATION_FAILED", "bad payload"}});
  ASSERT_TRUE(AppendSync(s.get(), {Ev("b", 1)}).ok());  // a commit after both ops
  EXPECT_EQ(s->stats().queue_depth, 2u);
  EXPECT_EQ(s->stats().dead_letters, 1u);
  // The first chunk stays whole until its third event is done (a crash resends it whole).
  EXPECT_EQ(ReadAll(s.get()).size(), 4u);
  auto r = s->NewReader();
  std::vector<DeadLetterRow> dl;
  ASSERT_TRUE((*r)->ListDeadLetters(0, 10, &dl).ok());
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].code, "NORMALIZATION_FAILED");
  EXPECT_EQ(dl[0].message, "bad payload");
  EXPECT_EQ(dl[0].http_status, 422);
  EXPECT_EQ(dl[0].event_id, dead_id);
  EXPECT_EQ(dl[0].body, rows[1].body);

  std::promise<uint64_t> requeued;
  s->RetryDeadLetters({}, [&](uint64_t n) { requeued.set_value(n); });
  EXPECT_EQ(requeued.get_future().get(), 1u);
  EXPECT_EQ(s->stats().dead_letters, 0u);
  EXPECT_EQ(s->stats().queue_depth, 3u);
}

TEST_F(SpoolTest, FullSpoolRefusesWholeRequestsWithoutDropping) {
  auto s = Open(false, 1 << 16);
  int refused = 0, stored = 0;
  for (int i = 0; i < 200; ++i) {
    absl::Status st = AppendSync(s.get(), {Ev("a", i, 1000)});
    if (st.ok()) {
      ++stored;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
      EXPECT_NE(st.message().find("retry after"), std::string::npos);
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_EQ(ReadAll(s.get()).size(), static_cast<size_t>(stored));
  // Room returns once events are shipped.
  auto rows = ReadAll(s.get());
  std::vector<EventRef> refs;
  for (const auto& r : rows) refs.push_back(r.ref());
  s->Ack(refs);
  EXPECT_TRUE(AppendSync(s.get(), {Ev("a", 999)}).ok());
}

TEST_F(SpoolTest, ResentEventsAreAcknowledgedButStoredOnceAndTheChainStaysWhole) {
  std::vector<normalize::NormalizedEvent> first = {Ev("a", 1), Ev("a", 2)};
  {
    auto s = Open(false);
    ASSERT_TRUE(AppendSync(s.get(), first).ok());
    // The acknowledgement was lost: the client sends the same events again, then a new one.
    std::vector<normalize::NormalizedEvent> again = first;
    again.push_back(Ev("a", 3));
    ASSERT_TRUE(AppendSync(s.get(), again).ok());
    EXPECT_EQ(s->stats().deduplicated, 2u);
    EXPECT_EQ(s->stats().queue_depth, 3u);
    const auto rows = ReadAll(s.get());
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_NE(rows[2].body.find("\"previousHash\":\"" + Sha256Hex(rows[1].body) + "\""),
              std::string::npos);
  }
  // After a restart the stored events are still recognised (the daemon crashed before the ack).
  auto s = Open(false);
  ASSERT_TRUE(AppendSync(s.get(), {first[1], Ev("a", 4)}).ok());
  EXPECT_EQ(s->stats().deduplicated, 1u);
  const auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_NE(rows[3].body.find("\"previousHash\":\"" + Sha256Hex(rows[2].body) + "\""),
            std::string::npos);
}

TEST_F(SpoolTest, ADamagedChunkIsSkippedAndSetAsideSoThatTheRestShips) {
  auto s = Open(false);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1)}).ok());
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 2), Ev("a", 3)}).ok());
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 4)}).ok());
  const auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 4u);
  const uint64_t bad = rows[1].seq;
  {  // a length prefix damaged on disk
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ / "spool.db").string().c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    const std::string sql =
        "UPDATE chunks SET body = x'ffffff7f00' WHERE seq = " + std::to_string(bad);
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto r = s->NewReader();
  std::vector<StoredEvent> out;
  ASSERT_TRUE((*r)->ReadAfter(0, 100, 1 << 20, &out).ok());
  ASSERT_EQ(out.size(), 2u);  // the chunks before and after it
  EXPECT_EQ(out[0].seq, rows[0].seq);
  EXPECT_EQ(out[1].seq, rows[3].seq);
  auto damaged = (*r)->TakeDamaged();
  ASSERT_EQ(damaged.size(), 1u);
  EXPECT_EQ(damaged[0].seq, bad);
  EXPECT_EQ(damaged[0].events, 2u);
  EXPECT_TRUE((*r)->TakeDamaged().empty());
  s->SetAside(damaged);
  s->SetAside(damaged);                                 // reported twice: set aside once
  ASSERT_TRUE(AppendSync(s.get(), {Ev("b", 1)}).ok());  // a commit after them
  EXPECT_EQ(s->stats().damaged_events, 2u);
  EXPECT_EQ(s->stats().queue_depth, 3u);
  EXPECT_EQ(ReadAll(s.get()).size(), 3u);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "spool.db").string().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT seq, count FROM damaged_chunks", -1, &st, nullptr);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(static_cast<uint64_t>(sqlite3_column_int64(st, 0)), bad);
  EXPECT_EQ(sqlite3_column_int64(st, 1), 2);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST_F(SpoolTest, ASessionIsReadPageByPageInOrderPastDamagedChunks) {
  auto s = Open(false);
  // 60 chunks of 100 events, sessions a and b interleaved in each: 6,000 events, two pages.
  for (int c = 0; c < 60; ++c) {
    std::vector<normalize::NormalizedEvent> evs;
    for (int i = 0; i < 100; ++i) evs.push_back(Ev(i % 2 ? "b" : "a", c * 100 + i));
    ASSERT_TRUE(AppendSync(s.get(), std::move(evs)).ok());
  }
  auto read_session = [&](const std::string& session, int* pages) {
    auto r = s->NewReader();
    std::vector<int> seen;
    uint64_t after = 0;
    bool end = false;
    *pages = 0;
    while (!end) {
      std::vector<StoredEvent> page;
      EXPECT_TRUE((*r)->ReadSessionPage(session, &after, &page, &end).ok());
      ++*pages;
      for (const auto& e : page) {
        auto j = nlohmann::json::parse(e.body);
        EXPECT_EQ(j["sessionId"], session);
        seen.push_back(j["payload"]["i"].get<int>());
      }
      if (*pages > 100) break;  // a cursor that does not advance
    }
    return seen;
  };
  int pages = 0;
  std::vector<int> a = read_session("a", &pages);
  ASSERT_EQ(a.size(), 3000u);
  for (size_t k = 0; k < a.size(); ++k) ASSERT_EQ(a[k], static_cast<int>(2 * k));
  EXPECT_GE(pages, 2);
  EXPECT_TRUE(read_session("nobody", &pages).empty());

  // The first 45 chunks damaged: a whole page of them yields no event, and the reading goes
  // on after them instead of ending there.
  const uint64_t first = ReadAll(s.get()).front().seq;
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "spool.db").string().c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  const std::string sql =
      "UPDATE chunks SET body = x'ffffff7f00' WHERE seq < " + std::to_string(first) + " + 45";
  ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  a = read_session("a", &pages);
  ASSERT_EQ(a.size(), 750u);
  for (size_t k = 0; k < a.size(); ++k) ASSERT_EQ(a[k], static_cast<int>(4500 + 2 * k));
}

TEST_F(SpoolTest, IdsTheDaemonDrewAreNotLookedUp) {
  auto s = Open(false);
  normalize::NormalizedEvent e = Ev("a", 1);
  e.id_from_client = false;  // no client knows this id before its acknowledgement
  ASSERT_TRUE(AppendSync(s.get(), {e}).ok());
  ASSERT_TRUE(AppendSync(s.get(), {e}).ok());
  EXPECT_EQ(s->stats().deduplicated, 0u);
  EXPECT_EQ(ReadAll(s.get()).size(), 2u);
}

// A new spool is made with kPageSize pages; one made by an older version keeps its 64 KiB
// pages. Either way the write-ahead log is checkpointed at kWalBoundBytes, not at a page count.
TEST_F(SpoolTest, NewSpoolsTakeSmallPagesOldOnesKeepTheirsAndTheLogIsBoundedInBytes) {
  for (const int existing_page : {0, 65536}) {
    SCOPED_TRACE(existing_page);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    const std::string path = (dir_ / "spool.db").string();
    if (existing_page != 0) {  // as an older toolgated left it
      sqlite3* db = nullptr;
      ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
      const std::string sql = "PRAGMA page_size=" + std::to_string(existing_page) +
                              "; PRAGMA journal_mode=WAL; CREATE TABLE older(x);";
      ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
      sqlite3_close(db);
    }
    uintmax_t wal_max = 0;
    {
      auto s = Open(false);
      for (int b = 0; b < 50; ++b) {  // 40 MiB of events, 800 KB per commit
        std::vector<normalize::NormalizedEvent> evs;
        for (int i = 0; i < 100; ++i) evs.push_back(Ev("a", b * 100 + i, 8000));
        ASSERT_TRUE(AppendSync(s.get(), std::move(evs)).ok());
        wal_max = std::max(wal_max, std::filesystem::file_size(path + "-wal"));
      }
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_EQ(static_cast<uint64_t>(sqlite3_column_int64(st, 0)),
              existing_page != 0 ? uint64_t(existing_page) : Spool::kPageSize);
    sqlite3_finalize(st);
    sqlite3_close(db);
    // The log reaches its bound (then starts again from its beginning), plus one commit at most.
    EXPECT_GE(wal_max, Spool::kWalBoundBytes);
    EXPECT_LE(wal_max, Spool::kWalBoundBytes + (2 << 20));
  }
}

TEST_F(SpoolTest, EventsOfARefusedCommitAreNotTakenForResendsWhenRetried) {
  SpoolOptions o;
  o.path = (dir_ / "spool.db").string();
  o.standalone = false;
  o.max_pages = (3 << 19) / Spool::kPageSize;  // 1.5 MiB: "the disk"
  auto opened = Spool::Open(o, &clock_);
  ASSERT_TRUE(opened.ok()) << opened.status();
  auto s = std::move(*opened);
  absl::Status full;
  normalize::NormalizedEvent refused;
  for (int i = 0; i < 400 && full.ok(); ++i) {
    refused = Ev("a", i, 8000);
    full = AppendSync(s.get(), {refused});
  }
  ASSERT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  std::vector<EventRef> refs;
  for (const auto& r : ReadAll(s.get())) refs.push_back(r.ref());
  s->Ack(refs);
  absl::Status retried;
  for (int i = 0; i < 100; ++i) {  // the client's retry, once the acks have freed space
    retried = AppendSync(s.get(), {refused});
    if (retried.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(retried.ok()) << retried;
  EXPECT_EQ(s->stats().deduplicated, 0u);
  const auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_NE(rows[0].body.find(refused.event_id), std::string::npos);
}

TEST_F(SpoolTest, FullDiskRefusesAppendsButKeepsAcksUntilTheyFreeSpace) {
  SpoolOptions o;
  o.path = (dir_ / "spool.db").string();
  o.standalone = false;
  o.limits.retry_after = std::chrono::milliseconds(250);
  o.max_pages = (3 << 19) / Spool::kPageSize;  // 1.5 MiB: "the disk"
  auto opened = Spool::Open(o, &clock_);
  ASSERT_TRUE(opened.ok()) << opened.status();
  auto s = std::move(*opened);
  absl::Status full;
  for (int i = 0; i < 400 && full.ok(); ++i) full = AppendSync(s.get(), {Ev("a", i, 8000)});
  ASSERT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_NE(full.message().find("disk full"), std::string::npos) << full;
  EXPECT_NE(full.message().find("retry after 250 ms"), std::string::npos) << full;
  EXPECT_TRUE(s->stats().disk_full);
  EXPECT_FALSE(s->stats().failed);  // not sticky: nothing is unknown after a rollback
  const auto stored = ReadAll(s.get());
  ASSERT_EQ(stored.size(), s->stats().queue_depth);

  // The shipper acks everything while clients keep appending: a big append first, so that the
  // ack and the next append wait together and share a commit that fails for the full disk.
  std::vector<EventRef> refs;
  for (const auto& r : stored) refs.push_back(r.ref());
  std::promise<absl::Status> big, small;
  std::vector<normalize::NormalizedEvent> many;
  for (int i = 0; i < 300; ++i) many.push_back(Ev("b", i, 8000));
  s->Append(std::move(many), [&](const absl::Status& st) { big.set_value(st); });
  s->Ack(refs);
  s->Append({Ev("c", 1, 8000)}, [&](const absl::Status& st) { small.set_value(st); });
  EXPECT_EQ(big.get_future().get().code(), absl::StatusCode::kResourceExhausted);
  // The small append may get in once the acks have freed pages, or be refused with the big one.
  const uint64_t small_stored = small.get_future().get().ok() ? 1 : 0;
  // The acks were not lost with the refused appends: the queue empties and space returns.
  for (int i = 0; i < 200 && s->stats().queue_depth > small_stored; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(s->stats().queue_depth, small_stored);
  absl::Status after;
  for (int i = 0; i < 100; ++i) {
    after = AppendSync(s.get(), {Ev("d", i, 8000)});
    if (after.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(after.ok()) << after;
  EXPECT_FALSE(s->stats().disk_full);
}

TEST_F(SpoolTest, BelowMinFreeDiskAppendsWaitWhileAcksStillCommit) {
  SpoolOptions o;
  o.path = (dir_ / "spool.db").string();
  o.standalone = false;
  o.limits.min_free_disk = 0;
  std::vector<EventRef> refs;
  {
    auto s = std::move(*Spool::Open(o, &clock_));
    ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1), Ev("a", 2)}).ok());
    for (const auto& r : ReadAll(s.get())) refs.push_back(r.ref());
  }
  o.limits.min_free_disk = 1ull << 60;  // more than any disk: always "low"
  o.limits.retry_after = std::chrono::milliseconds(300);
  auto s = std::move(*Spool::Open(o, &clock_));
  const absl::Status refused = AppendSync(s.get(), {Ev("a", 3)});
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("spool.min_free_disk"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("retry after 300 ms"), std::string::npos) << refused;
  EXPECT_TRUE(s->stats().disk_full);
  // Acks are what frees space: they commit.
  s->Ack(refs);
  for (int i = 0; i < 200 && !ReadAll(s.get()).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(ReadAll(s.get()).empty());
  EXPECT_EQ(s->stats().queue_depth, 0u);
}

TEST_F(SpoolTest, StandaloneRetentionEvictsOldest) {
  auto s = Open(true, 1 << 16);
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(AppendSync(s.get(), {Ev("a", i, 1000)}).ok());
  EXPECT_EQ(s->stats().queue_depth, 0u);
  EXPECT_LE(s->stats().stored_bytes, 1u << 16);
  EXPECT_GT(s->stats().evicted, 0u);
  const auto rows = ReadAll(s.get());
  ASSERT_FALSE(rows.empty());
  EXPECT_NE(rows.back().body.find("\"i\":199"), std::string::npos);
}

TEST_F(SpoolTest, StandaloneRetentionEvictsByAgeOldestFirstAndNeverEarly) {
  auto s = OpenWith(Standalone(std::chrono::hours(1)), &clock_);
  ASSERT_NE(s, nullptr);
  auto stored = [&] {
    std::vector<int> is;
    for (const auto& r : ReadAll(s.get()))
      is.push_back(nlohmann::json::parse(r.body)["payload"]["i"]);
    return is;
  };
  using std::chrono::minutes;
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 0)}).ok());  // t0
  clock_.Advance(minutes(30));
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1)}).ok());  // t0+30
  clock_.Advance(minutes(31));
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 2)}).ok());  // t0+61: its commit evicts 0 only
  EXPECT_EQ(stored(), (std::vector<int>{1, 2}));
  EXPECT_EQ(s->stats().evicted, 1u);
  // The clock steps back two hours: chunk 3 is stamped before chunks 1 and 2.
  clock_.Advance(-minutes(120));
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 3)}).ok());  // t0-59
  clock_.Advance(minutes(154));                         // t0+95: 1 (and 3) expired, 2 not
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 4)}).ok());
  EXPECT_EQ(stored(), (std::vector<int>{2, 3, 4}));  // 3 waits behind 2, which is not due
  clock_.Advance(minutes(30));                       // t0+125: 2 expired, then 3
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 5)}).ok());
  EXPECT_EQ(stored(), (std::vector<int>{4, 5}));
  EXPECT_EQ(s->stats().evicted, 4u);
  EXPECT_EQ(s->stats().stored_events, 2u);

  // A backlog longer than one commit's share (256 chunks) goes on at once, in the writer's own
  // commits while nothing else is queued.
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(AppendSync(s.get(), {Ev("b", i)}).ok());
  clock_.Advance(minutes(61));
  ASSERT_TRUE(AppendSync(s.get(), {Ev("c", 0)}).ok());
  EXPECT_GE(s->stats().evicted, 4u + 256u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s->stats().evicted < 4u + 302u && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(s->stats().evicted, 4u + 302u);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("c", 1)}).ok());
  EXPECT_EQ(s->stats().evicted, 4u + 302u);
  EXPECT_EQ(s->stats().stored_events, 2u);
}

TEST_F(SpoolTest, AnIdleStandaloneSpoolEvictsExpiredEventsWithoutNewWrites) {
  auto s = OpenWith(Standalone(std::chrono::seconds(1)), Clock::Real());
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 0), Ev("a", 1)}).ok());
  EXPECT_EQ(s->stats().stored_events, 2u);
  // Nothing more is written: the writer wakes when the events expire and evicts them.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s->stats().stored_events > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(s->stats().stored_events, 0u);
  EXPECT_EQ(s->stats().evicted, 2u);
  EXPECT_TRUE(ReadAll(s.get()).empty());
}

TEST_F(SpoolTest, OnAFullDiskAStandaloneSpoolEvictsByAgeEvenUnderSteadyLoad) {
  SpoolOptions o = Standalone(std::chrono::seconds(1));
  o.limits.min_free_disk = 0;
  {
    auto s = OpenWith(o, Clock::Real());
    ASSERT_NE(s, nullptr);
    ASSERT_TRUE(AppendSync(s.get(), {Ev("old", 0), Ev("old", 1)}).ok());
  }
  o.limits.min_free_disk = uint64_t{1} << 60;  // never room enough: every append is refused
  auto s = OpenWith(o, Clock::Real());
  ASSERT_NE(s, nullptr);
  // A refused append every 50 ms: the writer is never idle long enough to evict on its own.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s->stats().evicted < 2 && std::chrono::steady_clock::now() < deadline) {
    EXPECT_TRUE(absl::IsResourceExhausted(AppendSync(s.get(), {Ev("new", 0)})));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(s->stats().evicted, 2u);
  EXPECT_EQ(s->stats().stored_events, 0u);
}

TEST_F(SpoolTest, RetentionMaxAgeZeroIsNoAgeLimit) {
  auto s = OpenWith(Standalone(std::chrono::milliseconds(0)), &clock_);
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 0)}).ok());
  clock_.Advance(std::chrono::hours(24 * 1000));
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1)}).ok());
  EXPECT_EQ(s->stats().stored_events, 2u);
  EXPECT_EQ(s->stats().evicted, 0u);
}

TEST_F(SpoolTest, ChunkIsDeletedOnlyWhenAllItsEventsAreDone) {
  auto s = Open(false);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1), Ev("a", 2)}).ok());
  auto rows = ReadAll(s.get());
  s->Ack({rows[1].ref()});
  ASSERT_TRUE(AppendSync(s.get(), {Ev("b", 1)}).ok());
  EXPECT_EQ(ReadAll(s.get()).size(), 3u);  // the chunk stays (a crash would resend it whole)
  s->Ack({rows[0].ref()});
  ASSERT_TRUE(AppendSync(s.get(), {Ev("b", 2)}).ok());
  EXPECT_EQ(ReadAll(s.get()).size(), 2u);
  EXPECT_EQ(s->stats().queue_depth, 2u);
}

TEST_F(SpoolTest, LazyAppendsCommitSoonOnTheirOwnAndJoinUrgentCommits) {
  auto s = Open(false);
  // Alone: committed within the lazy delay, without any other traffic.
  std::promise<absl::Status> alone;
  const auto t0 = std::chrono::steady_clock::now();
  s->Append(
      {Ev("a", 1)}, [&](const absl::Status& st) { alone.set_value(st); }, /*lazy=*/true);
  auto f = alone.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_TRUE(f.get().ok());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, Spool::kLazyCommitDelay / 2);
  // Many lazy appends share few commits.
  const uint64_t commits_before = s->stats().commits;
  std::vector<std::promise<absl::Status>> done(200);
  for (int i = 0; i < 200; ++i) {
    s->Append(
        {Ev("b", i)}, [&, i](const absl::Status& st) { done[i].set_value(st); }, true);
  }
  for (auto& d : done) EXPECT_TRUE(d.get_future().get().ok());
  EXPECT_LE(s->stats().commits - commits_before, 20u);
  // An urgent append takes queued lazy ones with it at once.
  std::promise<absl::Status> lazy;
  s->Append(
      {Ev("c", 1)}, [&](const absl::Status& st) { lazy.set_value(st); }, true);
  ASSERT_TRUE(AppendSync(s.get(), {Ev("c", 2)}).ok());
  EXPECT_EQ(lazy.get_future().wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_EQ(ReadAll(s.get()).size(), 203u);
}

TEST_F(SpoolTest, ADeferredAppendTakesItsPlaceWhenQueuedAndIsBuiltOnTheWriter) {
  auto s = Open(false);
  // Queued first, built later: still chained before the append that followed it.
  std::promise<absl::Status> deferred;
  std::thread::id built_on;
  s->AppendDeferred(
      [&](std::vector<normalize::NormalizedEvent>* out) {
        built_on = std::this_thread::get_id();
        out->push_back(Ev("s", 0));
        return absl::OkStatus();
      },
      600, [&](const absl::Status& st) { deferred.set_value(st); });
  ASSERT_TRUE(AppendSync(s.get(), {Ev("s", 1)}).ok());
  EXPECT_TRUE(deferred.get_future().get().ok());
  EXPECT_NE(built_on, std::this_thread::get_id());
  auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 2u);
  auto first = nlohmann::json::parse(rows[0].body), second = nlohmann::json::parse(rows[1].body);
  EXPECT_EQ(first["payload"]["i"], 0);
  EXPECT_EQ(second["payload"]["i"], 1);
  EXPECT_EQ(second["previousHash"], Sha256Hex(rows[0].body));

  // A build that fails: its error reaches `done`, nothing of it is stored, the rest is.
  std::promise<absl::Status> failed;
  s->AppendDeferred(
      [](std::vector<normalize::NormalizedEvent>*) {
        return absl::InvalidArgumentError("no such thing");
      },
      600, [&](const absl::Status& st) { failed.set_value(st); });
  ASSERT_TRUE(AppendSync(s.get(), {Ev("s", 2)}).ok());
  EXPECT_EQ(failed.get_future().get(), absl::InvalidArgumentError("no such thing"));
  rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(nlohmann::json::parse(rows[2].body)["previousHash"], Sha256Hex(rows[1].body));

  // The estimate counts against the limit before anything is built.
  s.reset();
  auto small = Open(false, /*max_bytes=*/1000);
  std::promise<absl::Status> refused;
  bool ran = false;
  small->AppendDeferred(
      [&](std::vector<normalize::NormalizedEvent>*) {
        ran = true;
        return absl::OkStatus();
      },
      2000, [&](const absl::Status& st) { refused.set_value(st); });
  EXPECT_TRUE(absl::IsResourceExhausted(refused.get_future().get()));
  small->Close();
  EXPECT_FALSE(ran);
}

TEST_F(SpoolTest, TheWriterYieldsDuringBatchesNobodyWaitsForAndOnlyThen) {
  auto s = Open(false);
  // The writer is held in the callback of an append (callbacks run on the writer thread)
  // while the next batch is queued, so that each batch holds exactly what the test queued.
  auto hold_writer = [&](std::promise<void>* held, std::shared_future<void> release) {
    s->Append({Ev("hold", 0)}, [held, release](const absl::Status&) {
      held->set_value();
      release.wait();
    });
    held->get_future().wait();
  };
  // Builds that take 200 µs of CPU each: the writer gives the CPU back between them.
  auto queue_slow_builds = [&](std::vector<std::promise<absl::Status>>* done) {
    for (size_t i = 0; i < done->size(); ++i) {
      s->AppendDeferred(
          [i](std::vector<normalize::NormalizedEvent>* out) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
            while (std::chrono::steady_clock::now() < until) {
            }
            out->push_back(Ev("slow", static_cast<int>(i)));
            return absl::OkStatus();
          },
          600, [done, i](const absl::Status& st) { (*done)[i].set_value(st); });
    }
  };

  std::promise<void> held1, go1;
  hold_writer(&held1, go1.get_future().share());
  std::vector<std::promise<absl::Status>> lazy(10);
  queue_slow_builds(&lazy);
  const uint64_t before = s->stats().writer_yields;
  go1.set_value();
  for (auto& d : lazy) ASSERT_TRUE(d.get_future().get().ok());
  const uint64_t after_lazy = s->stats().writer_yields;
  EXPECT_GE(after_lazy - before, 9u);  // before each build after the first, at least

  // The same work with an urgent append in its batch (a client waits for it): no yield.
  std::promise<void> held2, go2;
  hold_writer(&held2, go2.get_future().share());
  std::vector<std::promise<absl::Status>> mixed(10);
  queue_slow_builds(&mixed);
  std::promise<absl::Status> urgent;
  s->Append({Ev("urgent", 0)}, [&](const absl::Status& st) { urgent.set_value(st); });
  go2.set_value();
  ASSERT_TRUE(urgent.get_future().get().ok());
  for (auto& d : mixed) ASSERT_TRUE(d.get_future().get().ok());
  EXPECT_EQ(s->stats().writer_yields, after_lazy);
  EXPECT_EQ(ReadAll(s.get()).size(), 23u);
}

TEST_F(SpoolTest, ConcurrentAppendsAllCommitInPerSessionOrder) {
  auto s = Open(false);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        ASSERT_TRUE(AppendSync(s.get(), {Ev("s" + std::to_string(t), i)}).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  const auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 800u);
  // In store order, each session's events are 0..199 and each links to the one before it.
  std::map<std::string, std::pair<int, std::string>> last;  // session → (i, hash)
  for (const auto& r : rows) {
    auto j = nlohmann::json::parse(r.body);
    auto& [i, hash] = last[j["sessionId"].get<std::string>()];
    if (hash.empty()) {
      EXPECT_FALSE(j.contains("previousHash"));
      i = -1;
    } else {
      EXPECT_EQ(j["previousHash"], hash);
    }
    EXPECT_EQ(j["payload"]["i"], i + 1);
    i = j["payload"]["i"].get<int>();
    hash = Sha256Hex(r.body);
  }
  EXPECT_EQ(last.size(), 4u);
}

// --- Start-up recovery (recovery.h): an unreadable file is moved aside, never a crash loop.

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::filesystem::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
}

std::string Garbage(size_t n) {
  std::mt19937 rng(42);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// Files of dir_ whose name starts with `prefix` and holds ".corrupt-".
std::vector<std::filesystem::path> MovedAsideFiles(const std::filesystem::path& dir,
                                                   const std::string& prefix) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix + ".corrupt-", 0) == 0) out.push_back(e.path());
  }
  return out;
}

TEST_F(SpoolTest, GarbageDatabaseIsMovedAsideAndTheSpoolStartsEmpty) {
  const std::string garbage = Garbage(300000);
  WriteFile(dir_ / "spool.db", garbage);
  auto s = Open(false);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->stats().corrupt_moved, 1u);
  EXPECT_EQ(s->stats().queue_depth, 0u);
  const auto moved = MovedAsideFiles(dir_, "spool.db");
  ASSERT_EQ(moved.size(), 1u);
  EXPECT_EQ(ReadFile(moved[0]), garbage);  // kept as it was, for an operator
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1)}).ok());
  EXPECT_EQ(ReadAll(s.get()).size(), 1u);
}

TEST_F(SpoolTest, TruncatedDatabaseIsMovedAside) {
  {
    auto s = Open(false);
    for (int i = 0; i < 12; ++i) ASSERT_TRUE(AppendSync(s.get(), {Ev("a", i, 100000)}).ok());
  }
  const auto db = dir_ / "spool.db";
  ASSERT_GT(std::filesystem::file_size(db), 600000u);
  std::filesystem::resize_file(db, 300000);
  auto s = Open(false);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->stats().corrupt_moved, 1u);
  EXPECT_EQ(s->stats().stored_events, 0u);
  EXPECT_EQ(MovedAsideFiles(dir_, "spool.db").size(), 1u);
  EXPECT_TRUE(AppendSync(s.get(), {Ev("a", 1)}).ok());
}

TEST_F(SpoolTest, GarbageWriteAheadLogIsMovedAsideAndTheDatabaseKept) {
  {
    auto s = Open(false);
    ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1), Ev("a", 2), Ev("b", 1)}).ok());
  }
  WriteFile(dir_ / "spool.db-wal", Garbage(70000));
  auto s = Open(false);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->stats().corrupt_moved, 1u);
  EXPECT_EQ(s->stats().queue_depth, 3u);
  EXPECT_EQ(MovedAsideFiles(dir_, "spool.db-wal").size(), 1u);
  EXPECT_TRUE(MovedAsideFiles(dir_, "spool.db").empty());
  // The chain goes on from the kept heads.
  ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 3)}).ok());
  const auto rows = ReadAll(s.get());
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_NE(rows[3].body.find(Sha256Hex(rows[1].body)), std::string::npos);
}

TEST_F(SpoolTest, HealthyDatabaseAfterAnUncleanStopIsKept) {
  // A copy of the files while the spool is open is what a kill -9 leaves: a live WAL.
  const auto copy = dir_ / "copy";
  std::filesystem::create_directories(copy);
  {
    auto s = Open(false);
    ASSERT_TRUE(AppendSync(s.get(), {Ev("a", 1), Ev("a", 2)}).ok());
    for (const char* f : {"spool.db", "spool.db-wal", "spool.db-shm"}) {
      std::filesystem::copy_file(dir_ / f, copy / f);
    }
  }
  auto moved = MoveAsideIfUnreadable((copy / "spool.db").string(), clock_.Now());
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_TRUE(moved->files.empty()) << moved->reason;
}

TEST_F(SpoolTest, AFileThatCannotBeCheckedIsAnErrorNotAMove) {
  // A directory where the database should be: not corruption, so nothing is moved.
  std::filesystem::create_directories(dir_ / "spool.db");
  SpoolOptions o;
  o.path = (dir_ / "spool.db").string();
  o.standalone = false;
  auto s = Spool::Open(o, &clock_);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(std::filesystem::is_directory(dir_ / "spool.db"));
  EXPECT_TRUE(MovedAsideFiles(dir_, "spool.db").empty());
}

TEST_F(SpoolTest, MovedAsideNamesNeverOverwriteEarlierOnes) {
  for (int i = 0; i < 3; ++i) {
    WriteFile(dir_ / "spool.db", Garbage(5000 + i));
    auto moved = MoveAsideIfUnreadable((dir_ / "spool.db").string(), clock_.Now());
    ASSERT_TRUE(moved.ok()) << moved.status();
    ASSERT_EQ(moved->files.size(), 1u);
    EXPECT_FALSE(moved->reason.empty());
  }
  EXPECT_EQ(MovedAsideFiles(dir_, "spool.db").size(), 3u);  // same second, three names
}

}  // namespace
}  // namespace toolgate::spool
