#include <gtest/gtest.h>

#include "daemon/chain/chainer.h"
#include "daemon/chain/recent_ids.h"
#include "daemon/chain/verifier.h"
#include "daemon/common/crypto.h"

namespace toolgate::chain {
namespace {

normalize::NormalizedEvent Ev(const std::string& session, const std::string& id) {
  normalize::NormalizedEvent e;
  e.session_id = session;
  e.event_id = id;
  e.SetParts(R"({"agentId":"a","category":"session_start","eventId":")" + id + R"(","payload":{})",
             R"(,"schemaVersion":"1.0","sessionId":")" + session +
                 R"(","sourceTimestamp":"2026-01-01T00:00:00Z"})");
  return e;
}

// The bytes of one event, as the spool writes them into its chunk.
std::string Link(Chainer* c, const normalize::NormalizedEvent& ev, std::string* bytes) {
  bytes->clear();
  return c->LinkAppend(ev, bytes);
}

TEST(Chainer, FirstEventHasNoPreviousHashThenLinks) {
  Chainer c;
  std::string b1, b2, b3;
  const std::string h1 = Link(&c, Ev("s", "1"), &b1);
  EXPECT_EQ(b1.find("previousHash"), std::string::npos);
  EXPECT_EQ(h1, Sha256Hex(b1));
  const std::string h2 = Link(&c, Ev("s", "2"), &b2);
  EXPECT_NE(b2.find("\"previousHash\":\"" + h1 + "\""), std::string::npos);
  Link(&c, Ev("other", "3"), &b3);
  EXPECT_EQ(b3.find("previousHash"), std::string::npos);
  EXPECT_EQ(*c.Head("s"), h2);
}

TEST(Verifier, AcceptsAChainInAnyOrderWithDuplicates) {
  Chainer c;
  std::vector<std::string> lines(4);
  for (int i = 0; i < 4; ++i) Link(&c, Ev("s", std::to_string(i)), &lines[i]);
  Verifier v;
  for (int i : {2, 0, 3, 1, 2}) v.Add(lines[i]);
  auto r = v.Finish();
  EXPECT_TRUE(r.ok()) << r.problems.front().message;
  EXPECT_EQ(r.events, 5u);
  EXPECT_EQ(r.duplicates, 1u);
  EXPECT_EQ(r.sessions, 1u);
}

TEST(Verifier, FindsGapsForksAndTampering) {
  Chainer c;
  std::vector<std::string> lines(4);
  for (int i = 0; i < 4; ++i) Link(&c, Ev("s", std::to_string(i)), &lines[i]);
  {
    Verifier v;  // event 1 missing: 2 points at nothing
    for (int i : {0, 2, 3}) v.Add(lines[i]);
    EXPECT_FALSE(v.Finish().ok());
  }
  {
    Verifier v;  // a tampered body changes its hash: the next link breaks
    std::string tampered = lines[1];
    tampered.replace(tampered.find("session_start"), 13, "session_enddd");
    for (const auto& l : {lines[0], tampered, lines[2], lines[3]}) v.Add(l);
    EXPECT_FALSE(v.Finish().ok());
  }
  {
    Verifier v;  // partial: starts mid-chain, otherwise fine
    for (int i : {1, 2, 3}) v.Add(lines[i]);
    auto r = v.Finish();
    EXPECT_TRUE(r.ok());
    EXPECT_EQ(r.partial_sessions, 1u);
  }
  {
    Verifier v;
    v.Add("not json");
    EXPECT_FALSE(v.Finish().ok());
  }
}

TEST(RecentIds, RecognisesResendsWithinTheWindowAndForgetsTheOldest) {
  RecentIds ids(3);
  const char* a = "0f8fad5b-d9cb-469f-a165-70867728950e";
  const char* b = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
  const char* c = "c9bf9e57-1685-4c89-bafb-ff5af830be8a";
  const char* d = "a1b2c3d4-0000-4000-8000-000000000001";
  EXPECT_FALSE(ids.SeenOrRemember(a));
  EXPECT_FALSE(ids.SeenOrRemember(b));
  EXPECT_TRUE(ids.SeenOrRemember(a));
  EXPECT_TRUE(ids.SeenOrRemember("0F8FAD5B-D9CB-469F-A165-70867728950E"));  // same UUID
  EXPECT_FALSE(ids.SeenOrRemember(c));
  EXPECT_FALSE(ids.SeenOrRemember(d));  // full: forgets a
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_FALSE(ids.SeenOrRemember(a));  // outside the window: stored again
  EXPECT_TRUE(ids.SeenOrRemember(d));
  // Not a UUID: never a duplicate.
  EXPECT_FALSE(ids.SeenOrRemember("not-a-uuid"));
  EXPECT_FALSE(ids.SeenOrRemember("not-a-uuid"));
  std::pair<uint64_t, uint64_t> key;
  EXPECT_FALSE(RecentIds::ParseUuid("0f8fad5b-d9cb-469f-a165-70867728950", &key));
  EXPECT_FALSE(RecentIds::ParseUuid("0f8fad5bxd9cb-469f-a165-70867728950e", &key));
  EXPECT_FALSE(RecentIds::ParseUuid("0f8fad5b-d9cb-469f-a165-70867728950g", &key));
  EXPECT_FALSE(RecentIds::ParseUuid("0f8fad5b-d9cb-469f-a165-7086772895-e", &key));
  EXPECT_FALSE(RecentIds::ParseUuid("0f8fad5b-d9cb-469f-a165-7086772895 e", &key));
  ASSERT_TRUE(RecentIds::ParseUuid("FFFFFFFF-FFFF-FFFF-ffff-ffffffffffff", &key));
  EXPECT_EQ(key.first, ~0ULL);
  EXPECT_EQ(key.second, ~0ULL);
  ASSERT_TRUE(RecentIds::ParseUuid(a, &key));
  EXPECT_EQ(key.first, 0x0f8fad5bd9cb469fULL);
  EXPECT_EQ(key.second, 0xa16570867728950eULL);
}

TEST(RecentIds, RollbackForgetsWhatTheFailedCommitRememberedAndRestoresWhatItEvicted) {
  RecentIds ids(2);
  const char* a = "0f8fad5b-d9cb-469f-a165-70867728950e";
  const char* b = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
  const char* c = "c9bf9e57-1685-4c89-bafb-ff5af830be8a";
  const char* d = "a1b2c3d4-0000-4000-8000-000000000001";
  EXPECT_FALSE(ids.SeenOrRemember(a));
  ids.Begin();
  EXPECT_FALSE(ids.SeenOrRemember(b));
  EXPECT_FALSE(ids.SeenOrRemember(c));  // evicts a
  EXPECT_FALSE(ids.SeenOrRemember(d));  // evicts b
  ids.Rollback();
  EXPECT_EQ(ids.size(), 1u);
  // The retry of b, c and d is not a duplicate; a is remembered again.
  ids.Begin();
  EXPECT_TRUE(ids.SeenOrRemember(a));
  EXPECT_FALSE(ids.SeenOrRemember(b));
  ids.Commit();
  EXPECT_TRUE(ids.SeenOrRemember(b));
  EXPECT_TRUE(ids.SeenOrRemember(a));
  EXPECT_FALSE(ids.SeenOrRemember(c));  // evicts a, the oldest
  EXPECT_FALSE(ids.SeenOrRemember(a));
}

}  // namespace
}  // namespace toolgate::chain
