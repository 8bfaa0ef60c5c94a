// libFuzzer target for the policy compiler (YAML/JSON text -> RuleSet) and the evaluator.
//
// Invariants checked (abort on violation):
//  1. CompilePolicy never crashes, never throws, and fails only with InvalidArgument (or
//     ResourceExhausted); an InvalidArgument message starts with "LINE:COL: ".
//  2. On success, the revision is not empty, and Evaluate on a few fixed actions returns
//     decisions that agree with the rules they name: a deciding rule is not a shadow and has the
//     decision's effect and id; a reported shadow rule is a shadow with the reported effect.
//  3. Evaluate without a RateState is deterministic (two calls give the same decision).
//  4. Arguments handed over as text (parsed only if a rule looks at them, as Check does) decide
//     as the same arguments parsed beforehand.
//
// Build and run (from the repository root; one command per line; -fsanitize=fuzzer-no-link for
// the library objects works too):
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined
//       -fno-sanitize-recover=undefined -I. daemon/policy/policy.cc daemon/policy/glob.cc
//       daemon/policy/yaml_tree.cc daemon/policy/rate_state.cc daemon/common/crypto.cc
//       tests/fuzz/policy_fuzz.cc -lyaml-cpp -lre2 -lcrypto
//       $(pkg-config --libs absl_time absl_statusor absl_status absl_strings) -lpthread
//       -o /tmp/policy_fuzz
//   mkdir -p /tmp/policy_corpus
//   /tmp/policy_fuzz -max_total_time=60 -max_len=4096
//       /tmp/policy_corpus tests/fuzz/corpus/policy
// (New inputs go to the first directory, so the checked-in seeds stay as they are.)

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "daemon/policy/policy.h"
#include "daemon/policy/rate_state.h"

namespace {

using toolgate::SystemTime;
using toolgate::policy::Action;
using toolgate::policy::Decision;
using toolgate::policy::RateState;
using toolgate::policy::RuleSet;

[[noreturn]] void Fail(const char* what, std::string_view input, std::string_view detail) {
  std::fprintf(stderr, "policy_fuzz invariant violated: %s\n  detail=[%.*s]\n  input=[%.*s]\n",
               what, static_cast<int>(detail.size()), detail.data(), static_cast<int>(input.size()),
               input.data());
  std::abort();
}

bool StartsWithPosition(std::string_view m) {
  // DIGITS ":" DIGITS ": "
  size_t i = 0;
  for (int part = 0; part < 2; ++part) {
    const size_t start = i;
    while (i < m.size() && m[i] >= '0' && m[i] <= '9') ++i;
    if (i == start || i >= m.size() || m[i] != ':') return false;
    ++i;
  }
  return i < m.size() && m[i] == ' ';
}

void CheckDecision(const RuleSet& set, const Decision& d, std::string_view input) {
  if (d.rule != nullptr) {
    if (d.rule->shadow) Fail("a shadow rule decided", input, d.rule->id);
    if (d.rule->effect != d.effect) Fail("effect differs from the rule's", input, d.rule->id);
    if (d.rule_id != d.rule->id) Fail("rule_id differs from the rule's", input, d.rule->id);
    if (set.FindRule(d.rule_id) != d.rule) Fail("FindRule disagrees", input, d.rule->id);
  } else {
    if (!d.rule_id.empty()) Fail("rule_id without a rule", input, d.rule_id);
    if (d.effect != set.default_effect()) Fail("default not applied", input, "");
  }
  if (d.shadow) {
    if (d.shadow_rule == nullptr || !d.shadow_rule->shadow ||
        d.shadow_rule->effect != d.shadow_effect || d.shadow_rule_id != d.shadow_rule->id) {
      Fail("inconsistent shadow report", input, d.shadow_rule_id);
    }
  } else if (d.shadow_rule != nullptr) {
    Fail("shadow rule without shadow", input, d.shadow_rule->id);
  }
}

const nlohmann::json& Arguments() {
  static const nlohmann::json* args = new nlohmann::json(nlohmann::json::parse(R"({
    "command": "sudo rm -rf /var/lib/data",
    "amount": 1500, "currency": "EUR", "to": ["a@example.com", "b@evil.io"],
    "nested": {"a/b": {"c~d": [1, 2.5, "3", null, true]}}, "force": true
  })"));
  return *args;
}

const std::string& ArgumentsText() {
  static const std::string* text = new std::string(Arguments().dump());
  return *text;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto set = toolgate::policy::CompilePolicy(input, "");
  if (!set.ok()) {
    const absl::StatusCode code = set.status().code();
    const std::string message(set.status().message());
    if (code == absl::StatusCode::kResourceExhausted) return 0;
    if (code != absl::StatusCode::kInvalidArgument) Fail("unexpected status code", input, message);
    if (!StartsWithPosition(message)) Fail("error without LINE:COL", input, message);
    return 0;
  }
  const RuleSet& rules = **set;
  if (rules.revision().empty()) Fail("empty revision", input, "");

  Action actions[3];
  actions[0].agent_id = "billing-agent";
  actions[0].session_id = "s-1";
  actions[0].tool_name = "shell_exec";
  actions[0].tool_type = "shell";
  actions[0].operation = "delete";
  actions[0].target_system = "prod-db";
  actions[0].initiator_type = "agent";
  actions[0].arguments = &Arguments();
  actions[1] = actions[0];
  actions[1].tool_name = "send_email";
  actions[1].operation = "write";
  actions[2].tool_name = "x";  // everything else empty, no arguments

  RateState state;
  SystemTime now = SystemTime(std::chrono::seconds(1'790'000'000));
  for (const Action& a : actions) {
    const Decision d1 = rules.Evaluate(a, nullptr, now);
    const Decision d2 = rules.Evaluate(a, nullptr, now);
    CheckDecision(rules, d1, input);
    if (d1.rule != d2.rule || d1.effect != d2.effect || d1.shadow_rule != d2.shadow_rule) {
      Fail("evaluation is not deterministic", input, d1.rule_id);
    }
    if (a.arguments.get() != nullptr) {
      Action from_text = a;
      from_text.arguments = toolgate::policy::ActionArguments::FromText(ArgumentsText());
      const Decision d3 = rules.Evaluate(from_text, nullptr, now);
      if (d1.rule != d3.rule || d1.effect != d3.effect || d1.shadow_rule != d3.shadow_rule) {
        Fail("arguments as text decide differently", input, d1.rule_id);
      }
    }
    for (int i = 0; i < 3; ++i) {
      now += std::chrono::seconds(20);
      CheckDecision(rules, rules.Evaluate(a, &state, now), input);
    }
  }
  return 0;
}
