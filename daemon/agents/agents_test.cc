#include <gtest/gtest.h>

#include <filesystem>

#include "daemon/agents/registry.h"
#include "daemon/common/crypto.h"

namespace toolgate::agents {
namespace {

TEST(ParseSnapshot, ToolNamesAndACanonicalHash) {
  auto a = ParseSnapshot(R"({"tools": [{"id": "t1", "name": "search"}, {"id": "t2", "name":
      "shell"}, {"id": "t3", "name": "search"}], "nodes": [{"id": "n1"}], "edges": []})",
                         1 << 20);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->tool_names, (std::vector<std::string>{"search", "shell"}));
  // Same document, other key order and spacing: same hash (RFC 8785).
  auto b = ParseSnapshot(R"({"edges":[],"nodes":[{"id":"n1"}],"tools":[{"name":"search","id":"t1"},
      {"name":"shell","id":"t2"},{"name":"search","id":"t3"}]})",
                         1 << 20);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->hash, b->hash);
  EXPECT_EQ(a->hash.size(), 64u);
  auto c = ParseSnapshot(R"({"tools": [{"name": "search"}]})", 1 << 20);
  EXPECT_NE(c->hash, a->hash);
  auto empty = ParseSnapshot("", 1 << 20);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->hash, Sha256Hex("{}"));
  EXPECT_TRUE(empty->tool_names.empty());
}

TEST(ParseSnapshot, ErrorsNameTheField) {
  struct Case {
    const char* json;
    const char* error;
  } cases[] = {
      {"[]", "snapshot_json: must be a JSON object"},
      {"nope", "snapshot_json: must be JSON"},
      {R"({"tools": {}})", "snapshot_json.tools: must be an array"},
      {R"({"nodes": [1]})", "snapshot_json.nodes[0]: must be an object"},
      {R"({"tools": [{"name": "a"}, {"id": "x"}]})", "snapshot_json.tools[1].name: required"},
      {R"({"tools": [{"name": ""}]})", "snapshot_json.tools[0].name: required"},
  };
  for (const Case& c : cases) {
    auto s = ParseSnapshot(c.json, 1 << 20);
    ASSERT_FALSE(s.ok()) << c.json;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.status().message()).find(c.error), std::string::npos)
        << s.status() << " for " << c.json;
  }
  EXPECT_FALSE(ParseSnapshot(R"({"tools": []})", 5).ok());  // over the size limit
}

TEST(AgentRegistry, RegistersReplacesAndSurvivesAReopen) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / "agents_test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "agents.db").string();
  FakeClock clock;
  toolgate::v1::RegisterAgentRequest req;
  req.set_agent_id("support-bot");
  req.set_name("Support bot");
  req.set_framework("langgraph");
  {
    auto reg = AgentRegistry::Open(path, &clock);
    ASSERT_TRUE(reg.ok()) << reg.status();
    EXPECT_EQ((*reg)->Tools("support-bot"), nullptr);
    auto snap = ParseSnapshot(R"({"tools": [{"name": "search"}]})", 1 << 20);
    auto info = (*reg)->Register(req, *snap);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->snapshot_hash(), snap->hash);
    EXPECT_TRUE((*reg)->Tools("support-bot")->Has("search"));
    EXPECT_FALSE((*reg)->Tools("support-bot")->Has("shell"));
    EXPECT_EQ((*reg)->NotUpstream().size(), 1u);
    ASSERT_TRUE((*reg)->MarkUpstreamRegistered("support-bot").ok());
    EXPECT_TRUE((*reg)->NotUpstream().empty());
    // A new snapshot replaces the old one; the upstream already knows the agent.
    auto snap2 = ParseSnapshot(R"({"tools": [{"name": "shell"}]})", 1 << 20);
    ASSERT_TRUE((*reg)->Register(req, *snap2).ok());
    EXPECT_TRUE((*reg)->Tools("support-bot")->Has("shell"));
    EXPECT_TRUE((*reg)->NotUpstream().empty());
  }
  auto reg = AgentRegistry::Open(path, &clock);
  ASSERT_TRUE(reg.ok());
  EXPECT_TRUE((*reg)->Tools("support-bot")->Has("shell"));
  EXPECT_FALSE((*reg)->Tools("support-bot")->Has("search"));
  auto info = (*reg)->Get("support-bot");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->framework(), "langgraph");
  EXPECT_EQ(info->tool_names_size(), 1);
  EXPECT_EQ((*reg)->Get("nobody").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace toolgate::agents
