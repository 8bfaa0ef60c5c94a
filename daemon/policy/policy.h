// Policy: toolgate's rule language and its compiled form, the engine behind `Check`.
//
// A policy file (YAML or JSON; docs/policy.md is the reference) is compiled once by
// CompilePolicy into an immutable RuleSet. RuleSet::Evaluate then answers, for one Action,
// ALLOW, DENY or REQUIRE_APPROVAL with the rule that decided and its reason:
//   - a rule matches when every condition it has holds (fields, argument predicates, time window,
//     `unless`, and — counted last — its rate limit and budget);
//   - among matching non-shadow rules, deny beats require_approval beats allow; for equal effects
//     the rule that comes first in the file is reported;
//   - when no non-shadow rule matches, the policy's `default` applies;
//   - shadow rules never decide; the strongest matching one is reported beside the decision.
//
// Cost: rules are indexed by one of their string conditions (tool_name preferred: exact values
// in a hash map, globs by their literal prefix or suffix), so Evaluate examines only the rules
// whose indexed condition already holds plus the rules without any string condition. Evaluate
// does not allocate, except when RateState creates a counter (see rate_state.h) and inside RE2's
// lazily built, bounded DFA cache.
//
// Thread-safety: a RuleSet is immutable after CompilePolicy returns; Evaluate may be called from
// any number of threads at once (RateState is thread-safe). Hot reload swaps the
// shared_ptr<const RuleSet>; a Decision's pointers and views stay valid while the RuleSet that
// produced it is alive.
#ifndef TOOLGATE_DAEMON_POLICY_POLICY_H_
#define TOOLGATE_DAEMON_POLICY_POLICY_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "daemon/common/clock.h"
#include "daemon/policy/rate_state.h"

namespace toolgate::policy {

// Inputs larger than this are rejected before parsing.
inline constexpr size_t kMaxPolicyBytes = 8 << 20;
// Sequences and mappings nested deeper than this are rejected while parsing.
inline constexpr int kMaxNestingDepth = 64;

// The tools an agent registered with its snapshot (Agents.Register), for the condition
// `tool_in_snapshot`. Implementations are immutable and thread-safe.
class ToolLookup {
 public:
  virtual ~ToolLookup() = default;
  virtual bool Has(std::string_view tool_name) const = 0;
};

// An action's arguments: parsed JSON, or JSON text parsed the first time a rule looks at it.
// Most rules never do, and parsing costs more than evaluating a thousand rules, so Policy.Check
// hands over the text. The text must be JSON that normalize::CanonicalizeJson accepts (which
// nlohmann::json accepts too: tests/fuzz/jcs_fuzz.cc checks it); text that does not parse
// reads as no arguments. Built from text, an Action is evaluated by one thread at a time.
class ActionArguments {
 public:
  ActionArguments() = default;  // no arguments
  // NOLINTNEXTLINE(google-explicit-constructor): `action.arguments = &json` reads naturally.
  ActionArguments(const nlohmann::json* parsed) : parsed_(parsed), resolved_(true) {}
  static ActionArguments FromText(std::string_view json) {
    ActionArguments a;
    a.text_ = json;
    return a;
  }
  ActionArguments(const ActionArguments& other) { *this = other; }
  ActionArguments& operator=(const ActionArguments& other) {
    // A copy parses again rather than point into the other's storage.
    text_ = other.text_;
    const bool owned = other.parsed_ == &other.storage_;
    parsed_ = owned ? nullptr : other.parsed_;
    resolved_ = !owned && other.resolved_;
    return *this;
  }

  // The parsed arguments; null when there are none.
  const nlohmann::json* get() const {
    if (!resolved_) {
      if (!text_.empty()) {
        storage_ = nlohmann::json::parse(text_, nullptr, /*allow_exceptions=*/false);
        parsed_ = storage_.is_discarded() ? nullptr : &storage_;
      }
      resolved_ = true;  // after the parse: one that threw (bad_alloc) is tried again
    }
    return parsed_;
  }
  // Whether the arguments were parsed (tests: a check that needs no argument parses none).
  bool parsed() const { return resolved_ && parsed_ == &storage_; }

