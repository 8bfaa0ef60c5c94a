// engine_bench: RuleSet::Evaluate alone (no RPC), on generated policies of 100, 1,000 and
// 10,000 realistic rules. Prints one line per size, then one JSON object (the last line) whose
// `engine_p99_us` is the 1,000-rule figure that bench/run policy reports.
//
// The rules mix what real policies contain: exact tool names (most of them), tool-name globs by
// prefix and by suffix, a few globs that must be scanned ("*export*"), rules keyed by agent,
// operation or target system instead of tool name, argument predicates (regex, numeric
// comparisons, equals, in, exists), rate limits and budgets, time windows, and a few catch-all
// rules without any string condition. The actions call known and unknown tools with arguments.
//
// Each Evaluate is timed on its own with steady_clock (about 20 ns of the figures are the clock).
//
// Build and run (from the repository root):
//   g++ -std=c++17 -O2 -DNDEBUG -I. daemon/policy/engine_bench.cc daemon/policy/policy.cc
//       daemon/policy/glob.cc daemon/policy/yaml_tree.cc daemon/policy/rate_state.cc
//       daemon/common/crypto.cc -lyaml-cpp -lre2 -lcrypto
//       $(pkg-config --libs absl_time absl_statusor absl_status absl_strings) -lpthread
//       -o /tmp/engine_bench
//   /tmp/engine_bench [samples per size, default 300000] [--dense]
// --dense keeps the vocabulary at 10 services whatever the policy size, so that the glob buckets
// ("github_*") and the operation buckets grow with the rule count: a stress case, not a
// realistic policy.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/policy/policy.h"
#include "daemon/policy/rate_state.h"

