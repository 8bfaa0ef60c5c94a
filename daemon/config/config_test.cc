#include "daemon/config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace toolgate::config {
namespace {

using ::testing::HasSubstr;

std::map<std::string, std::string> Env() { return {{"HOME", "/tmp/tg-home"}}; }

TEST(Config, DefaultsAreStandaloneAndValid) {
  auto cfg = Load(Flags{}, Env());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->standalone());
  EXPECT_EQ(cfg->listen, "127.0.0.1:7470");
  EXPECT_EQ(cfg->http_listen, "127.0.0.1:7471");
  EXPECT_EQ(cfg->ingest.max_argument_bytes, 1u << 20);
  EXPECT_FALSE(cfg->data_dir.empty());
  EXPECT_FALSE(cfg->socket.empty());
}

TEST(Config, YamlSetsNestedOptions) {
  Config cfg;
  ASSERT_TRUE(ApplyYaml("batch:\n  max_events: 42\n  max_delay: 2s\nupstream:\n"
                        "  ingest_format: array\nspool:\n  max_bytes: 16MiB\n",
                        &cfg)
                  .ok());
  EXPECT_EQ(cfg.batch.max_events, 42u);
  EXPECT_EQ(cfg.batch.max_delay, Millis(2000));
  EXPECT_EQ(cfg.upstream.ingest_format, "array");
  EXPECT_EQ(cfg.spool.max_bytes, 16u << 20);
}

TEST(Config, ErrorsNameTheKey) {
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"upstream:\n  urll: x\n", "unknown key 'upstream.urll'"},
      {"bogus: 1\n", "unknown key 'bogus'"},
      {"batch:\n  max_events: many\n", "batch.max_events: expected a non-negative integer"},
      {"batch:\n  max_delay: 3 weeks\n", "batch.max_delay"},
      {"upstream:\n  ingest_format: csv\n",
       "upstream.ingest_format: must be one of single | array"},
      {"spool:\n  sync: maybe\n", "spool.sync: expected true or false"},
      {"listen: [1, 2]\n", "listen: expected a single value"},
      {"batch: [\n", "not valid YAML"},
  };
  for (const auto& c : cases) {
    Config cfg;
    absl::Status s = ApplyYaml(c.yaml, &cfg);
    EXPECT_FALSE(s.ok()) << c.yaml;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expect)) << c.yaml;
  }
}

TEST(Config, PrecedenceFlagsOverEnvOverFile) {
  const std::string path = ::testing::TempDir() + "/tg_cfg.yaml";
  std::ofstream(path) << "batch:\n  max_events: 10\n  max_bytes: 4096\n";
  Flags flags;
  flags.config_file = path;
  flags.values["batch.max_events"] = "30";
  auto env = Env();
  env["TOOLGATE_BATCH_MAX_EVENTS"] = "20";
  env["TOOLGATE_BATCH_MAX_BYTES"] = "8KiB";
  auto cfg = Load(flags, env);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->batch.max_events, 30u);
  EXPECT_EQ(cfg->batch.max_bytes, 8192u);
}

TEST(Config, UpstreamNeedsAKeyAndKeyFilesMustBePrivate) {
  Flags flags;
  flags.values["upstream.url"] = "https://api.example.com/";
  auto cfg = Load(flags, Env());
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("upstream.api_key_file"));

  auto env = Env();
  env["TOOLGATE_API_KEY"] = "al_test_secret";
  cfg = Load(flags, env);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->upstream.url, "https://api.example.com");
  EXPECT_EQ(cfg->upstream.api_key, "al_test_secret");
  EXPECT_THAT(Dump(*cfg), ::testing::Not(HasSubstr("al_test_secret")));

  const std::string key = ::testing::TempDir() + "/tg_key";
  std::ofstream(key) << "al_test_from_file\n";
  ::chmod(key.c_str(), 0644);
  flags.values["upstream.api_key_file"] = key;
  cfg = Load(flags, Env());
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("world-readable"));
  ::chmod(key.c_str(), 0600);
  cfg = Load(flags, Env());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->upstream.api_key, "al_test_from_file");

  flags.values["upstream.api_key_file"] = "/nonexistent/key";
  cfg = Load(flags, Env());
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("upstream.api_key_file: cannot read"));
}

TEST(Config, FlagsRefuseSecretsAndUnknownFlags) {
  const char* argv1[] = {"toolgated", "--api-key", "x"};
  EXPECT_FALSE(ParseFlags(3, argv1).ok());
  const char* argv2[] = {"toolgated", "--frobnicate"};
  EXPECT_FALSE(ParseFlags(2, argv2).ok());
  const char* argv3[] = {"toolgated", "--listen=127.0.0.1:0", "--data-dir", "/tmp/x"};
  auto f = ParseFlags(4, argv3);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->values.at("listen"), "127.0.0.1:0");
  EXPECT_EQ(f->values.at("data_dir"), "/tmp/x");
}

TEST(Config, DurationsAndSizes) {
  EXPECT_EQ(*ParseDuration("250ms"), Millis(250));
  EXPECT_EQ(*ParseDuration("10s"), Millis(10000));
  EXPECT_EQ(*ParseDuration("2d"), Millis(2LL * 86400000));
  EXPECT_FALSE(ParseDuration("-1s").ok());
  EXPECT_EQ(*ParseSize("64KiB"), 65536u);
  EXPECT_FALSE(ParseSize("12 parsecs").ok());
}

TEST(Config, EveryOptionIsDocumentedInTheReadme) {
  std::ifstream in(std::string(TOOLGATE_SOURCE_DIR) + "/README.md");
  ASSERT_TRUE(in) << "README.md not found";
  std::stringstream ss;
  ss << in.rdbuf();
  for (const std::string& path : OptionPaths()) {
    EXPECT_NE(ss.str().find("| `" + path + "` |"), std::string::npos)
        << path << " is missing from the configuration table of README.md";
  }
}

}  // namespace
}  // namespace toolgate::config
