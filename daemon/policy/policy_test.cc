#include "daemon/policy/policy.h"

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "daemon/policy/glob.h"
#include "daemon/policy/rate_state.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

// Counts allocations made by the current thread while `g_count_allocations` is set, to show
// that Evaluate does not allocate.
namespace {
thread_local bool g_count_allocations = false;
thread_local size_t g_allocations = 0;
}  // namespace

// Every replaceable form is replaced, so that memory never crosses between these and the
// sanitizers' versions. Not inlined, so that the compiler does not pair the free() below with
// the caller's operator new (GCC's -Wmismatched-new-delete).
namespace {
__attribute__((noinline)) void* CountedAlloc(size_t n, size_t align = 0) {
  if (g_count_allocations) ++g_allocations;
  if (n == 0) n = 1;
  if (align > alignof(std::max_align_t)) {
    return std::aligned_alloc(align, (n + align - 1) / align * align);
  }
  return std::malloc(n);
}
}  // namespace

void* operator new(size_t n) {
  if (void* p = CountedAlloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return CountedAlloc(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return CountedAlloc(n); }
void* operator new(size_t n, std::align_val_t a) {
  if (void* p = CountedAlloc(n, static_cast<size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n, std::align_val_t a) { return operator new(n, a); }
__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete(void* p, size_t) noexcept { operator delete(p); }
void operator delete[](void* p, size_t) noexcept { operator delete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { operator delete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { operator delete(p); }
void operator delete(void* p, std::align_val_t) noexcept { operator delete(p); }
void operator delete[](void* p, std::align_val_t) noexcept { operator delete(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { operator delete(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { operator delete(p); }

namespace toolgate::policy {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;
using std::chrono::minutes;
using std::chrono::seconds;

const SystemTime kNow = SystemTime(seconds(1'700'000'000));  // Tue 2023-11-14 22:13:20 UTC

std::shared_ptr<const RuleSet> MustCompile(const std::string& text) {
  auto set = CompilePolicy(text, "");
  EXPECT_TRUE(set.ok()) << set.status() << "\n" << text;
  if (!set.ok()) return nullptr;
  return *set;
}

std::string ErrorOf(const std::string& text, std::string_view source = "") {
  auto set = CompilePolicy(text, source);
  if (set.ok()) return "(compiled fine)";
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << set.status();
  return std::string(set.status().message());
}

Action ToolCall(std::string tool, const Json* args = nullptr) {
  Action a;
  a.agent_id = "agent-1";
  a.session_id = "session-1";
  a.tool_name = std::move(tool);
  a.arguments = args;
  return a;
}

SystemTime At(int y, int mo, int d, int h, int mi, const char* zone) {
  absl::TimeZone tz;
  EXPECT_TRUE(absl::LoadTimeZone(zone, &tz));
  return absl::ToChronoTime(absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, 0), tz));
}

// ---------------------------------------------------------------------------------------------
// Globs.

struct GlobCase {
  const char* pattern;
  const char* text;
  bool match;
};

TEST(GlobTest, Table) {
  const GlobCase cases[] = {
      {"shell", "shell", true},
      {"shell", "shell2", false},
      {"shell", "Shell", false},
      {"shell*", "shell", true},
      {"shell*", "shell_exec", true},
      {"shell*", "bash", false},
      {"*_delete", "s3_delete", true},
      {"*_delete", "s3_delete_all", false},
      {"exec_?", "exec_1", true},
      {"exec_?", "exec_", false},
      {"exec_?", "exec_12", false},
      {"exec_?", "exec_é", true},  // one code point, two bytes
      {"[abc]x", "bx", true},
      {"[abc]x", "dx", false},
      {"[a-c]x", "cx", true},
      {"[!a-c]x", "cx", false},
      {"[^a-c]x", "dx", true},
      {"[]]", "]", true},
      {"[!]]", "a", true},
      {"[é-ê]", "ê", true},
      {"a\\*b", "a*b", true},
      {"a\\*b", "axb", false},
      {"*", "", true},
      {"*", "anything", true},
      {"", "", true},
      {"", "x", false},
      {"a*b*c", "abc", true},
      {"a*b*c", "aXbYc", true},
      {"a*b*c", "aXbYcZ", false},
      {"a*b*c", "acb", false},
      {"*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
      {"*aab", "aaab", true},
      {"prod-*", "prod-eu-1", true},
      {"prod-*", "staging", false},
      {"?", "\xff", true},  // an invalid byte is one character
      {"??", "\xc3", false},
  };
  for (const GlobCase& c : cases) {
    auto g = Glob::Compile(c.pattern);
    ASSERT_TRUE(g.ok()) << c.pattern << ": " << g.status();
    EXPECT_EQ(g->Matches(c.text), c.match) << "pattern " << c.pattern << " text " << c.text;
  }
}

TEST(GlobTest, LiteralPartsUsedByTheIndex) {
  auto g = Glob::Compile("git\\*hub_*_x");
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->literal_prefix(), "git*hub_");
  EXPECT_EQ(g->literal_suffix(), "_x");
  EXPECT_FALSE(g->is_literal());
  auto lit = Glob::Compile("a\\?b");
  ASSERT_TRUE(lit.ok());
  EXPECT_TRUE(lit->is_literal());
  EXPECT_EQ(lit->literal_prefix(), "a?b");
  EXPECT_TRUE(Glob::Compile("**")->matches_everything());
}

TEST(GlobTest, Errors) {
  EXPECT_THAT(std::string(Glob::Compile("[abc").status().message()), HasSubstr("unterminated"));
  EXPECT_THAT(std::string(Glob::Compile("abc\\").status().message()), HasSubstr("trailing"));
  EXPECT_THAT(std::string(Glob::Compile("[z-a]").status().message()), HasSubstr("empty range"));
  EXPECT_FALSE(Glob::Compile(std::string(2000, 'a')).ok());
}

// ---------------------------------------------------------------------------------------------
// String conditions, one table for every field.

struct FieldCase {
  const char* condition;  // YAML of the `match` mapping
  Action action;
  bool match;
};

Action With(void (*set)(Action&)) {
  Action a = ToolCall("tool");
  set(a);
  return a;
}

TEST(MatchTest, EveryFieldExactGlobAndList) {
  const FieldCase cases[] = {
      {"agent_id: billing-agent", With([](Action& a) { a.agent_id = "billing-agent"; }), true},
      {"agent_id: billing-agent", With([](Action& a) { a.agent_id = "other"; }), false},
      {"agent_id: [a, billing-*]", With([](Action& a) { a.agent_id = "billing-2"; }), true},
      {"tool_name: shell", With([](Action& a) { a.tool_name = "shell"; }), true},
      {"tool_name: [\"shell*\", \"exec_?\"]", With([](Action& a) { a.tool_name = "exec_1"; }),
       true},
      {"tool_name: [\"shell*\", \"exec_?\"]", With([](Action& a) { a.tool_name = "exec"; }), false},
      {"tool_type: shell", With([](Action& a) { a.tool_type = "shell"; }), true},
      {"tool_type: shell", With([](Action& a) { a.tool_type = "http"; }), false},
      {"operation: [delete, write]", With([](Action& a) { a.operation = "write"; }), true},
      {"operation: [delete, write]", With([](Action& a) { a.operation = "read"; }), false},
      {"target_system: prod-*", With([](Action& a) { a.target_system = "prod-db"; }), true},
      {"target_system: prod-*", With([](Action& a) { a.target_system = "dev-db"; }), false},
      {"initiator_type: agent", With([](Action& a) { a.initiator_type = "agent"; }), true},
      {"initiator_type: agent", With([](Action& a) { a.initiator_type = "human"; }), false},
      {"initiator_id: \"u-*\"", With([](Action& a) { a.initiator_id = "u-42"; }), true},
      {"initiator_id: \"u-*\"", With([](Action& a) { a.initiator_id = "svc-42"; }), false},
      // An absent field is the empty string.
      {"operation: delete", ToolCall("tool"), false},
      {"operation: \"\"", ToolCall("tool"), true},
      {"operation: \"*\"", ToolCall("tool"), true},
      // All conditions must hold.
      {"{tool_name: db_*, operation: delete}",
       With([](Action& a) { a.tool_name = "db_query", a.operation = "delete"; }), true},
      {"{tool_name: db_*, operation: delete}",
       With([](Action& a) { a.tool_name = "db_query", a.operation = "read"; }), false},
      // No conditions at all: matches everything.
      {"{}", ToolCall("anything"), true},
  };
  for (const FieldCase& c : cases) {
    auto set = MustCompile(
        absl::StrCat("rules:\n  - id: r\n    effect: deny\n    match:\n      ", c.condition, "\n"));
    ASSERT_NE(set, nullptr);
    const Decision d = set->Evaluate(c.action, nullptr, kNow);
    EXPECT_EQ(d.effect == Effect::kDeny, c.match) << c.condition;
    EXPECT_EQ(d.rule_id, c.match ? "r" : "") << c.condition;
  }
}

TEST(MatchTest, LongListsOfValues) {
  std::string list;
  for (int i = 0; i < 50; ++i) absl::StrAppend(&list, i ? ", " : "", "agent-", i);
  auto set = MustCompile(
      absl::StrCat("rules:\n  - {id: r, effect: deny, match: {agent_id: [", list, ", \"x*\"]}}\n"));
  Action a = ToolCall("t");
  for (const char* id : {"agent-0", "agent-17", "agent-49", "xyz"}) {
    a.agent_id = id;
    EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect, Effect::kDeny) << id;
  }
  a.agent_id = "agent-50";
  EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect, Effect::kAllow);
}

// ---------------------------------------------------------------------------------------------
// Argument predicates.

struct PredicateCase {
  const char* predicate;  // YAML flow mapping
  const char* arguments;  // JSON, or nullptr for no arguments
  bool match;
};

TEST(ArgumentsTest, Table) {
  const PredicateCase cases[] = {
      // regex: unanchored RE2 search, strings only.
      {R"({pointer: /command, regex: "rm\\s+-rf"})", R"({"command": "sudo rm  -rf /"})", true},
      {R"({pointer: /command, regex: "rm\\s+-rf"})", R"({"command": "ls -la"})", false},
      {R"({pointer: /command, regex: "^ls"})", R"({"command": "sudo ls"})", false},
      {R"({pointer: /command, regex: "1"})", R"({"command": 1})", false},  // type mismatch
      {R"({pointer: /command, regex: "x"})", R"({})", false},              // missing pointer
      {R"({pointer: /command, regex: "x"})", nullptr, false},              // no arguments
      // not_regex.
      {R"({pointer: /to, not_regex: "@example\\.com$"})", R"({"to": "a@evil.io"})", true},
      {R"({pointer: /to, not_regex: "@example\\.com$"})", R"({"to": "a@example.com"})", false},
      {R"({pointer: /to, not_regex: "@example\\.com$"})", R"({})", false},
      // Arrays: some element must satisfy the element operators.
      {R"({pointer: /to, not_regex: "@example\\.com$"})",
       R"({"to": ["a@example.com", "b@evil.io"]})", true},
      {R"({pointer: /to, not_regex: "@example\\.com$"})",
       R"({"to": ["a@example.com", "b@example.com"]})", false},
      {R"({pointer: /to, not_regex: "@example\\.com$"})", R"({"to": []})", false},
      {R"({pointer: /v, ">": 10, "<": 20})", R"({"v": [5, 25]})", false},
      {R"({pointer: /v, ">": 10, "<": 20})", R"({"v": [5, 15]})", true},
      // Numeric comparisons.
      {R"({pointer: /amount, ">": 1000})", R"({"amount": 1500})", true},
      {R"({pointer: /amount, ">": 1000})", R"({"amount": 1000})", false},
      {R"({pointer: /amount, ">=": 1000})", R"({"amount": 1000})", true},
      {R"({pointer: /amount, "<": 1000})", R"({"amount": 999.5})", true},
      {R"({pointer: /amount, "<=": 1000})", R"({"amount": 1000.5})", false},
      {R"({pointer: /amount, gt: 1000})", R"({"amount": 1000.01})", true},
      {R"({pointer: /amount, gte: 1000, lte: 2000})", R"({"amount": 2000})", true},
      {R"({pointer: /amount, lt: -5})", R"({"amount": -6})", true},
      {R"({pointer: /amount, ">": 1000})", R"({"amount": "1500"})", true},  // numeric string
      {R"({pointer: /amount, ">": 1000})", R"({"amount": "1,500"})", false},
      {R"({pointer: /amount, ">": 1000})", R"({"amount": true})", false},
      {R"({pointer: /amount, ">": 1000})", R"({"amount": null})", false},
      {R"({pointer: /amount, ">": 1000})", R"({"amount": {"value": 5000}})", false},
      {R"({pointer: /amount, ">": 1000})", R"({"amount": 18446744073709551615})", true},
      {R"({pointer: /amount, ">": 9007199254740992})", R"({"amount": 9007199254740993})", true},
      {R"({pointer: /amount, ">": 1000})", R"({})", false},
      // equals: type-exact JSON equality of the whole value (1 and 1.0 are equal numbers).
      {R"({pointer: /mode, equals: force})", R"({"mode": "force"})", true},
      {R"({pointer: /mode, equals: force})", R"({"mode": "Force"})", false},
      {R"({pointer: /n, equals: 1})", R"({"n": 1.0})", true},
      {R"({pointer: /n, equals: 1})", R"({"n": "1"})", false},
      {R"({pointer: /n, equals: "1"})", R"({"n": "1"})", true},
      {R"({pointer: /dry, equals: false})", R"({"dry": false})", true},
      {R"({pointer: /dry, equals: false})", R"({"dry": "false"})", false},
      {R"({pointer: /x, equals: null})", R"({"x": null})", true},
      {R"({pointer: /x, equals: null})", R"({})", false},
      {R"({pointer: /o, equals: {a: [1, 2]}})", R"({"o": {"a": [1, 2]}})", true},
      {R"({pointer: /o, equals: {a: [1, 2]}})", R"({"o": {"a": [2, 1]}})", false},
      // in.
      {R"({pointer: /region, in: [eu-west-1, eu-central-1]})", R"({"region": "eu-central-1"})",
       true},
      {R"({pointer: /region, in: [eu-west-1, eu-central-1]})", R"({"region": "us-east-1"})", false},
      {R"({pointer: /n, in: [1, 2, 3]})", R"({"n": 2})", true},
      // exists.
      {R"({pointer: /force, exists: true})", R"({"force": null})", true},
      {R"({pointer: /force, exists: true})", R"({})", false},
      {R"({pointer: /force, exists: false})", R"({})", true},
      {R"({pointer: /force, exists: false})", nullptr, true},
      {R"({pointer: /force, exists: false})", R"({"force": 1})", false},
      // Pointers: nesting, array indexes, escapes, the whole document.
      {R"({pointer: /a/b/0/c, equals: 1})", R"({"a": {"b": [{"c": 1}]}})", true},
      {R"({pointer: /a/b/1/c, equals: 1})", R"({"a": {"b": [{"c": 1}]}})", false},
      {R"({pointer: /a/b/01, exists: true})", R"({"a": {"b": [0, 1]}})", false},
      {R"({pointer: /a/-, exists: true})", R"({"a": [1]})", false},
      {R"({pointer: /a~1b/c~0d, equals: 1})", R"({"a/b": {"c~d": 1}})", true},
      {R"({pointer: /a/0, equals: 1})", R"({"a": {"0": 1}})", true},
      {R"({pointer: /a/x, exists: true})", R"({"a": "string"})", false},
      {R"({pointer: "", equals: [1]})", R"([1])", true},
  };
  for (const PredicateCase& c : cases) {
    auto set = MustCompile(absl::StrCat(
        "rules:\n  - id: r\n    effect: deny\n    match:\n      arguments:\n        - ",
        c.predicate, "\n"));
    ASSERT_NE(set, nullptr) << c.predicate;
    Json args;
    if (c.arguments != nullptr) args = Json::parse(c.arguments);
    const Action a = ToolCall("tool", c.arguments != nullptr ? &args : nullptr);
    EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect == Effect::kDeny, c.match)
        << c.predicate << " on " << (c.arguments ? c.arguments : "(no arguments)");
    // The same arguments as text (as Policy.Check passes them), parsed when the predicate
    // first looks: the same answer.
    Action text = ToolCall("tool");
    if (c.arguments != nullptr) text.arguments = ActionArguments::FromText(c.arguments);
    EXPECT_EQ(set->Evaluate(text, nullptr, kNow).effect == Effect::kDeny, c.match)
        << c.predicate << " on text " << (c.arguments ? c.arguments : "(no arguments)");
  }
}

TEST(ActionArgumentsTest, TextIsParsedOnlyWhenARuleLooksAtAnArgument) {
  auto set = MustCompile(R"(
rules:
  - id: big-payment
    effect: require_approval
    match:
      tool_name: send_payment
      arguments:
        - {pointer: /amount, ">": 1000}
  - id: no-shell
    effect: deny
    match: {tool_name: "shell*"}
)");
  const std::string payment = R"({"amount": 1500})";
  Action a = ToolCall("send_payment");
  a.arguments = ActionArguments::FromText(payment);
  EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect, Effect::kRequireApproval);
  EXPECT_TRUE(a.arguments.parsed());
  Action b = ToolCall("shell_exec");
  b.arguments = ActionArguments::FromText(payment);
  EXPECT_EQ(set->Evaluate(b, nullptr, kNow).effect, Effect::kDeny);
  EXPECT_FALSE(b.arguments.parsed());  // no rule for this tool reads an argument
  Action c = ToolCall("search");
  c.arguments = ActionArguments::FromText(payment);
  EXPECT_EQ(set->Evaluate(c, nullptr, kNow).effect, Effect::kAllow);
  EXPECT_FALSE(c.arguments.parsed());
}

TEST(ActionArgumentsTest, ACopyParsesItsOwnAndBadTextReadsAsNone) {
  const std::string text = R"({"a": [1, "two"]})";
  auto original = std::make_unique<ActionArguments>(ActionArguments::FromText(text));
  ASSERT_NE(original->get(), nullptr);
  const ActionArguments copy = *original;
  EXPECT_FALSE(copy.parsed());  // parses again when asked, rather than share the original's
  original.reset();             // the copy must not point into the original's parse
  ASSERT_NE(copy.get(), nullptr);
  EXPECT_EQ(*copy.get(), Json::parse(text));
  const Json parsed = {{"x", 1}};
  const ActionArguments given = &parsed;  // already parsed: used as is
  EXPECT_EQ(given.get(), &parsed);
  EXPECT_FALSE(given.parsed());
  EXPECT_EQ(ActionArguments().get(), nullptr);
  EXPECT_EQ(ActionArguments::FromText("{").get(), nullptr);
}

class FakeTools final : public ToolLookup {
 public:
  explicit FakeTools(std::set<std::string> names) : names_(std::move(names)) {}
  bool Has(std::string_view t) const override { return names_.count(std::string(t)) > 0; }

 private:
  std::set<std::string> names_;
};

TEST(MatchTest, ToolInSnapshot) {
  auto set = MustCompile(R"(
default: allow
rules:
  - id: only-registered-tools
    effect: deny
    reason: tool not in the agent's registered snapshot
    match: {tool_in_snapshot: false}
  - id: registered-shell-needs-a-human
    effect: require_approval
    match: {tool_name: shell, tool_in_snapshot: true}
)");
  ASSERT_NE(set, nullptr);
  const FakeTools tools({"search", "shell"});
  struct Case {
    const char* tool;
    const ToolLookup* registered;
    Effect want;
  } cases[] = {
      {"search", &tools, Effect::kAllow},
      {"shell", &tools, Effect::kRequireApproval},
      {"delete_db", &tools, Effect::kDeny},  // not in the snapshot
      {"search", nullptr, Effect::kDeny},    // the agent never registered: nothing is in it
  };
  for (const Case& c : cases) {
    Action a = ToolCall(c.tool);
    a.registered_tools = c.registered;
    EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect, c.want) << c.tool;
  }
  EXPECT_THAT(
      ErrorOf("rules:\n  - id: x\n    effect: deny\n    match: {tool_in_snapshot: maybe}\n"),
      HasSubstr("rules[0].match.tool_in_snapshot: expected true or false"));
}

TEST(ArgumentsTest, AllPredicatesMustHold) {
  auto set = MustCompile(R"(
rules:
  - id: big-transfer-to-new-payee
    effect: require_approval
    match:
      tool_name: transfer
      arguments:
        - {pointer: /amount, ">": 1000}
        - {pointer: /payee_verified, equals: false}
)");
  const Json both = Json::parse(R"({"amount": 5000, "payee_verified": false})");
  const Json one = Json::parse(R"({"amount": 5000, "payee_verified": true})");
  EXPECT_EQ(set->Evaluate(ToolCall("transfer", &both), nullptr, kNow).effect,
            Effect::kRequireApproval);
  EXPECT_EQ(set->Evaluate(ToolCall("transfer", &one), nullptr, kNow).effect, Effect::kAllow);
}

// ---------------------------------------------------------------------------------------------
// Precedence, default, shadow, unless.

TEST(PrecedenceTest, DenyBeatsApprovalBeatsAllowAndFileOrderBreaksTies) {
  struct Case {
    std::vector<std::string> effects;  // rules r0, r1, ... all matching
    Effect effect;
    const char* rule;
  };
  const Case cases[] = {
      {{"allow", "require_approval", "deny"}, Effect::kDeny, "r2"},
      {{"deny", "require_approval", "allow"}, Effect::kDeny, "r0"},
      {{"allow", "require_approval"}, Effect::kRequireApproval, "r1"},
      {{"require_approval", "allow"}, Effect::kRequireApproval, "r0"},
      {{"allow", "allow"}, Effect::kAllow, "r0"},
      {{"deny", "deny"}, Effect::kDeny, "r0"},
      {{"allow", "deny", "deny"}, Effect::kDeny, "r1"},
  };
  for (const Case& c : cases) {
    std::string yaml = "default: deny\nrules:\n";
    for (size_t i = 0; i < c.effects.size(); ++i) {
      // Alternate between indexed (tool_name) and unindexed rules: order must not depend on it.
      absl::StrAppend(&yaml, "  - {id: r", i, ", effect: ", c.effects[i],
                      i % 2 ? ", match: {tool_name: \"sh*\"}" : "", "}\n");
    }
    auto set = MustCompile(yaml);
    const Decision d = set->Evaluate(ToolCall("shell"), nullptr, kNow);
    EXPECT_EQ(d.effect, c.effect) << yaml;
    EXPECT_EQ(d.rule_id, c.rule) << yaml;
    ASSERT_NE(d.rule, nullptr);
    EXPECT_EQ(d.rule->id, c.rule);
  }
}

TEST(PrecedenceTest, DefaultAppliesWhenNothingMatches) {
  for (const auto& [text, effect] : std::vector<std::pair<std::string, Effect>>{
           {"allow", Effect::kAllow},
           {"deny", Effect::kDeny},
           {"require_approval", Effect::kRequireApproval}}) {
    auto set = MustCompile("default: " + text +
                           "\nrules:\n  - {id: r, effect: deny, match: "
                           "{tool_name: other}}\n");
    const Decision d = set->Evaluate(ToolCall("shell"), nullptr, kNow);
    EXPECT_EQ(d.effect, effect);
    EXPECT_EQ(d.rule, nullptr);
    EXPECT_EQ(d.rule_id, "");
    EXPECT_EQ(d.reason, "no rule matched");
    EXPECT_FALSE(d.shadow);
  }
  EXPECT_EQ(MustCompile("rules: []")->default_effect(), Effect::kAllow);
}

TEST(PrecedenceTest, ReasonIsReported) {
  auto set = MustCompile(R"(
rules:
  - {id: with-reason, effect: deny, reason: "recursive delete", match: {tool_name: a}}
  - {id: without-reason, effect: deny, match: {tool_name: b}}
)");
  EXPECT_EQ(set->Evaluate(ToolCall("a"), nullptr, kNow).reason, "recursive delete");
  EXPECT_EQ(set->Evaluate(ToolCall("b"), nullptr, kNow).reason, "matched rule without-reason");
}

TEST(ShadowTest, ShadowRulesReportButNeverDecide) {
  auto set = MustCompile(R"(
rules:
  - {id: allow-shell, effect: allow, match: {tool_name: shell}}
  - {id: try-approval, effect: require_approval, shadow: true, match: {tool_name: shell}}
  - {id: try-deny, effect: deny, shadow: true, match: {tool_name: "sh*"}}
  - {id: try-deny-2, effect: deny, shadow: true, match: {tool_name: "*ell"}}
)");
  const Decision d = set->Evaluate(ToolCall("shell"), nullptr, kNow);
  EXPECT_EQ(d.effect, Effect::kAllow);
  EXPECT_EQ(d.rule_id, "allow-shell");
  EXPECT_TRUE(d.shadow);
  EXPECT_EQ(d.shadow_effect, Effect::kDeny);
  EXPECT_EQ(d.shadow_rule_id, "try-deny");  // strongest, then first in the file
  ASSERT_NE(d.shadow_rule, nullptr);
  EXPECT_TRUE(d.shadow_rule->shadow);

  const Decision other = set->Evaluate(ToolCall("bash"), nullptr, kNow);
  EXPECT_EQ(other.effect, Effect::kAllow);
  EXPECT_EQ(other.rule, nullptr);
  EXPECT_FALSE(other.shadow);
}

TEST(ShadowTest, ShadowOnlyMatchLeavesTheDefault) {
  auto set =
      MustCompile("default: require_approval\nrules:\n  - {id: s, effect: allow, shadow: true}\n");
  const Decision d = set->Evaluate(ToolCall("x"), nullptr, kNow);
  EXPECT_EQ(d.effect, Effect::kRequireApproval);
  EXPECT_EQ(d.rule, nullptr);
  EXPECT_TRUE(d.shadow);
  EXPECT_EQ(d.shadow_effect, Effect::kAllow);
  EXPECT_EQ(d.shadow_rule_id, "s");
}

TEST(UnlessTest, ExceptionsToADeny) {
  auto set = MustCompile(R"(
rules:
  - id: no-prod-deletes
    effect: deny
    match: {operation: delete, target_system: "prod-*"}
    unless: {agent_id: dba-agent, arguments: [{pointer: /ticket, regex: "^CHG-[0-9]+$"}]}
)");
  const Json ticket = Json::parse(R"({"ticket": "CHG-42"})");
  Action a = ToolCall("sql", &ticket);
  a.operation = "delete";
  a.target_system = "prod-eu";
  EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect, Effect::kDeny);  // not the DBA agent
  a.agent_id = "dba-agent";
  EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect, Effect::kAllow);  // DBA with a ticket
  a.arguments = nullptr;
  EXPECT_EQ(set->Evaluate(a, nullptr, kNow).effect, Effect::kDeny);  // DBA without a ticket
}

// ---------------------------------------------------------------------------------------------
// Rate limits and budgets (with a fake clock: `now` is passed explicitly).

TEST(RateLimitTest, MatchesOnlyOnceTheLimitIsExceeded) {
  auto set = MustCompile(R"(
rules:
  - id: export-rate
    effect: deny
    match: {tool_name: "export_*"}
    rate_limit: {max: 3, per: 1m, scope: session}
)");
  RateState state;
  // Aligned to a minute, so that all calls fall in one fixed window.
  SystemTime t = SystemTime(minutes(28'333'333));
  Action a = ToolCall("export_csv");
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(set->Evaluate(a, &state, t + seconds(i)).effect, Effect::kAllow) << i;
  }
  EXPECT_EQ(set->Evaluate(a, &state, t + seconds(4)).effect, Effect::kDeny);
  EXPECT_EQ(set->Evaluate(a, &state, t + seconds(5)).rule_id, "export-rate");
  // Another session has its own counter.
  Action b = a;
  b.session_id = "session-2";
  EXPECT_EQ(set->Evaluate(b, &state, t + seconds(6)).effect, Effect::kAllow);
  // Calls to tools the rule does not match are not counted.
  EXPECT_EQ(set->Evaluate(ToolCall("read"), &state, t + seconds(7)).effect, Effect::kAllow);
  // Two windows later the count has gone.
  EXPECT_EQ(set->Evaluate(a, &state, t + minutes(2) + seconds(1)).effect, Effect::kAllow);
  // Without a RateState, rate limits never trigger.
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(set->Evaluate(a, nullptr, t + seconds(8)).effect, Effect::kAllow);
  }
}

TEST(RateLimitTest, SlidingWindowWeighsThePreviousWindow) {
  RateState state;
  const SystemTime t0 = SystemTime(minutes(1000));
  for (int i = 0; i < 10; ++i) state.CountInWindow(1, "k", minutes(1), t0 + seconds(50));
  // 15 s into the next window: 10 * 45/60 + 1.
  EXPECT_DOUBLE_EQ(state.CountInWindow(1, "k", minutes(1), t0 + seconds(75)), 8.5);
  // Another key or another counter id is independent.
  EXPECT_DOUBLE_EQ(state.CountInWindow(1, "other", minutes(1), t0 + seconds(75)), 1.0);
  EXPECT_DOUBLE_EQ(state.CountInWindow(2, "k", minutes(1), t0 + seconds(75)), 1.0);
}

TEST(RateLimitTest, AgentAndGlobalScopes) {
  auto set = MustCompile(R"(
rules:
  - {id: per-agent, effect: deny, match: {tool_name: a},
     rate_limit: {max: 1, per: 1h, scope: agent}}
  - {id: global, effect: require_approval, match: {tool_name: b},
     rate_limit: {max: 1, per: 1h, scope: global}}
)");
  RateState state;
  const SystemTime t = SystemTime(std::chrono::hours(500'000));
  Action a1 = ToolCall("a");
  Action a2 = ToolCall("a");
  a2.session_id = "another-session";  // same agent
  EXPECT_EQ(set->Evaluate(a1, &state, t).effect, Effect::kAllow);
  EXPECT_EQ(set->Evaluate(a2, &state, t).effect, Effect::kDeny);
  Action b1 = ToolCall("b");
  Action b2 = ToolCall("b");
  b2.agent_id = "another-agent";
  EXPECT_EQ(set->Evaluate(b1, &state, t).effect, Effect::kAllow);
  EXPECT_EQ(set->Evaluate(b2, &state, t).effect, Effect::kRequireApproval);
}

TEST(BudgetTest, MatchesOnceMoreThanMaxCallsWereCounted) {
  auto set = MustCompile(R"(
rules:
  - {id: budget, effect: deny, match: {tool_name: "export_*"}, budget: {max: 2, scope: agent}}
)");
  RateState state;
  Action a = ToolCall("export_a");
  Action b = ToolCall("export_b");
  b.session_id = "s2";  // same agent, other session: the agent's budget is shared
  EXPECT_EQ(set->Evaluate(a, &state, kNow).effect, Effect::kAllow);
  EXPECT_EQ(set->Evaluate(b, &state, kNow + std::chrono::hours(1000)).effect, Effect::kAllow);
  EXPECT_EQ(set->Evaluate(a, &state, kNow + std::chrono::hours(2000)).effect, Effect::kDeny);
  Action other = a;
  other.agent_id = "agent-2";
  EXPECT_EQ(set->Evaluate(other, &state, kNow).effect, Effect::kAllow);
}

TEST(BudgetTest, CountersSurviveAReloadOfTheSameRule) {
  const std::string v1 =
      "rules:\n  - {id: b, effect: deny, match: {tool_name: x}, budget: {max: 2}}\n";
  const std::string v2 = "revision: v2\n" + v1 + "  - {id: other, effect: allow}\n";
  RateState state;
  EXPECT_EQ(MustCompile(v1)->Evaluate(ToolCall("x"), &state, kNow).effect, Effect::kAllow);
  EXPECT_EQ(MustCompile(v1)->Evaluate(ToolCall("x"), &state, kNow).effect, Effect::kAllow);
  EXPECT_EQ(MustCompile(v2)->Evaluate(ToolCall("x"), &state, kNow).effect, Effect::kDeny);
}

TEST(RateLimitTest, RateAndBudgetTogetherMustBothBeExceeded) {
  auto set = MustCompile(R"(
rules:
  - {id: r, effect: deny, match: {tool_name: x}, rate_limit: {max: 1, per: 1h}, budget: {max: 2}}
)");
  RateState state;
  const SystemTime t = SystemTime(std::chrono::hours(1000));
  EXPECT_EQ(set->Evaluate(ToolCall("x"), &state, t).effect, Effect::kAllow);  // 1, 1
  EXPECT_EQ(set->Evaluate(ToolCall("x"), &state, t).effect, Effect::kAllow);  // 2 > 1, 2
  EXPECT_EQ(set->Evaluate(ToolCall("x"), &state, t).effect, Effect::kDeny);   // 3 > 1, 3 > 2
}

TEST(RateLimitTest, OtherConditionsMustHoldForACallToCount) {
  auto set = MustCompile(R"(
rules:
  - id: r
    effect: deny
    match: {tool_name: x, arguments: [{pointer: /big, equals: true}]}
    rate_limit: {max: 1, per: 1h}
)");
  RateState state;
  const Json big = Json::parse(R"({"big": true})");
  const Json small = Json::parse(R"({"big": false})");
  for (int i = 0; i < 5; ++i) set->Evaluate(ToolCall("x", &small), &state, kNow);
  EXPECT_EQ(set->Evaluate(ToolCall("x", &big), &state, kNow).effect, Effect::kAllow);
  EXPECT_EQ(set->Evaluate(ToolCall("x", &big), &state, kNow).effect, Effect::kDeny);
}

TEST(RateLimitTest, ARuleFiledUnderSeveralPatternsCountsOnce) {
  auto set = MustCompile(R"(
rules:
  - {id: r, effect: deny, match: {tool_name: [shell, "sh*", "*ell", "?hell"]}, budget: {max: 1}}
)");
  RateState state;
  EXPECT_EQ(set->Evaluate(ToolCall("shell"), &state, kNow).effect, Effect::kAllow);
  EXPECT_EQ(set->Evaluate(ToolCall("shell"), &state, kNow).effect, Effect::kDeny);
}

TEST(RateStateTest, MemoryIsBounded) {
  RateStateOptions options;
  options.max_keys = 64;
  RateState state(options);
  for (int i = 0; i < 10'000; ++i) state.CountTotal(1, absl::StrCat("session-", i), kNow);
  EXPECT_LE(state.size(), 64u);
  EXPECT_GE(state.evicted(), 10'000u - 64u);
}

TEST(RateStateTest, IdleCountersAreDropped) {
  RateStateOptions options;
  options.idle_ttl = minutes(10);
  RateState state(options);
  EXPECT_EQ(state.CountTotal(1, "a", kNow), 1u);
  EXPECT_EQ(state.CountTotal(1, "a", kNow + minutes(5)), 2u);
  // Many keys later (each shard sees a call), "a" has been idle for 11 minutes.
  for (int i = 0; i < 500; ++i) state.CountTotal(2, absl::StrCat(i), kNow + minutes(16));
  EXPECT_EQ(state.CountTotal(1, "a", kNow + minutes(16)), 1u);
  EXPECT_GE(state.evicted(), 1u);
}

TEST(RateStateTest, ConcurrentEvaluationCountsExactly) {
  // Four threads share one RuleSet and one RateState; the regex and the time window exercise
  // RE2's shared cache and the time zone under concurrency too (run it under TSan).
  auto set = MustCompile(R"(
rules:
  - {id: b, effect: deny, match: {tool_name: x}, budget: {max: 1000, scope: global}}
  - id: r
    effect: require_approval
    shadow: true
    match: {tool_name: "x*", arguments: [{pointer: /command, regex: "rm\\s+-rf"}]}
    time_window: {timezone: Europe/Paris, days: [mon-sun]}
)");
  RateState state;
  const Json args = Json::parse(R"({"command": "rm -rf /tmp/x"})");
  std::atomic<int> allowed{0};
  std::atomic<int> shadowed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Action a = ToolCall("x", &args);
      a.session_id = absl::StrCat("s", t);
      for (int i = 0; i < 1000; ++i) {
        const Decision d = set->Evaluate(a, &state, kNow);
        if (d.effect == Effect::kAllow) ++allowed;
        if (d.shadow_rule_id == "r") ++shadowed;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(allowed.load(), 1000);
  EXPECT_EQ(shadowed.load(), 4000);
}

// ---------------------------------------------------------------------------------------------
// Time windows.

TEST(TimeWindowTest, OfficeHoursInATimeZone) {
  auto set = MustCompile(R"(
rules:
  - id: no-deploys-outside-office-hours
    effect: deny
    match: {tool_name: deploy}
    time_window: {days: [mon-fri], hours: "09:00-17:00", timezone: Europe/Paris, outside: true}
)");
  struct Case {
    SystemTime t;
    bool denied;
  };
  const Case cases[] = {
      {At(2026, 11, 23, 9, 0, "Europe/Paris"), false},    // Monday 09:00: inside
      {At(2026, 11, 23, 16, 59, "Europe/Paris"), false},  // Monday 16:59: inside
      {At(2026, 11, 23, 17, 0, "Europe/Paris"), true},    // 17:00: the end is excluded
      {At(2026, 11, 23, 8, 59, "Europe/Paris"), true},
      {At(2026, 11, 23, 8, 30, "UTC"), false},          // 09:30 in Paris (UTC+1 in November)
      {At(2026, 7, 1, 7, 30, "UTC"), false},            // 09:30 in Paris (UTC+2 in July)
      {At(2026, 7, 1, 15, 30, "UTC"), true},            // 17:30 in Paris
      {At(2026, 11, 28, 11, 0, "Europe/Paris"), true},  // Saturday
  };
  for (const Case& c : cases) {
    EXPECT_EQ(set->Evaluate(ToolCall("deploy"), nullptr, c.t).effect == Effect::kDeny, c.denied)
        << absl::FormatTime(absl::FromChrono(c.t));
  }
}

TEST(TimeWindowTest, InsideWindowAcrossMidnightAndDayLists) {
  auto set = MustCompile(R"(
rules:
  - id: night
    effect: require_approval
    time_window: {days: [sat, sunday, fri-fri], hours: ["22:00-06:00"]}
)");
  EXPECT_EQ(set->Evaluate(ToolCall("x"), nullptr, At(2026, 11, 28, 23, 0, "UTC")).effect,
            Effect::kRequireApproval);  // Saturday 23:00
  EXPECT_EQ(set->Evaluate(ToolCall("x"), nullptr, At(2026, 11, 28, 5, 59, "UTC")).effect,
            Effect::kRequireApproval);  // Saturday 05:59
  EXPECT_EQ(set->Evaluate(ToolCall("x"), nullptr, At(2026, 11, 28, 6, 0, "UTC")).effect,
            Effect::kAllow);
  EXPECT_EQ(set->Evaluate(ToolCall("x"), nullptr, At(2026, 11, 23, 23, 0, "UTC")).effect,
            Effect::kAllow);  // Monday
}

// ---------------------------------------------------------------------------------------------
// The index must not change any answer: compare with a brute-force evaluation of random
// policies (string conditions, effects and shadow flags).

TEST(IndexTest, AgreesWithBruteForceOnRandomPolicies) {
  std::mt19937 rng(42);
  const std::vector<std::string> tools = {"shell",    "shell_exec", "sh",          "bash",
                                          "db_query", "db_delete",  "s3_delete",   "send_email",
                                          "",         "x",          "shell_query", "dbsend_mail"};
  const std::vector<std::string> patterns = {
      "shell",      "sh*",      "*_delete", "db_*", "*",       "?ash",   "[sb]*",   "*e*",  "x",
      "send_email", "db_query", "*sh*",     "",     "shell_*", "send_*", "*_query", "*ete", "s*l"};
  const std::vector<std::string> ops = {"read", "delete", ""};
  const char* effects[] = {"allow", "deny", "require_approval"};
  for (int round = 0; round < 500; ++round) {
    struct R {
      std::vector<std::string> tool, op;
      Effect effect;
      bool shadow;
    };
    std::vector<R> rules;
    std::string yaml = "rules:\n";
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) {
      R r;
      const int e = static_cast<int>(rng() % 3);
      r.effect = e == 0 ? Effect::kAllow : e == 1 ? Effect::kDeny : Effect::kRequireApproval;
      r.shadow = rng() % 4 == 0;
      std::string match;
      if (rng() % 3 != 0) {
        const int k = 1 + static_cast<int>(rng() % 3);
        for (int j = 0; j < k; ++j) r.tool.push_back(patterns[rng() % patterns.size()]);
        match += "tool_name: [";
        for (size_t j = 0; j < r.tool.size(); ++j) {
          absl::StrAppend(&match, j ? ", " : "", "\"", r.tool[j], "\"");
        }
        match += "], ";
      }
      if (rng() % 3 == 0) {
        r.op.push_back(ops[rng() % ops.size()]);
        absl::StrAppend(&match, "operation: \"", r.op[0], "\"");
      }
      absl::StrAppend(&yaml, "  - {id: r", i, ", effect: ", effects[e],
                      r.shadow ? ", shadow: true" : "", ", match: {", match, "}}\n");
      rules.push_back(r);
    }
    auto set = MustCompile(yaml);
    ASSERT_NE(set, nullptr);
    for (const std::string& tool : tools) {
      for (const std::string& op : ops) {
        Action a = ToolCall(tool);
        a.operation = op;
        auto any = [](const std::vector<std::string>& pats, const std::string& v) {
          if (pats.empty()) return true;
          for (const auto& p : pats) {
            if (Glob::Compile(p)->Matches(v)) return true;
          }
          return false;
        };
        int best = -1, best_shadow = -1;
        auto rank = [](Effect e) { return e == Effect::kDeny ? 2 : e == Effect::kAllow ? 0 : 1; };
        for (int i = 0; i < n; ++i) {
          if (!any(rules[i].tool, tool) || !any(rules[i].op, op)) continue;
          int& b = rules[i].shadow ? best_shadow : best;
          if (b < 0 || rank(rules[i].effect) > rank(rules[b].effect)) b = i;
        }
        const Decision d = set->Evaluate(a, nullptr, kNow);
        EXPECT_EQ(d.rule_id, best < 0 ? "" : absl::StrCat("r", best)) << yaml << tool << op;
        EXPECT_EQ(d.shadow_rule_id, best_shadow < 0 ? "" : absl::StrCat("r", best_shadow))
            << yaml << tool << " " << op;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Compilation: metadata, revision, JSON, and errors naming the line and the key.

TEST(CompileTest, RuleMetadata) {
  auto set = MustCompile(R"(
revision: "2026-11-23.1"
rules:
  - id: pay
    description: payments need a human
    effect: require_approval
    on_timeout: allow
    approval_timeout: 10m
  - id: plain
    effect: require_approval
)");
  EXPECT_EQ(set->revision(), "2026-11-23.1");
  ASSERT_EQ(set->size(), 2u);
  const Rule& pay = set->rule(0);
  EXPECT_EQ(pay.id, "pay");
  EXPECT_EQ(pay.on_timeout, Effect::kAllow);
  EXPECT_EQ(pay.approval_timeout, minutes(10));
  EXPECT_EQ(pay.description, "payments need a human");
  EXPECT_EQ(pay.line, 4);
  const Rule& plain = set->rule(1);
  EXPECT_EQ(plain.on_timeout, Effect::kDeny);
  EXPECT_EQ(plain.approval_timeout, minutes(5));
  EXPECT_EQ(plain.index, 1u);
  EXPECT_EQ(set->FindRule("plain"), &plain);
  EXPECT_EQ(set->FindRule("nope"), nullptr);
  EXPECT_EQ(EffectName(Effect::kRequireApproval), "require_approval");
}

TEST(CompileTest, RevisionDefaultsToTheTextHash) {
  auto set = MustCompile("rules: []\n");
  // sha256("rules: []\n") = 5d6d5f3c...; only the form is checked here.
  EXPECT_THAT(set->revision(), StartsWith("sha256:"));
  EXPECT_EQ(set->revision().size(), 7u + 12u);
  EXPECT_NE(MustCompile("rules: []\n# edited\n")->revision(), set->revision());
}

TEST(CompileTest, JsonPoliciesWork) {
  auto set = MustCompile(R"({
  "default": "deny",
  "rules": [
    {"id": "allow-read", "effect": "allow", "match": {"operation": ["read"]}},
    {"id": "big", "effect": "require_approval",
     "match": {"arguments": [{"pointer": "/amount", ">": 1000}]}}
  ]
})");
  Action read = ToolCall("db");
  read.operation = "read";
  EXPECT_EQ(set->Evaluate(read, nullptr, kNow).effect, Effect::kAllow);
  EXPECT_EQ(set->Evaluate(ToolCall("db"), nullptr, kNow).effect, Effect::kDeny);
  const Json big = Json::parse(R"({"amount": 1001})");
  EXPECT_EQ(set->Evaluate(ToolCall("pay", &big), nullptr, kNow).effect, Effect::kRequireApproval);
}

TEST(CompileTest, AnchorsAndAliasesAreExpanded) {
  auto set = MustCompile(R"(
rules:
  - {id: a, effect: deny, match: {tool_name: &shells [bash, "sh*"]}}
  - {id: b, effect: deny, match: {agent_id: x, tool_name: *shells}}
)");
  EXPECT_EQ(set->Evaluate(ToolCall("bash"), nullptr, kNow).rule_id, "a");
}

struct ErrorCase {
  std::string yaml;
  std::string expected;  // a substring of the message
};

TEST(CompileTest, ErrorsNameTheLineAndTheKey) {
  const ErrorCase cases[] = {
      {"rules:\n  - id: a\n    effect: deny\n    colour: red\n",
       "4:5: rules[0]: unknown key 'colour'"},
      {"rule: []\n", "1:1: unknown key 'rule'"},
      {"rules:\n  - id: a\n    effect: block\n",
       "3:13: rules[0].effect: expected allow, deny or require_approval, not 'block' (rule 'a')"},
      {"rules:\n  - id: a\n    effect: deny\n  - id: a\n    effect: allow\n",
       "4:9: rules[1].id: duplicate rule id 'a' (first at line 2)"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      arguments:\n        - {pointer: "
       "/c, regex: \"rm(\"}\n",
       "6:32: rules[0].match.arguments[0].regex: invalid regex: missing ): rm( (rule 'a')"},
      {"rules:\n  - id: a\n    effect: deny\n    time_window: {timezone: Mars/Olympus}\n",
       "4:29: rules[0].time_window.timezone: unknown time zone 'Mars/Olympus'"},
      {"rules:\n  - id: a\n    effect: deny\n    time_window: {timezone: ../../etc/passwd}\n",
       "unknown time zone"},
      {"rules:\n  - id: a\n    effect: deny\n    rate_limit: {max: 1, per: 5 minutes}\n",
       "4:31: rules[0].rate_limit.per: expected a duration such as"},
      {"rules:\n  - id: a\n    effect: deny\n    rate_limit: {max: 1, per: 5min}\n",
       "4:31: rules[0].rate_limit.per: unknown duration unit 'min' (ms, s, m, h, d)"},
      {"rules:\n  - id: a\n    effect: require_approval\n    approval_timeout: soon\n",
       "4:23: rules[0].approval_timeout: expected a duration"},
      {"rules:\n  - id: a\n    effect: deny\n    rate_limit: {max: 1, per: 0s}\n",
       "rules[0].rate_limit.per: must be longer than 0"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      tool_name: {x: 1}\n",
       "5:18: rules[0].match.tool_name: expected a string or a list of strings (rule 'a')"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      tool_name: []\n",
       "rules[0].match.tool_name: expected a string or a list of strings"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      tool_name: \"[abc\"\n",
       "5:18: rules[0].match.tool_name: bad glob: unterminated '['"},
      {"rules:\n  - effect: deny\n", "2:5: rules[0]: missing key 'id'"},
      {"rules:\n  - id: a\n", "2:5: rules[0]: missing key 'effect' (rule 'a')"},
      {"rules:\n  - id: \"has space\"\n    effect: deny\n", "rules[0].id: rule ids are"},
      {"rules:\n  - id: a\n    effect: deny\n    on_timeout: allow\n",
       "4:17: rules[0].on_timeout: only rules with effect require_approval time out"},
      {"rules:\n  - id: a\n    effect: require_approval\n    on_timeout: require_approval\n",
       "rules[0].on_timeout: expected deny or allow"},
      {"rules:\n  - id: a\n    effect: deny\n    shadow: maybe\n",
       "4:13: rules[0].shadow: expected true or false"},
      {"rules:\n  - id: a\n    effect: deny\n    effect: allow\n",
       "4:5: rules[0].effect: duplicate key (first at line 3)"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      arguments:\n        - {pointer: "
       "command, equals: x}\n",
       "rules[0].match.arguments[0].pointer: a JSON pointer is empty or starts with '/'"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      arguments:\n        - {pointer: "
       "/a}\n",
       "6:11: rules[0].match.arguments[0]: a predicate needs an operator"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      arguments:\n        - {pointer: "
       "/a, \">\": lots}\n",
       "rules[0].match.arguments[0].>: expected a number"},
      {"rules:\n  - id: a\n    effect: deny\n    match:\n      arguments:\n        - {pointer: "
       "/a, matches: x}\n",
       "rules[0].match.arguments[0]: unknown key 'matches'"},
      {"rules:\n  - id: a\n    effect: deny\n    time_window: {days: [mon-fry]}\n",
       "rules[0].time_window.days: expected a day"},
      {"rules:\n  - id: a\n    effect: deny\n    time_window: {hours: \"9-17\"}\n",
       "rules[0].time_window.hours: expected a range of local times"},
      {"rules:\n  - id: a\n    effect: deny\n    rate_limit: {max: -1, per: 1m}\n",
       "rules[0].rate_limit.max: expected a non-negative integer"},
      {"rules:\n  - id: a\n    effect: deny\n    budget: {max: 5, scope: tenant}\n",
       "rules[0].budget.scope: expected session, agent or global"},
      {"rules:\n  - id: a\n    effect: deny\n    budget: {max: 5, per: 1m}\n",
       "rules[0].budget: unknown key 'per'"},
      {"rules:\n  - id: a\n    effect: deny\n    unless: {}\n", "rules[0].unless: an empty"},
      {"default: maybe\n", "1:10: default: expected allow, deny or require_approval"},
      {"version: 2\n", "1:10: version: unsupported policy format version"},
      {"rules: {}\n", "rules: expected a list of rules"},
      {"- a\n- b\n", "1:1: expected a mapping"},
      {"", "the policy is empty"},
      {"# only a comment\n", "the policy is empty"},
      {"rules: [\n", "end of sequence flow not found"},
      {"rules: []\n---\nrules: []\n", "2:1: more than one YAML document"},
      {"rules: &r [*r]\n", "alias refers to a node that contains it"},
      {"rules: !custom []\n", "1:8: unsupported YAML tag"},
      {std::string(200, '[') + std::string(200, ']'), "nested deeper than 64 levels"},
      {std::string(100'000, '['), "nested deeper than 64 levels"},
  };
  for (const ErrorCase& c : cases) {
    EXPECT_THAT(ErrorOf(c.yaml), HasSubstr(c.expected)) << c.yaml.substr(0, 200);
  }
  // Deep block nesting ("- - - - ...") is caught the same way.
  std::string deep;
  for (int i = 0; i < 5000; ++i) deep += "- ";
  EXPECT_THAT(ErrorOf(deep + "x\n"), HasSubstr("nested deeper than 64 levels"));
}

TEST(CompileTest, ErrorsStartWithTheSourceName) {
  EXPECT_THAT(ErrorOf("rules:\n  - id: a\n    effect: nope\n", "/etc/toolgate/policy.yaml"),
              StartsWith("/etc/toolgate/policy.yaml:3:13: rules[0].effect:"));
  EXPECT_THAT(ErrorOf("rules: [\n", "p.yaml"), StartsWith("p.yaml:"));
}

TEST(CompileTest, AliasExpansionIsBounded) {
  // "Billion laughs": each level doubles the size of the document.
  std::string yaml = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 30; ++i) {
    absl::StrAppend(&yaml, "a", i, ": &a", i, " [*a", i - 1, ", *a", i - 1, ", *a", i - 1, ", *a",
                    i - 1, "]\n");
  }
  EXPECT_THAT(ErrorOf(yaml), HasSubstr("nodes (aliases included)"));
}

TEST(CompileTest, OversizedInputIsRejected) {
  EXPECT_THAT(ErrorOf(std::string(kMaxPolicyBytes + 1, ' ')), HasSubstr("larger than"));
}

// ---------------------------------------------------------------------------------------------
// The worked examples of docs/policy.md behave as the page says.

Effect Decide(const RuleSet& set, const std::string& tool, const char* args_json,
              const char* tool_type = "", const char* operation = "", const char* target = "") {
  const Json args = Json::parse(args_json);
  Action a = ToolCall(tool, &args);
  a.tool_type = tool_type;
  a.operation = operation;
  a.target_system = target;
  return set.Evaluate(a, nullptr, kNow).effect;
}

TEST(DocsExamplesTest, ShellCommands) {
  auto set = MustCompile(R"(
rules:
  - id: deny-rm-rf
    effect: deny
    reason: recursive delete
    match:
      tool_type: shell
      arguments:
        - {pointer: /command, regex: '\brm\s+(-\S+\s+)*(-[a-zA-Z]*[rR]|--recursive)'}
  - id: approve-sudo
    effect: require_approval
    reason: privileged command
    approval_timeout: 10m
    on_timeout: deny
    match:
      tool_type: shell
      arguments:
        - {pointer: /command, regex: '(^|[;&|]\s*)sudo\b'}
)");
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "sudo rm -rf /"})", "shell"), Effect::kDeny);
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "rm -fr build"})", "shell"), Effect::kDeny);
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "rm -r -f x"})", "shell"), Effect::kDeny);
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "rm -f --recursive x"})", "shell"), Effect::kDeny);
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "rm -f notes.txt"})", "shell"), Effect::kAllow);
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "cd /; sudo ls"})", "shell"),
            Effect::kRequireApproval);
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "echo pseudosudo"})", "shell"), Effect::kAllow);
  EXPECT_EQ(Decide(*set, "bash", R"({"command": "rm -rf /"})", "http"), Effect::kAllow);
}