 private:
  std::string_view text_;
  mutable const nlohmann::json* parsed_ = nullptr;
  mutable bool resolved_ = false;
  mutable nlohmann::json storage_;
};

// What an agent is about to do. All strings may be empty. The arguments (parsed or text) must
// outlive the Evaluate call.
struct Action {
  std::string agent_id;
  std::string session_id;
  std::string tool_name;
  std::string tool_type;
  std::string operation;
  std::string target_system;
  std::string initiator_type;
  std::string initiator_id;
  ActionArguments arguments;  // none by default
  // The agent's registered tools; null when the agent never registered (then no tool is in
  // its snapshot).
  const ToolLookup* registered_tools = nullptr;
};

enum class Effect : uint8_t { kAllow, kDeny, kRequireApproval };

// "allow", "deny", "require_approval" (the spelling of the policy file).
std::string_view EffectName(Effect effect);

// One rule of a compiled policy, as written (its compiled conditions are private to the RuleSet).
struct Rule {
  std::string id;
  Effect effect = Effect::kAllow;
  std::string reason;  // `reason:`, or "matched rule ID" when the file gives none
  std::string description;
  bool shadow = false;
  // require_approval only: what happens when nobody decides within approval_timeout.
  Effect on_timeout = Effect::kDeny;  // kDeny or kAllow
  std::chrono::milliseconds approval_timeout = std::chrono::minutes(5);
  size_t index = 0;  // position in the file, 0-based
  int line = 0;      // line of the rule in the file, 1-based
};

struct Decision {
  Effect effect = Effect::kAllow;
  const Rule* rule = nullptr;  // the deciding rule; nullptr when the default applied
  std::string_view rule_id;    // "" when the default applied
  std::string_view reason;     // the rule's reason, or "no rule matched" for the default
  // A shadow rule matched: it would have decided `shadow_effect` had it not been a shadow. When
  // several matched, the strongest (then the first in the file) is reported.
  bool shadow = false;
  Effect shadow_effect = Effect::kAllow;
  std::string_view shadow_rule_id;
  const Rule* shadow_rule = nullptr;
};

class RuleSet {
 public:
  ~RuleSet();
  RuleSet(const RuleSet&) = delete;
  RuleSet& operator=(const RuleSet&) = delete;

  // The policy's `revision:`, else "sha256:" and the first 12 hex digits of the text's SHA-256.
  const std::string& revision() const;
  // The name given to CompilePolicy (a file path, "upstream", ...).
  const std::string& source_name() const;
  Effect default_effect() const;
  size_t size() const;
  const Rule& rule(size_t index) const;             // index < size()
  const Rule* FindRule(std::string_view id) const;  // nullptr if no rule has that id

  // Decides `action` at time `now` (time windows are evaluated at `now`; rate limits and budgets
  // count the call at `now`). Every rule whose other conditions hold counts the call in `state`,
  // whatever the final decision. With `state` null, rules with a rate limit or budget never match.
  Decision Evaluate(const Action& action, RateState* state, SystemTime now) const;

  struct Impl;

 private:
  explicit RuleSet(std::unique_ptr<Impl> impl);
  friend absl::StatusOr<std::shared_ptr<const RuleSet>> CompilePolicy(std::string_view,
                                                                      std::string_view);
  std::unique_ptr<Impl> impl_;
};

// Parses and compiles a policy. `source_name` prefixes error messages (e.g. a path; may be "").
// Errors: InvalidArgument "SOURCE:LINE:COL: PATH: PROBLEM" (without "SOURCE:" when source_name
// is empty), naming the line and column (1-based) and the key, e.g.
//   "policy.yaml:12:7: rules[3].match.tool_name: expected a string or a list of strings
//    (rule 'deny-shell')".
// Unknown keys, duplicate keys, wrong types, bad effects, durations, globs, regexes, time zones,
// duplicate rule ids, inputs over kMaxPolicyBytes and nesting over kMaxNestingDepth are all
// errors; an empty document is an error too (so a truncated file never becomes "allow all").
// ResourceExhausted if memory runs out. Never throws.
absl::StatusOr<std::shared_ptr<const RuleSet>> CompilePolicy(std::string_view text,
                                                             std::string_view source_name);

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_POLICY_H_
