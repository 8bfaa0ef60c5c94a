#include "daemon/normalize/normalizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "daemon/common/crypto.h"
#include "daemon/normalize/jcs.h"

namespace toolgate::normalize {
namespace {

using ::testing::HasSubstr;
using toolgate::v1::Event;

Event ToolEvent(const std::string& args) {
  Event e;
  e.set_agent_id("agent-1");
  e.set_session_id("s-1");
  e.mutable_tool_call()->set_tool_name("shell");
  e.mutable_tool_call()->set_arguments_json(args);
  return e;
}

nlohmann::json Envelope(const NormalizedEvent& n) { return nlohmann::json::parse(n.envelope); }

class NormalizerTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  Normalizer normalizer_{NormalizerOptions{}, &clock_};
};

TEST_F(NormalizerTest, ToolCallIsHashedCanonicallyAndArgumentsDropped) {
  NormalizedEvent n;
  ASSERT_TRUE(
      normalizer_.Normalize(ToolEvent(R"({"b": 2, "a": "secret-value-123"})"), "e", &n).ok());
  const std::string expected_hash = Sha256Hex(R"({"a":"secret-value-123","b":2})");
  const auto env = Envelope(n);
  EXPECT_EQ(env["payload"]["argumentsHash"], expected_hash);
  EXPECT_EQ(env["payload"]["toolName"], "shell");
  EXPECT_EQ(env["category"], "tool_api");
  EXPECT_EQ(env["schemaVersion"], "1.0");
  EXPECT_EQ(env["agentId"], "agent-1");
  EXPECT_EQ(env["sessionId"], "s-1");
  EXPECT_EQ(env["eventId"].get<std::string>().size(), 36u);
  EXPECT_FALSE(n.id_from_client);  // drawn here: no client can resend it
  EXPECT_EQ(env["sourceTimestamp"], "2023-11-14T22:13:20.000000Z");
  EXPECT_EQ(n.envelope.find("secret-value-123"), std::string::npos);
  // The envelope as built is already canonical.
  EXPECT_EQ(*CanonicalizeJson(n.envelope), n.envelope);
}

// Normalize keeps per-thread scratch buffers: nothing of one event may reach the next, whatever
// kind, size or outcome the one before had.
TEST_F(NormalizerTest, OneEventLeavesNothingInTheNext) {
  Event timed = ToolEvent(R"({"q":"first"})");
  timed.set_source_timestamp("2026-01-02T03:04:05.678901Z");
  Event large;
  large.set_agent_id("agent-1");
  large.set_session_id("s-1");
  large.mutable_generic()->set_category("x-large");
  large.mutable_generic()->set_payload_json(R"({"blob":")" + std::string(200000, 'z') + R"("})");
  Event hashed = ToolEvent("");
  hashed.mutable_tool_call()->set_arguments_hash(std::string(64, 'a'));
  const Event bad = ToolEvent(R"({"q": "unterminated)");
  const Event plain = ToolEvent(R"({"q":"second"})");
  Event start;
  start.set_agent_id("agent-1");
  start.set_session_id("s-1");
  start.mutable_session_start();

  NormalizedEvent alone;
  ASSERT_TRUE(normalizer_.Normalize(plain, "e", &alone).ok());
  std::vector<NormalizedEvent> n(6);
  ASSERT_TRUE(normalizer_.Normalize(timed, "e", &n[0]).ok());
  ASSERT_TRUE(normalizer_.Normalize(start, "e", &n[5]).ok());
  ASSERT_TRUE(normalizer_.Normalize(large, "e", &n[1]).ok());
  ASSERT_TRUE(normalizer_.Normalize(hashed, "e", &n[2]).ok());
  EXPECT_FALSE(normalizer_.Normalize(bad, "e", &n[3]).ok());
  ASSERT_TRUE(normalizer_.Normalize(plain, "e", &n[4]).ok());

  EXPECT_EQ(Envelope(n[0])["sourceTimestamp"], "2026-01-02T03:04:05.678901Z");
  EXPECT_EQ(Envelope(n[0])["payload"]["argumentsHash"], Sha256Hex(R"({"q":"first"})"));
  EXPECT_EQ(Envelope(n[1])["payload"]["blob"].get<std::string>().size(), 200000u);
  EXPECT_EQ(Envelope(n[5])["payload"], nlohmann::json::object());
  EXPECT_EQ(Envelope(n[2])["payload"]["argumentsHash"], std::string(64, 'a'));
  EXPECT_EQ(Envelope(n[2])["sourceTimestamp"], "2023-11-14T22:13:20.000000Z");
  // The last is the same event as the first one normalized: the same bytes but its id.
  auto last = Envelope(n[4]), first_alone = Envelope(alone);
  last.erase("eventId");
  first_alone.erase("eventId");
  EXPECT_EQ(last, first_alone);
  EXPECT_EQ(n[4].envelope.size(), alone.envelope.size());
  EXPECT_EQ(*CanonicalizeJson(n[4].envelope), n[4].envelope);
}

TEST_F(NormalizerTest, HmacKeyChangesTheHash) {
  Normalizer keyed(NormalizerOptions{1 << 20, "k3y"}, &clock_);
  NormalizedEvent n;
  ASSERT_TRUE(keyed.Normalize(ToolEvent(R"({"pin":"1234"})"), "e", &n).ok());
  EXPECT_EQ(Envelope(n)["payload"]["argumentsHash"], HmacSha256Hex("k3y", R"({"pin":"1234"})"));
}

TEST_F(NormalizerTest, KeepsGivenIdsTimestampsAndAttribution) {
  Event e = ToolEvent("{}");
  e.set_event_id("7f1c7a52-2f0e-4a55-9d59-8a3b7e1f0c11");
  e.set_source_timestamp("2026-01-02T03:04:05+02:00");
  e.mutable_attribution()->set_trace_id("t-1");
  e.mutable_attribution()->set_initiator_type("human");
  NormalizedEvent n;
  ASSERT_TRUE(normalizer_.Normalize(e, "e", &n).ok());
  const auto env = Envelope(n);
  EXPECT_EQ(env["eventId"], "7f1c7a52-2f0e-4a55-9d59-8a3b7e1f0c11");
  EXPECT_TRUE(n.id_from_client);
  EXPECT_EQ(env["sourceTimestamp"], "2026-01-02T03:04:05+02:00");
  EXPECT_EQ(env["traceId"], "t-1");
  EXPECT_EQ(env["initiatorType"], "human");
  EXPECT_EQ(*CanonicalizeJson(n.envelope), n.envelope);
}

TEST_F(NormalizerTest, BadInputNamesTheField) {
  struct Case {
    std::function<void(Event*)> mutate;
    const char* field;
  } cases[] = {
      {[](Event* e) { e->clear_agent_id(); }, "events[3].agent_id: required"},
      {[](Event* e) { e->clear_session_id(); }, "events[3].session_id: required"},
      {[](Event* e) { e->set_session_id(std::string(256, 's')); }, "events[3].session_id"},
      {[](Event* e) { e->mutable_tool_call()->set_arguments_json("{not json"); },
       "events[3].tool_call.arguments_json: must be JSON"},
      {[](Event* e) {
         e->mutable_tool_call()->set_arguments_json(std::string(1 << 20, ' ') + "1");
       },
       "events[3].tool_call.arguments_json: larger than the limit"},
      {[](Event* e) { e->set_source_timestamp("2026-01-02T03:04:05"); },
       "events[3].source_timestamp: must be RFC 3339 with a timezone"},
      {[](Event* e) { e->mutable_generic()->set_category("telepathy"); },
       "events[3].generic.category: unknown category"},
      {[](Event* e) { e->clear_kind(); }, "events[3].kind"},
      {[](Event* e) { e->set_event_id("not-a-uuid"); }, "events[3].event_id"},
      {[](Event* e) { e->mutable_tool_call()->clear_tool_name(); },
       "events[3].tool_call.tool_name: required"},
      {[](Event* e) { e->mutable_attribution()->set_initiator_type("robot"); },
       "events[3].attribution.initiator_type"},
      {[](Event* e) { e->mutable_data_movement()->set_operation("teleport"); },
       "events[3].data_movement.operation"},
  };
  for (const auto& c : cases) {
    Event e = ToolEvent(R"({"a":1})");
    c.mutate(&e);
    NormalizedEvent n;
    absl::Status s = normalizer_.Normalize(e, "events[3]", &n);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.field));
  }
}