TEST(DocsExamplesTest, PaymentsEmailAndProductionDeletes) {
  auto payments = MustCompile(R"(
rules:
  - id: approve-large-payments
    effect: require_approval
    match:
      tool_name: ["stripe_create_payment", "pay_*"]
      arguments:
        - {pointer: /amount, ">": 1000}
  - id: deny-payments-without-amount
    effect: deny
    match:
      tool_name: ["stripe_create_payment", "pay_*"]
      arguments:
        - {pointer: /amount, exists: false}
)");
  EXPECT_EQ(Decide(*payments, "pay_invoice", R"({"amount": 2500})"), Effect::kRequireApproval);
  EXPECT_EQ(Decide(*payments, "pay_invoice", R"({"amount": "2500"})"), Effect::kRequireApproval);
  EXPECT_EQ(Decide(*payments, "pay_invoice", R"({"amount": 999})"), Effect::kAllow);
  EXPECT_EQ(Decide(*payments, "pay_invoice", R"({})"), Effect::kDeny);

  auto email = MustCompile(R"(
rules:
  - id: approve-external-email
    effect: require_approval
    match:
      tool_name: [send_email, gmail_send]
      arguments:
        - {pointer: /to, not_regex: '@(example\.com|example\.org)$'}
)");
  EXPECT_EQ(Decide(*email, "send_email", R"({"to": "boss@example.com"})"), Effect::kAllow);
  EXPECT_EQ(Decide(*email, "send_email", R"({"to": "x@gmail.com"})"), Effect::kRequireApproval);
  EXPECT_EQ(Decide(*email, "send_email", R"({"to": ["a@example.org", "x@gmail.com"]})"),
            Effect::kRequireApproval);

  auto deletes = MustCompile(R"(
rules:
  - id: no-prod-deletes
    effect: deny
    match:
      operation: [delete, drop, truncate]
      target_system: "prod-*"
)");
  EXPECT_EQ(Decide(*deletes, "sql", "{}", "", "delete", "prod-eu-1"), Effect::kDeny);
  EXPECT_EQ(Decide(*deletes, "sql", "{}", "", "delete", "staging-1"), Effect::kAllow);
  EXPECT_EQ(Decide(*deletes, "sql", "{}", "", "select", "prod-eu-1"), Effect::kAllow);
}

