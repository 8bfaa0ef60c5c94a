#include <gtest/gtest.h>

#include "daemon/chain/chainer.h"
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

}  // namespace
}  // namespace toolgate::chain