namespace {

using toolgate::SystemTime;
using toolgate::policy::Action;
using toolgate::policy::CompilePolicy;
using toolgate::policy::Effect;
using toolgate::policy::RateState;
using toolgate::policy::RuleSet;

const char* const kVerbs[] = {"create", "get",   "list",   "update", "delete",
                              "send",   "query", "export", "run",    "deploy"};
const char* const kNouns[] = {"issue", "repo",   "user", "invoice", "payment", "email",
                              "table", "bucket", "file", "job",     "ticket",  "report"};
const char* const kServices[] = {"github", "jira",  "stripe", "gmail", "postgres",
                                 "s3",     "slack", "k8s",    "shell", "salesforce"};

// A policy's vocabulary grows with it: a 1,000-rule policy covers about 100 services (tool
// families) of 120 tools each, a 100-rule policy the 10 named ones.
struct Vocabulary {
  int services;
  std::string Service(int i) const {
    i %= services;
    return i < 10 ? kServices[i] : absl::StrCat("svc", i);
  }
  std::string Tool(int i) const {
    return absl::StrCat(Service(i), "_", kVerbs[(i / services) % 10], "_",
                        kNouns[(i / services / 10) % 12]);
  }
};

// A policy of `n` rules; `tools` receives the tool names it mentions exactly. Per mille:
// 620 exact tool names (4 in 5 with argument predicates), 150 "service_verb_*", 30
// "*_noun", 5 "*verb*" (scanned), 80 agent + "service_*", 80 operation + "prod-N*", 20 rate
// limit + budget, 10 time window, 5 arguments only (examined for every action).
std::string GeneratePolicy(int n, const Vocabulary& v, std::mt19937* rng,
                           std::vector<std::string>* tools) {
  std::string y = "revision: bench\ndefault: allow\nrules:\n";
  auto pick = [rng](int k) { return static_cast<int>((*rng)() % static_cast<unsigned>(k)); };
  const int tool_space = v.services * 120;
  for (int i = 0; i < n; ++i) {
    const int kind = pick(1000);
    const char* effect = pick(3) == 0 ? "deny" : pick(2) ? "require_approval" : "allow";
    absl::StrAppend(&y, "  - id: rule-", i, "\n    effect: ", effect,
                    "\n    reason: \"generated rule ", i, "\"\n");
    if (pick(20) == 0) y += "    shadow: true\n";
    y += "    match:\n";
    if (kind < 620) {
      const std::string t = v.Tool(pick(tool_space));
      tools->push_back(t);
      absl::StrAppend(&y, "      tool_name: ", t, "\n");
      switch (pick(5)) {
        case 0:
          y += "      arguments:\n        - {pointer: /command, regex: \"rm\\\\s+-rf|mkfs|dd "
               "if=\"}\n";
          break;
        case 1:
          absl::StrAppend(&y, "      arguments:\n        - {pointer: /amount, \">\": ", pick(5000),
                          "}\n");
          break;
        case 2:
          y += "      arguments:\n        - {pointer: /to, not_regex: \"@example\\\\.com$\"}\n";
          break;
        case 3:
          y += "      arguments:\n        - {pointer: /region, in: [us-east-1, eu-west-1]}\n"
               "        - {pointer: /force, exists: true}\n";
          break;
        default:
          break;
      }
    } else if (kind < 770) {
      absl::StrAppend(&y, "      tool_name: \"", v.Service(pick(v.services)), "_", kVerbs[pick(10)],
                      "_*\"\n");
    } else if (kind < 800) {
      absl::StrAppend(&y, "      tool_name: \"*_", kNouns[pick(12)], "\"\n");
    } else if (kind < 805) {
      absl::StrAppend(&y, "      tool_name: \"*", kVerbs[pick(10)], "*\"\n");
    } else if (kind < 885) {
      absl::StrAppend(&y, "      agent_id: agent-", pick(50), "\n      tool_name: \"",
                      v.Service(pick(v.services)), "_*\"\n");
    } else if (kind < 965) {
      absl::StrAppend(&y, "      operation: ", kVerbs[pick(10)], "\n      target_system: \"prod-",
                      pick(std::max(20, n / 20)), "-*\"\n");
    } else if (kind < 985) {
      absl::StrAppend(&y, "      tool_name: \"", v.Service(pick(v.services)), "_export_*\"\n",
                      "    rate_limit: {max: 100, per: 1m, scope: session}\n",
                      "    budget: {max: 100000, scope: agent}\n");
    } else if (kind < 995) {
      absl::StrAppend(&y, "      tool_name: \"", v.Service(pick(v.services)), "_deploy_*\"\n",
                      "    time_window: {days: [mon-fri], hours: \"09:00-17:00\", "
                      "timezone: Europe/Paris, outside: true}\n");
    } else {
      y += "      arguments:\n        - {pointer: /dangerous, equals: true}\n";
    }
  }
  return y;
}

struct Result {
  double p50_ns, p90_ns, p99_ns, p999_ns, mean_ns;
  double compile_ms;
};

Result Run(int n, int samples, bool dense) {
  std::mt19937 rng(1234 + n);
  const Vocabulary vocabulary{dense ? 10 : std::max(10, n / 10)};
  std::vector<std::string> tools;
  const std::string text = GeneratePolicy(n, vocabulary, &rng, &tools);
  const auto c0 = std::chrono::steady_clock::now();
  auto set = CompilePolicy(text, "bench");
  const auto c1 = std::chrono::steady_clock::now();
  if (!set.ok()) {
    std::fprintf(stderr, "compile failed: %s\n", std::string(set.status().message()).c_str());
    std::exit(1);
  }
  const std::shared_ptr<const RuleSet> rules = *set;

  // 2,000 distinct actions: 70% tools the policy names exactly, 30% other tools.
  std::vector<nlohmann::json> args;
  args.push_back(nlohmann::json::parse(R"({"command": "ls -la /tmp && echo done"})"));
  args.push_back(nlohmann::json::parse(R"({"amount": 2500, "currency": "EUR"})"));
  args.push_back(nlohmann::json::parse(R"({"to": ["ops@example.com", "x@partner.io"]})"));
  args.push_back(nlohmann::json::parse(R"({"region": "eu-west-1", "force": false})"));
  args.push_back(nlohmann::json::parse(R"({"query": "select 1", "limit": 10})"));
  std::vector<Action> actions(2000);
  for (size_t i = 0; i < actions.size(); ++i) {
    Action& a = actions[i];
    a.agent_id = absl::StrCat("agent-", rng() % 60);
    a.session_id = absl::StrCat("5f0c6a4e-2b7d-4c1a-9e3f-", 100000000000 + rng() % 500);
    a.tool_name = rng() % 10 < 7 ? tools[rng() % tools.size()]
                                 : vocabulary.Tool(rng() % (vocabulary.services * 120));
    a.tool_type = "function";
    a.operation = kVerbs[rng() % 10];
    a.target_system =
        absl::StrCat(rng() % 2 ? "prod-" : "dev-", rng() % std::max(20, n / 20), "-db");
    a.initiator_type = "agent";
    a.arguments = &args[i % args.size()];
  }

  RateState state;
  SystemTime now = SystemTime(std::chrono::seconds(1'790'000'000));
  // Warm-up: creates the rate counters and fills RE2's DFA caches.
  for (int i = 0; i < 50'000; ++i) {
    rules->Evaluate(actions[i % actions.size()], &state, now);
  }
  std::vector<double> ns(samples);
  int sink = 0;
  for (int i = 0; i < samples; ++i) {
    const Action& a = actions[(i * 7919) % actions.size()];
    now += std::chrono::microseconds(200);  // 5,000 checks/s of simulated time
    const auto t0 = std::chrono::steady_clock::now();
    const toolgate::policy::Decision d = rules->Evaluate(a, &state, now);
    const auto t1 = std::chrono::steady_clock::now();
    sink += static_cast<int>(d.effect);
    ns[i] = std::chrono::duration<double, std::nano>(t1 - t0).count();
  }
  if (sink == -1) std::puts("");
  double sum = 0;
  for (double x : ns) sum += x;
  std::sort(ns.begin(), ns.end());
  auto q = [&](double p) {
    return ns[std::min(ns.size() - 1, static_cast<size_t>(p * ns.size()))];
  };
  return {q(0.50),  q(0.90),       q(0.99),
          q(0.999), sum / samples, std::chrono::duration<double, std::milli>(c1 - c0).count()};
}

}  // namespace

int main(int argc, char** argv) {
  int samples = 300'000;
  bool dense = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--dense") {
      dense = true;
    } else {
      samples = std::max(1000, std::atoi(argv[i]));
    }
  }
  if (dense) std::printf("dense: 10 services whatever the size (buckets grow with the rules)\n");
  double p50_1000 = 0, p99_1000 = 0, p999_1000 = 0;
  for (int n : {100, 1000, 10000}) {
    const Result r = Run(n, samples, dense);
    std::printf(
        "rules=%-6d evaluate p50=%.0fns p90=%.0fns p99=%.0fns p99.9=%.0fns mean=%.0fns "
        "(compile %.1f ms)\n",
        n, r.p50_ns, r.p90_ns, r.p99_ns, r.p999_ns, r.mean_ns, r.compile_ms);
    if (n == 1000) {
      p50_1000 = r.p50_ns;
      p99_1000 = r.p99_ns;
      p999_1000 = r.p999_ns;
    }
  }
  std::printf(
      "{\"rules\": 1000, \"engine_p50_us\": %.3f, \"engine_p99_us\": %.3f, "
      "\"engine_p999_us\": %.3f}\n",
      p50_1000 / 1000, p99_1000 / 1000, p999_1000 / 1000);
  return 0;
}