// ---------------------------------------------------------------------------------------------
// The hot path does not allocate.

TEST(EvaluateTest, DoesNotAllocate) {
  auto set = MustCompile(R"(
rules:
  - {id: a, effect: deny, match: {tool_name: [shell, "exec_*", "*_delete"]}}
  - {id: b, effect: require_approval,
     match: {tool_name: pay, arguments: [{pointer: /amount, ">": 1000}]}}
  - {id: c, effect: deny, match: {arguments: [{pointer: /command, regex: "rm\\s+-rf"}]}}
  - {id: d, effect: deny, match: {tool_name: "export_*"}, rate_limit: {max: 5, per: 1m}}
  - {id: e, effect: deny, time_window: {timezone: Europe/Paris, hours: "02:00-03:00"}}
  - {id: f, effect: deny, match: {tool_name: very_long_tool_name_that_is_not_in_sso_buffers}}
)");
  RateState state;
  const Json args = Json::parse(R"({"amount": 5000, "command": "rm -rf /"})");
  Action a = ToolCall("export_all_customers_to_a_very_long_named_destination", &args);
  a.session_id = "c4a760a8-dbcf-4e2f-9bd9-0c8b7b33d1a1";
  set->Evaluate(a, &state, kNow);  // creates the rate counter, warms RE2's cache
  for (const char* tool : {"shell", "exec_x", "s3_delete", "pay", "export_x", "other",
                           "very_long_tool_name_that_is_not_in_sso_buffers"}) {
    a.tool_name = tool;
    set->Evaluate(a, &state, kNow);
  }
  std::vector<Action> actions;
  for (const char* tool : {"shell", "exec_x", "s3_delete", "pay", "other", "export_x",
                           "very_long_tool_name_that_is_not_in_sso_buffers"}) {
    a.tool_name = tool;
    actions.push_back(a);
  }
  // The counter itself works.
  g_allocations = 0;
  g_count_allocations = true;
  std::string* volatile probe = new std::string(100, 'x');
  g_count_allocations = false;
  delete probe;
  ASSERT_GT(g_allocations, 0u);

  g_allocations = 0;
  g_count_allocations = true;
  for (int i = 0; i < 100; ++i) {
    for (const Action& act : actions) set->Evaluate(act, &state, kNow + seconds(i));
  }
  g_count_allocations = false;
  EXPECT_EQ(g_allocations, 0u);
}

}  // namespace
}  // namespace toolgate::policy