TEST_F(NormalizerTest, OtherKindsBuildTheirPayloads) {
  Event e;
  e.set_agent_id("a");
  e.set_session_id("s");
  e.mutable_identity()->set_agent_name("planner");
  e.mutable_identity()->add_capabilities("search");
  NormalizedEvent n;
  ASSERT_TRUE(normalizer_.Normalize(e, "e", &n).ok());
  EXPECT_EQ(Envelope(n)["payload"],
            nlohmann::json::parse(R"({"agentName":"planner","capabilities":["search"]})"));

  e.mutable_session_end()->set_outcome(v1::SessionEnd::FAILED);
  e.mutable_session_end()->set_error_message("boom");
  ASSERT_TRUE(normalizer_.Normalize(e, "e", &n).ok());
  EXPECT_EQ(Envelope(n)["category"], "session_end");
  EXPECT_EQ(Envelope(n)["payload"]["error"]["message"], "boom");

  e.mutable_generic()->set_category("x-custom");
  e.mutable_generic()->set_payload_json(R"({"z":1,"a":[true,null]})");
  ASSERT_TRUE(normalizer_.Normalize(e, "e", &n).ok());
  EXPECT_EQ(Envelope(n)["payload"], nlohmann::json::parse(R"({"a":[true,null],"z":1})"));
  EXPECT_EQ(*CanonicalizeJson(n.envelope), n.envelope);
}

}  // namespace
}  // namespace toolgate::normalize
