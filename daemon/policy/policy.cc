#include "daemon/policy/policy.h"

#include <re2/re2.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "daemon/common/crypto.h"
#include "daemon/policy/glob.h"
#include "daemon/policy/key_table.h"
#include "daemon/policy/yaml_tree.h"

namespace toolgate::policy {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kDefaultReason = "no rule matched";
constexpr std::string_view kStrTag = "tag:yaml.org,2002:str";
constexpr size_t kMaxRegexBytes = 4096;
constexpr size_t kMaxIdBytes = 128;

// Debian's Abseil has its own string_view type, distinct from std::string_view.
absl::string_view A(std::string_view s) { return absl::string_view(s.data(), s.size()); }
std::string_view S(absl::string_view s) { return std::string_view(s.data(), s.size()); }

// ---------------------------------------------------------------------------------------------
// Action fields.

enum Field : int {
  kAgentId,
  kToolName,
  kToolType,
  kOperation,
  kTargetSystem,
  kInitiatorType,
  kInitiatorId,
  kNumFields
};

constexpr std::string_view kFieldNames[kNumFields] = {
    "agent_id",      "tool_name",      "tool_type",   "operation",
    "target_system", "initiator_type", "initiator_id"};

// The order in which a rule's conditions are considered for filing it in the index (ties go to
// the earlier one; see ChooseIndexField).
constexpr Field kIndexPriority[] = {kToolName, kAgentId,     kOperation,    kTargetSystem,
                                    kToolType, kInitiatorId, kInitiatorType};

std::string_view FieldValue(const Action& a, int f) {
  switch (f) {
    case kAgentId:
      return a.agent_id;
    case kToolName:
      return a.tool_name;
    case kToolType:
      return a.tool_type;
    case kOperation:
      return a.operation;
    case kTargetSystem:
      return a.target_system;
    case kInitiatorType:
      return a.initiator_type;
    case kInitiatorId:
      return a.initiator_id;
  }
  return {};
}

int Rank(Effect e) {
  switch (e) {
    case Effect::kAllow:
      return 0;
    case Effect::kRequireApproval:
      return 1;
    case Effect::kDeny:
      return 2;
  }
  return 0;
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t len;
    const uint32_t cp = DecodeUtf8(s, i, &len);
    if (len == 1 && cp >= 0xDC80 && cp <= 0xDCFF) return false;
    i += len;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// String conditions: a list of globs (plain strings are globs without operators), any of which
// may match.

class StringMatcher {
 public:
  void Add(Glob g) {
    const auto pos = static_cast<uint32_t>(patterns_.size());
    if (g.is_literal()) {
      literals_.push_back(pos);
    } else {
      globs_.push_back(pos);
    }
    if (g.matches_everything()) matches_everything_ = true;
    patterns_.push_back(std::move(g));
  }

  // Long lists of plain values are searched by binary search instead of one by one.
  void Finish() {
    if (literals_.size() <= 8) return;
    for (uint32_t pos : literals_) sorted_.emplace_back(patterns_[pos].literal_prefix(), pos);
    std::stable_sort(sorted_.begin(), sorted_.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
  }

  // Position of the first pattern (in file order) that matches `v`, or -1.
  int FirstMatch(std::string_view v) const {
    int best = -1;
    if (!sorted_.empty()) {
      auto it = std::lower_bound(sorted_.begin(), sorted_.end(), v,
                                 [](const std::pair<std::string, uint32_t>& e, std::string_view x) {
                                   return e.first < x;
                                 });
      if (it != sorted_.end() && it->first == v) best = static_cast<int>(it->second);
    } else {
      for (uint32_t pos : literals_) {
        if (patterns_[pos].literal_prefix() == v) {
          best = static_cast<int>(pos);
          break;
        }
      }
    }
    for (uint32_t pos : globs_) {
      if (best >= 0 && static_cast<int>(pos) > best) break;
      if (patterns_[pos].Matches(v)) return static_cast<int>(pos);
    }
    return best;
  }

  bool Matches(std::string_view v) const { return FirstMatch(v) >= 0; }
  bool matches_everything() const { return matches_everything_; }
  const std::vector<Glob>& patterns() const { return patterns_; }

 private:
  std::vector<Glob> patterns_;
  std::vector<uint32_t> literals_;                        // positions of plain values, ascending
  std::vector<uint32_t> globs_;                           // positions of globs, ascending
  std::vector<std::pair<std::string, uint32_t>> sorted_;  // plain values, sorted (long lists)
  bool matches_everything_ = false;
};

// ---------------------------------------------------------------------------------------------
// Argument predicates.

struct Pointer {
  std::string text;
  std::vector<std::string> tokens;
  std::vector<int64_t> indices;  // the token as an array index, or -1 if it cannot be one
};

// RFC 6901 evaluation, without exceptions or allocation. nullptr when the value is absent.
const Json* Resolve(const Json* root, const Pointer& p) {
  const Json* cur = root;
  for (size_t i = 0; cur != nullptr && i < p.tokens.size(); ++i) {
    if (cur->is_object()) {
      auto it = cur->find(p.tokens[i]);
      cur = it == cur->end() ? nullptr : &*it;
    } else if (cur->is_array()) {
      const int64_t idx = p.indices[i];
      cur = idx < 0 || static_cast<uint64_t>(idx) >= cur->size()
                ? nullptr
                : &(*cur)[static_cast<size_t>(idx)];
    } else {
      cur = nullptr;
    }
  }
  return cur;
}

enum class CmpOp { kLt, kLe, kGt, kGe };

struct Comparison {
  CmpOp op;
  double value;
  bool integral;      // value is an integer that fits int64_t: compared exactly with integers
  int64_t int_value;  // when integral
};

template <typename T>
bool Compare(CmpOp op, T a, T b) {
  switch (op) {
    case CmpOp::kLt:
      return a < b;
    case CmpOp::kLe:
      return a <= b;
    case CmpOp::kGt:
      return a > b;
    case CmpOp::kGe:
      return a >= b;
  }
  return false;
}

// A numeric string ("1500", "-2.5e3") as a finite double. Used so that an amount sent as a
// string cannot slip past a numeric limit.
bool ParseNumericString(std::string_view s, double* out) {
  if (s.empty() || s.size() > 64 || s[0] == '+') return false;
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, *out, std::chars_format::general);
  return ec == std::errc() && ptr == end && std::isfinite(*out);
}

bool CompareJson(const Json& v, const Comparison& c) {
  switch (v.type()) {
    case Json::value_t::number_integer: {
      const int64_t x = v.get_ref<const Json::number_integer_t&>();
      return c.integral ? Compare(c.op, x, c.int_value)
                        : Compare(c.op, static_cast<double>(x), c.value);
    }
    case Json::value_t::number_unsigned: {
      const uint64_t x = v.get_ref<const Json::number_unsigned_t&>();
      if (c.integral) {
        if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return c.op == CmpOp::kGt || c.op == CmpOp::kGe;  // x exceeds every int64_t
        }
        return Compare(c.op, static_cast<int64_t>(x), c.int_value);
      }
      return Compare(c.op, static_cast<double>(x), c.value);
    }
    case Json::value_t::number_float: {
      const double x = v.get_ref<const Json::number_float_t&>();
      return !std::isnan(x) && Compare(c.op, x, c.value);
    }
    case Json::value_t::string: {
      double x;
      return ParseNumericString(v.get_ref<const Json::string_t&>(), &x) &&
             Compare(c.op, x, c.value);
    }
    default:
      return false;
  }
}

struct Predicate {
  Pointer pointer;
  int exists = -1;  // -1: no `exists`; 0: must be absent; 1: must be present
  bool has_equals = false;
  Json equals;
  bool has_in = false;
  std::vector<Json> in;
  // Element operators: on an array value, some single element must satisfy all of them.
  std::unique_ptr<RE2> regex;
  std::unique_ptr<RE2> not_regex;
  std::vector<Comparison> comparisons;

  bool has_value_ops() const {
    return has_equals || has_in || regex != nullptr || not_regex != nullptr || !comparisons.empty();
  }
  bool has_element_ops() const {
    return regex != nullptr || not_regex != nullptr || !comparisons.empty();
  }

  bool ElementHolds(const Json& v) const {
    if (regex != nullptr || not_regex != nullptr) {
      if (!v.is_string()) return false;
      const std::string& s = v.get_ref<const std::string&>();
      const re2::StringPiece text(s.data(), s.size());
      if (regex != nullptr && !RE2::PartialMatch(text, *regex)) return false;
      if (not_regex != nullptr && RE2::PartialMatch(text, *not_regex)) return false;
    }
    for (const Comparison& c : comparisons) {
      if (!CompareJson(v, c)) return false;
    }
    return true;
  }

  bool Holds(const Json* arguments) const {
    const Json* v = arguments == nullptr ? nullptr : Resolve(arguments, pointer);
    if (exists >= 0 && (v != nullptr) != (exists == 1)) return false;
    if (!has_value_ops()) return true;
    if (v == nullptr) return false;
    if (has_equals && *v != equals) return false;
    if (has_in && std::none_of(in.begin(), in.end(), [v](const Json& x) { return *v == x; })) {
      return false;
    }
    if (!has_element_ops()) return true;
    if (v->is_array()) {
      for (const Json& e : *v) {
        if (ElementHolds(e)) return true;
      }
      return false;
    }
    return ElementHolds(*v);
  }
};

// ---------------------------------------------------------------------------------------------
// Time windows, rate limits, budgets.

struct TimeWindow {
  absl::TimeZone zone;
  uint8_t days = 0x7F;                     // bit 0 = Monday ... bit 6 = Sunday
  std::vector<std::pair<int, int>> hours;  // [start, end) in minutes; end < start wraps midnight
  bool outside = false;

  bool Holds(SystemTime now) const {
    const absl::TimeZone::CivilInfo ci = zone.At(absl::FromChrono(now));
    const int weekday = static_cast<int>(absl::GetWeekday(absl::CivilDay(ci.cs)));
    const int minute = ci.cs.hour() * 60 + ci.cs.minute();
    bool inside = ((days >> weekday) & 1) != 0;
    if (inside && !hours.empty()) {
      inside = std::any_of(hours.begin(), hours.end(), [minute](const std::pair<int, int>& h) {
        return h.first < h.second ? minute >= h.first && minute < h.second
                                  : minute >= h.first || minute < h.second;
      });
    }
    return inside != outside;
  }
};

enum class Scope { kSession, kAgent, kGlobal };

std::string_view ScopeKey(const Action& a, Scope s) {
  switch (s) {
    case Scope::kSession:
      return a.session_id;
    case Scope::kAgent:
      return a.agent_id;
    case Scope::kGlobal:
      return {};
  }
  return {};
}

struct CounterSpec {
  uint64_t max = 0;
  std::chrono::nanoseconds per{0};  // rate limits only
  Scope scope = Scope::kSession;
  uint64_t id = 0;  // RateState counter id: stable across reloads for the same rule and shape
};

uint64_t Fnv1a(std::string_view s, uint64_t h = 14695981039346656037ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
// Compiled rules.

struct Conditions {
  std::vector<std::pair<int, StringMatcher>> fields;  // (Field, matcher)
  std::vector<Predicate> arguments;
  int tool_in_snapshot = -1;  // -1: no condition; 0/1: the tool must (not) be in the snapshot

  bool empty() const { return fields.empty() && arguments.empty() && tool_in_snapshot < 0; }
  const StringMatcher* field(int f) const {
    for (const auto& [ff, m] : fields) {
      if (ff == f) return &m;
    }
    return nullptr;
  }
  // All conditions hold; the field `skip` (already checked by the index) is not re-checked.
  bool Holds(const Action& a, int skip) const {
    for (const auto& [f, m] : fields) {
      if (f != skip && !m.Matches(FieldValue(a, f))) return false;
    }
    for (const Predicate& p : arguments) {
      if (!p.Holds(a.arguments.get())) return false;
    }
    if (tool_in_snapshot >= 0) {
      const bool in = a.registered_tools != nullptr && a.registered_tools->Has(a.tool_name);
      if (in != (tool_in_snapshot == 1)) return false;
    }
    return true;
  }
};

struct CompiledRule {
  Conditions match;
  bool has_unless = false;
  Conditions unless;
  bool has_window = false;
  TimeWindow window;
  bool has_rate = false;
  CounterSpec rate;
  bool has_budget = false;
  CounterSpec budget;
  int index_field = -1;  // the field this rule is filed under, -1 = not indexed
};

struct IndexEntry {
  uint32_t rule;
  uint32_t pattern;  // position of the pattern in the rule's matcher for the field
  // The bucket lookup alone proves the condition (a rule with one pattern that is a plain value,
  // "prefix*" or "*suffix"), so the pattern is not tested again.
  bool proven;
};

struct FieldIndex {
  // Keys view strings owned by the compiled rules (which never move once indexed).
  KeyTable<IndexEntry> exact;    // plain values
  KeyTable<IndexEntry> prefix;   // globs by their literal prefix
  KeyTable<IndexEntry> suffix;   // globs without a literal prefix, by their literal suffix
  std::vector<IndexEntry> scan;  // globs with neither a literal prefix nor suffix

  bool empty() const { return exact.empty() && prefix.empty() && suffix.empty() && scan.empty(); }
};

}  // namespace

struct RuleSet::Impl {
  std::string source_name;
  std::string revision;
  Effect default_effect = Effect::kAllow;
  std::vector<Rule> rules;
  std::vector<CompiledRule> compiled;
  std::unordered_map<std::string_view, size_t> by_id;  // views Rule::id
  FieldIndex index[kNumFields];
  std::vector<int> indexed_fields;  // fields whose index is not empty
  std::vector<uint32_t> unindexed;  // rules without any string condition
  // What the evaluation needs first about each rule, packed densely.
  struct Head {
    int8_t rank;  // deny 2 > require_approval 1 > allow 0
    bool shadow;
    bool counts;  // has a rate limit or a budget
  };
  std::vector<Head> heads;

  void BuildIndex();
};

namespace {

bool Indexable(const StringMatcher& m) {
  return std::all_of(m.patterns().begin(), m.patterns().end(), [](const Glob& g) {
    return g.is_literal() || !g.literal_prefix().empty() || !g.literal_suffix().empty();
  });
}

// How many rules already sit in the buckets this matcher's patterns would join: a rule is filed
// where it crowds the index least, so that no bucket (examined by every action that reaches it)
// grows with the rule count when another condition of the rule could have been used instead.
size_t BucketLoad(const FieldIndex& fi, const StringMatcher& m) {
  size_t load = 0;
  for (const Glob& g : m.patterns()) {
    const auto& table = g.is_literal()                ? fi.exact
                        : !g.literal_prefix().empty() ? fi.prefix
                                                      : fi.suffix;
    const std::string& key =
        g.is_literal() || !g.literal_prefix().empty() ? g.literal_prefix() : g.literal_suffix();
    if (const auto* list = table.Get(key)) load += list->size();
  }
  return load;
}

// Chooses the condition a rule is filed under: among its conditions whose every pattern has a
// literal part to index by, the one with the least crowded buckets (ties: kIndexPriority order);
// failing that, its first condition in kIndexPriority order (filed in the scan list); -1 if the
// rule has no string condition.
int ChooseIndexField(const CompiledRule& r, const FieldIndex* index) {
  int fallback = -1;
  int best = -1;
  size_t best_load = 0;
  for (Field f : kIndexPriority) {
    const StringMatcher* m = r.match.field(f);
    if (m == nullptr) continue;
    if (fallback < 0) fallback = f;
    if (!Indexable(*m)) continue;
    const size_t load = BucketLoad(index[f], *m);
    if (best < 0 || load < best_load) {
      best = f;
      best_load = load;
    }
  }
  return best >= 0 ? best : fallback;
}

}  // namespace

void RuleSet::Impl::BuildIndex() {
  for (size_t i = 0; i < rules.size(); ++i) by_id.emplace(rules[i].id, i);
  for (uint32_t r = 0; r < compiled.size(); ++r) {
    CompiledRule& c = compiled[r];
    heads.push_back(
        {static_cast<int8_t>(Rank(rules[r].effect)), rules[r].shadow, c.has_rate || c.has_budget});
    c.index_field = ChooseIndexField(c, index);
    if (c.index_field < 0) {
      unindexed.push_back(r);
      continue;
    }
    FieldIndex& fi = index[c.index_field];
    const auto& patterns = c.match.field(c.index_field)->patterns();
    const bool single = patterns.size() == 1;
    for (uint32_t p = 0; p < patterns.size(); ++p) {
      const Glob& g = patterns[p];
      if (g.is_literal()) {
        fi.exact.At(g.literal_prefix()).push_back({r, p, single});
      } else if (!g.literal_prefix().empty()) {
        fi.prefix.At(g.literal_prefix()).push_back({r, p, single && g.is_prefix_only()});
      } else if (!g.literal_suffix().empty()) {
        fi.suffix.At(g.literal_suffix()).push_back({r, p, single && g.is_suffix_only()});
      } else {
        fi.scan.push_back({r, p, false});
      }
    }
  }
  for (int f = 0; f < kNumFields; ++f) {
    index[f].exact.Finish(/*backward=*/false);
    index[f].prefix.Finish(/*backward=*/false);
    index[f].suffix.Finish(/*backward=*/true);
    if (!index[f].empty()) indexed_fields.push_back(f);
  }
}

RuleSet::RuleSet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RuleSet::~RuleSet() = default;
const std::string& RuleSet::revision() const { return impl_->revision; }
const std::string& RuleSet::source_name() const { return impl_->source_name; }
Effect RuleSet::default_effect() const { return impl_->default_effect; }
size_t RuleSet::size() const { return impl_->rules.size(); }
const Rule& RuleSet::rule(size_t index) const { return impl_->rules[index]; }
const Rule* RuleSet::FindRule(std::string_view id) const {
  auto it = impl_->by_id.find(id);
  return it == impl_->by_id.end() ? nullptr : &impl_->rules[it->second];
}

std::string_view EffectName(Effect effect) {
  switch (effect) {
    case Effect::kAllow:
      return "allow";
    case Effect::kDeny:
      return "deny";
    case Effect::kRequireApproval:
      return "require_approval";
  }
  return "allow";
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

namespace {

// The best matching rule so far: highest rank, then lowest index.
struct Best {
  int rank = -1;
  uint32_t rule = 0;
  bool Improves(int r, uint32_t index) const { return r > rank || (r == rank && index < rule); }
};

class Evaluation {
 public:
  Evaluation(const RuleSet::Impl& set, const Action& a, RateState* state, SystemTime now)
      : set_(set), a_(a), state_(state), now_(now) {}

  Decision Run() {
    for (int f : set_.indexed_fields) {
      const FieldIndex& fi = set_.index[f];
      const std::string_view v = FieldValue(a_, f);
      using Table = KeyTable<IndexEntry>;
      // One pass over the value hashes all its prefixes; the last one is the value itself.
      uint64_t h = Table::kSeed;
      const std::vector<size_t>& prefix_lengths = fi.prefix.lengths();
      size_t next = 0;
      for (size_t i = 0; i < v.size(); ++i) {
        if (next == prefix_lengths.size() && fi.exact.empty()) break;
        h = Table::Step(h, static_cast<unsigned char>(v[i]));
        if (next < prefix_lengths.size() && i + 1 == prefix_lengths[next]) {
          ++next;
          if (const auto* list = fi.prefix.Find(v.substr(0, i + 1), h)) Visit(*list, f, v);
        }
      }
      if (!fi.exact.empty()) {  // then the loop above ran to the end: h is the value's hash
        if (const auto* list = fi.exact.Find(v, h)) Visit(*list, f, v);
      }
      const std::vector<size_t>& suffix_lengths = fi.suffix.lengths();
      h = Table::kSeed;
      next = 0;
      for (size_t i = 0; i < v.size() && next < suffix_lengths.size(); ++i) {
        h = Table::Step(h, static_cast<unsigned char>(v[v.size() - 1 - i]));
        if (i + 1 == suffix_lengths[next]) {
          ++next;
          if (const auto* list = fi.suffix.Find(v.substr(v.size() - i - 1), h)) {
            Visit(*list, f, v);
          }
        }
      }
      Visit(fi.scan, f, v);
    }
    for (uint32_t r : set_.unindexed) Consider(r, -1);

    Decision d;
    if (best_.rank >= 0) {
      const Rule& r = set_.rules[best_.rule];
      d.effect = r.effect;
      d.rule = &r;
      d.rule_id = r.id;
      d.reason = r.reason;
    } else {
      d.effect = set_.default_effect;
      d.reason = kDefaultReason;
    }
    if (shadow_.rank >= 0) {
      const Rule& r = set_.rules[shadow_.rule];
      d.shadow = true;
      d.shadow_effect = r.effect;
      d.shadow_rule_id = r.id;
      d.shadow_rule = &r;
    }
    return d;
  }

 private:
  // A rule can be filed under several patterns of its indexed field, and several of those may
  // match one value; it is considered only from the first pattern that matches, so that it is
  // evaluated (and its counters counted) once.
  void Visit(const std::vector<IndexEntry>& entries, int f, std::string_view v) {
    for (const IndexEntry& e : entries) {
      if (!Wanted(e.rule)) continue;
      if (!e.proven) {
        const StringMatcher* m = set_.compiled[e.rule].match.field(f);
        if (m->FirstMatch(v) != static_cast<int>(e.pattern)) continue;
      }
      Consider(e.rule, f);
    }
  }

  // False when the rule cannot change the answer: it could not beat the best match so far and
  // has no counter that must count the call.
  bool Wanted(uint32_t r) const {
    const RuleSet::Impl::Head& h = set_.heads[r];
    return h.counts || (h.shadow ? shadow_ : best_).Improves(h.rank, r);
  }

  void Consider(uint32_t r, int checked_field) {
    const CompiledRule& c = set_.compiled[r];
    const RuleSet::Impl::Head& h = set_.heads[r];
    Best& best = h.shadow ? shadow_ : best_;
    const int rank = h.rank;
    const bool counts = h.counts;
    // A rule that could not win is skipped, unless it must count the call.
    if (!counts && !best.Improves(rank, r)) return;
    if (!c.match.Holds(a_, checked_field)) return;
    if (c.has_window && !c.window.Holds(now_)) return;
    if (c.has_unless && c.unless.Holds(a_, -1)) return;
    if (counts) {
      if (state_ == nullptr) return;
      bool exceeded = true;
      if (c.has_rate) {
        const double n =
            state_->CountInWindow(c.rate.id, ScopeKey(a_, c.rate.scope), c.rate.per, now_);
        exceeded = n > static_cast<double>(c.rate.max);
      }
      if (c.has_budget) {
        const uint64_t n = state_->CountTotal(c.budget.id, ScopeKey(a_, c.budget.scope), now_);
        exceeded = exceeded && n > c.budget.max;
      }
      if (!exceeded || !best.Improves(rank, r)) return;
    }
    best.rank = rank;
    best.rule = r;
  }

  const RuleSet::Impl& set_;
  const Action& a_;
  RateState* const state_;
  const SystemTime now_;
  Best best_;
  Best shadow_;
};

}  // namespace

Decision RuleSet::Evaluate(const Action& action, RateState* state, SystemTime now) const {
  return Evaluation(*impl_, action, state, now).Run();
}

// ---------------------------------------------------------------------------------------------
// Compilation.

namespace {

bool IsPlainNull(const YamlNode& n) {
  return n.IsNull() ||
         (n.IsScalar() && n.style == YamlNode::Style::kPlain && n.tag.empty() &&
          (n.scalar == "~" || n.scalar == "null" || n.scalar == "Null" || n.scalar == "NULL"));
}

// Durations: one or more NUMBER UNIT pairs, units ms, s, m, h, d ("90s", "1h30m").
absl::StatusOr<std::chrono::nanoseconds> ParseDuration(std::string_view s) {
  constexpr std::string_view kExpected = "expected a duration such as 500ms, 30s, 5m, 1h or 1h30m";
  if (s.empty()) return absl::InvalidArgumentError(A(kExpected));
  int64_t total_ms = 0;
  size_t i = 0;
  while (i < s.size()) {
    const size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start || i - start > 9) return absl::InvalidArgumentError(A(kExpected));
    int64_t n = 0;
    std::from_chars(s.data() + start, s.data() + i, n);
    const size_t unit_start = i;
    while (i < s.size() && s[i] >= 'a' && s[i] <= 'z') ++i;
    const std::string_view unit = s.substr(unit_start, i - unit_start);
    int64_t ms;
    if (unit == "ms") {
      ms = 1;
    } else if (unit == "s") {
      ms = 1000;
    } else if (unit == "m") {
      ms = 60'000;
    } else if (unit == "h") {
      ms = 3'600'000;
    } else if (unit == "d") {
      ms = 86'400'000;
    } else {
      return absl::InvalidArgumentError(
          unit.empty() ? std::string(kExpected)
                       : absl::StrCat("unknown duration unit '", A(unit), "' (ms, s, m, h, d)"));
    }
    total_ms += n * ms;
    if (total_ms > 366LL * 86'400'000) {
      return absl::InvalidArgumentError("duration longer than 366 days");
    }
  }
  return std::chrono::milliseconds(total_ms);
}

// The JSON value of a YAML node, typed as YAML 1.2's core schema types plain scalars: null,
// true/false, integers (decimal, 0x, 0o), floats; anything else, and every quoted scalar, is a
// string.
absl::StatusOr<Json> PlainScalarToJson(const YamlNode& n) {
  const std::string& s = n.scalar;
  const std::string_view tag = n.tag;
  const bool plain = n.style == YamlNode::Style::kPlain;
  if (tag == kStrTag || (!plain && tag.empty())) return Json(s);
  if (IsPlainNull(n) || tag == "tag:yaml.org,2002:null") return Json(nullptr);
  if (s == "true" || s == "True" || s == "TRUE") return Json(true);
  if (s == "false" || s == "False" || s == "FALSE") return Json(false);
  // Integers.
  {
    std::string_view t = s;
    bool negative = false;
    if (!t.empty() && (t[0] == '-' || t[0] == '+')) {
      negative = t[0] == '-';
      t.remove_prefix(1);
    }
    int base = 10;
    if (t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'o')) {
      base = t[1] == 'x' ? 16 : 8;
      t.remove_prefix(2);
    }
    if (!t.empty() && std::all_of(t.begin(), t.end(), [base](char c) {
          return base == 16 ? std::isxdigit(static_cast<unsigned char>(c)) != 0
                            : c >= '0' && c <= (base == 8 ? '7' : '9');
        })) {
      uint64_t u = 0;
      auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), u, base);
      if (ec == std::errc() && ptr == t.data() + t.size()) {
        if (!negative) {
          if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            return Json(static_cast<int64_t>(u));
          }
          return Json(u);
        }
        if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + 1) {
          return Json(static_cast<int64_t>(0 - u));
        }
      }
      if (base == 10) {  // out of range: a float, as JSON readers do
        double d;
        if (ParseNumericString(s[0] == '+' ? std::string_view(s).substr(1) : s, &d)) {
          return Json(d);
        }
      }
    }
  }
  // Floats ("1.5", "-2e3", ".5"); .inf and .nan stay strings (JSON has no such numbers).
  {
    std::string_view t = s;
    if (!t.empty() && t[0] == '+') t.remove_prefix(1);
    const bool looks_numeric = !t.empty() && std::all_of(t.begin(), t.end(), [](char c) {
      return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+';
    }) && std::any_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; });
    double d;
    if (looks_numeric && ParseNumericString(t, &d)) return Json(d);
  }
  if (tag == "tag:yaml.org,2002:int" || tag == "tag:yaml.org,2002:float") {
    return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not a number"));
  }
  if (tag == "tag:yaml.org,2002:bool") {
    return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not true or false"));
  }
  return Json(s);
}

struct DayName {
  std::string_view short_name, long_name;
};
constexpr DayName kDays[] = {{"mon", "monday"},   {"tue", "tuesday"}, {"wed", "wednesday"},
                             {"thu", "thursday"}, {"fri", "friday"},  {"sat", "saturday"},
                             {"sun", "sunday"}};

int ParseDay(std::string_view s) {
  const std::string lower = absl::AsciiStrToLower(A(s));
  for (int i = 0; i < 7; ++i) {
    if (lower == kDays[i].short_name || lower == kDays[i].long_name) return i;
  }
  return -1;
}

// "HH:MM" (00:00 to 24:00) as minutes, or -1.
int ParseClock(std::string_view s) {
  if (s.size() != 5 || s[2] != ':') return -1;
  for (int i : {0, 1, 3, 4}) {
    if (s[i] < '0' || s[i] > '9') return -1;
  }
  const int h = (s[0] - '0') * 10 + (s[1] - '0');
  const int m = (s[3] - '0') * 10 + (s[4] - '0');
  if (m > 59 || h > 24 || (h == 24 && m != 0)) return -1;
  return h * 60 + m;
}

bool ValidZoneName(std::string_view z) {
  if (z.empty() || z.size() > 64 || z[0] == '/' || z.find("..") != std::string_view::npos) {
    return false;
  }
  return std::all_of(z.begin(), z.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '_' || c == '-' ||
           c == '+';
  });
}

bool ValidRuleId(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
           c == ':' || c == '/';
  });
}

class Compiler {
 public:
  Compiler(std::string_view source_name, RuleSet::Impl* out) : source_(source_name), out_(out) {}

  absl::Status Compile(const YamlNode& root, std::string_view text) {
    if (root.IsNull()) {
      return Err(root, "", "the policy is empty (write `rules: []` for a policy without rules)");
    }
    if (absl::Status s = CheckTags(root, "", 0); !s.ok()) return s;
    if (absl::Status s =
            CheckKeys(root, "", {"version", "revision", "description", "default", "rules"});
        !s.ok()) {
      return s;
    }
    if (const YamlNode* n = Get(root, "version")) {
      if (!n->IsScalar() || n->scalar != "1") {
        return Err(*n, "version", "unsupported policy format version (this daemon reads 1)");
      }
    }
    if (const YamlNode* n = Get(root, "revision")) {
      auto s = ReadString(*n, "revision");
      if (!s.ok()) return s.status();
      if (s->empty() || s->size() > 256) {
        return Err(*n, "revision", "expected 1 to 256 characters");
      }
      out_->revision = *s;
    } else {
      out_->revision = "sha256:" + Sha256Hex(text).substr(0, 12);
    }
    if (const YamlNode* n = Get(root, "description")) {
      if (auto s = ReadString(*n, "description"); !s.ok()) return s.status();
    }
    if (const YamlNode* n = Get(root, "default")) {
      auto e = ReadEffect(*n, "default", /*allow_only_deny_allow=*/false);
      if (!e.ok()) return e.status();
      out_->default_effect = *e;
    }
    if (const YamlNode* n = Get(root, "rules")) {
      if (IsPlainNull(*n)) return absl::OkStatus();
      if (!n->IsSequence()) return Err(*n, "rules", "expected a list of rules");
      out_->rules.reserve(n->items.size());
      out_->compiled.reserve(n->items.size());
      std::unordered_map<std::string, int> first_line;
      for (size_t i = 0; i < n->items.size(); ++i) {
        if (absl::Status s = CompileRule(n->items[i], i, &first_line); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

 private:
  // "SOURCE:LINE:COL: PATH: PROBLEM (rule 'ID')".
  absl::Status Err(const YamlNode& at, std::string_view path, std::string_view problem) const {
    std::string msg;
    if (!source_.empty()) absl::StrAppend(&msg, source_, ":");
    absl::StrAppend(&msg, at.line, ":", at.column, ": ");
    if (!path.empty()) absl::StrAppend(&msg, A(path), ": ");
    absl::StrAppend(&msg, A(problem));
    if (!rule_id_.empty()) absl::StrAppend(&msg, " (rule '", rule_id_, "')");
    return absl::InvalidArgumentError(msg);
  }

  static std::string Join(std::string_view path, std::string_view key) {
    return path.empty() ? std::string(key) : absl::StrCat(A(path), ".", A(key));
  }

  // Only the core schema's tags are understood; anything else is more likely a mistake than
  // intended.
  absl::Status CheckTags(const YamlNode& n, const std::string& path, int depth) const {
    static constexpr std::string_view kCore[] = {
        "tag:yaml.org,2002:str",  "tag:yaml.org,2002:int",  "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:seq",
        "tag:yaml.org,2002:map"};
    if (!n.tag.empty() && std::find(std::begin(kCore), std::end(kCore), n.tag) == std::end(kCore)) {
      return Err(n, path, absl::StrCat("unsupported YAML tag '", n.tag, "'"));
    }
    if (depth > 4 * kMaxNestingDepth) return Err(n, path, "nested too deeply");
    for (const YamlNode& c : n.items) {
      if (absl::Status s = CheckTags(c, path, depth + 1); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // A mapping whose keys are strings, each at most once, each one of `allowed`.
  absl::Status CheckKeys(const YamlNode& map, const std::string& path,
                         std::initializer_list<std::string_view> allowed) const {
    if (!map.IsMap()) {
      return Err(map, path, absl::StrCat("expected a mapping with keys ", JoinKeys(allowed)));
    }
    for (size_t i = 0; i < map.items.size(); i += 2) {
      const YamlNode& k = map.items[i];
      if (!k.IsScalar()) return Err(k, path, "keys must be strings");
      if (std::find(allowed.begin(), allowed.end(), k.scalar) == allowed.end()) {
        return Err(k, path,
                   absl::StrCat("unknown key '", k.scalar,
                                "' (expected one of: ", JoinKeys(allowed), ")"));
      }
      for (size_t j = 0; j < i; j += 2) {
        if (map.items[j].scalar == k.scalar) {
          return Err(k, Join(path, k.scalar),
                     absl::StrCat("duplicate key (first at line ", map.items[j].line, ")"));
        }
      }
    }
    return absl::OkStatus();
  }

  static std::string JoinKeys(std::initializer_list<std::string_view> keys) {
    std::string out;
    for (std::string_view k : keys) absl::StrAppend(&out, out.empty() ? "" : ", ", A(k));
    return out;
  }

  static const YamlNode* Get(const YamlNode& map, std::string_view key) {
    for (size_t i = 0; i + 1 < map.items.size(); i += 2) {
      if (map.items[i].scalar == key) return &map.items[i + 1];
    }
    return nullptr;
  }

  absl::StatusOr<std::string> ReadString(const YamlNode& n, const std::string& path) const {
    if (!n.IsScalar()) return Err(n, path, "expected a string");
    if (!IsValidUtf8(n.scalar)) return Err(n, path, "not valid UTF-8");
    return n.scalar;
  }

  absl::StatusOr<bool> ReadBool(const YamlNode& n, const std::string& path) const {
    if (n.IsScalar()) {
      auto v = PlainScalarToJson(n);
      if (v.ok() && v->is_boolean()) return v->get<bool>();
    }
    return Err(n, path, "expected true or false");
  }

  absl::StatusOr<uint64_t> ReadCount(const YamlNode& n, const std::string& path) const {
    if (n.IsScalar()) {
      auto v = PlainScalarToJson(n);
      if (v.ok() && v->is_number_unsigned()) return v->get<uint64_t>();
      if (v.ok() && v->is_number_integer() && v->get<int64_t>() >= 0) {
        return static_cast<uint64_t>(v->get<int64_t>());
      }
    }
    return Err(n, path, "expected a non-negative integer");
  }

  absl::StatusOr<std::chrono::nanoseconds> ReadDuration(const YamlNode& n,
                                                        const std::string& path) const {
    if (!n.IsScalar()) return Err(n, path, "expected a duration such as 30s, 5m or 1h");
    auto d = ParseDuration(n.scalar);
    if (!d.ok()) return Err(n, path, S(d.status().message()));
    if (d->count() <= 0) return Err(n, path, "must be longer than 0");
    return *d;
  }

  // "allow" | "deny" | "require_approval" (or, for on_timeout, only "allow" | "deny").
  absl::StatusOr<Effect> ReadEffect(const YamlNode& n, const std::string& path,
                                    bool allow_only_deny_allow) const {
    const std::string_view expected = allow_only_deny_allow
                                          ? "expected deny or allow"
                                          : "expected allow, deny or require_approval";
    if (!n.IsScalar()) return Err(n, path, expected);
    if (n.scalar == "allow") return Effect::kAllow;
    if (n.scalar == "deny") return Effect::kDeny;
    if (n.scalar == "require_approval" && !allow_only_deny_allow) {
      return Effect::kRequireApproval;
    }
    return Err(n, path, absl::StrCat(A(expected), ", not '", n.scalar, "'"));
  }

  // A string or a non-empty list of strings.
  absl::StatusOr<std::vector<const YamlNode*>> ReadStringList(const YamlNode& n,
                                                              const std::string& path) const {
    std::vector<const YamlNode*> out;
    if (n.IsScalar()) {
      out.push_back(&n);
    } else if (n.IsSequence() && !n.items.empty()) {
      for (const YamlNode& item : n.items) {
        if (!item.IsScalar()) return Err(item, path, "expected a string or a list of strings");
        out.push_back(&item);
      }
    } else {
      return Err(n, path, "expected a string or a list of strings");
    }
    for (const YamlNode* item : out) {
      if (!IsValidUtf8(item->scalar)) return Err(*item, path, "not valid UTF-8");
    }
    return out;
  }

  absl::Status CompileRule(const YamlNode& n, size_t i,
                           std::unordered_map<std::string, int>* first_line) {
    const std::string path = absl::StrCat("rules[", i, "]");
    rule_id_.clear();
    if (absl::Status s = CheckKeys(
            n, path,
            {"id", "description", "effect", "reason", "shadow", "on_timeout", "approval_timeout",
             "match", "unless", "rate_limit", "budget", "time_window"});
        !s.ok()) {
      return s;
    }
    Rule rule;
    CompiledRule c;
    rule.index = i;
    rule.line = n.line;

    const YamlNode* id = Get(n, "id");
    if (id == nullptr) return Err(n, path, "missing key 'id'");
    auto id_text = ReadString(*id, path + ".id");
    if (!id_text.ok()) return id_text.status();
    if (!ValidRuleId(*id_text)) {
      return Err(*id, path + ".id", "rule ids are 1 to 128 characters among A-Z a-z 0-9 - _ . : /");
    }
    if (auto [it, inserted] = first_line->emplace(*id_text, id->line); !inserted) {
      return Err(
          *id, path + ".id",
          absl::StrCat("duplicate rule id '", *id_text, "' (first at line ", it->second, ")"));
    }
    rule.id = *id_text;
    rule_id_ = rule.id;

    const YamlNode* effect = Get(n, "effect");
    if (effect == nullptr) return Err(n, path, "missing key 'effect'");
    auto e = ReadEffect(*effect, path + ".effect", false);
    if (!e.ok()) return e.status();
    rule.effect = *e;

    if (const YamlNode* r = Get(n, "reason")) {
      auto s = ReadString(*r, path + ".reason");
      if (!s.ok()) return s.status();
      rule.reason = *s;
    }
    if (rule.reason.empty()) rule.reason = absl::StrCat("matched rule ", rule.id);
    if (const YamlNode* d = Get(n, "description")) {
      auto s = ReadString(*d, path + ".description");
      if (!s.ok()) return s.status();
      rule.description = *s;
    }
    if (const YamlNode* s = Get(n, "shadow")) {
      auto b = ReadBool(*s, path + ".shadow");
      if (!b.ok()) return b.status();
      rule.shadow = *b;
    }
    if (const YamlNode* t = Get(n, "on_timeout")) {
      if (rule.effect != Effect::kRequireApproval) {
        return Err(*t, path + ".on_timeout", "only rules with effect require_approval time out");
      }
      auto te = ReadEffect(*t, path + ".on_timeout", true);
      if (!te.ok()) return te.status();
      rule.on_timeout = *te;
    }
    if (const YamlNode* t = Get(n, "approval_timeout")) {
      if (rule.effect != Effect::kRequireApproval) {
        return Err(*t, path + ".approval_timeout",
                   "only rules with effect require_approval time out");
      }
      auto d = ReadDuration(*t, path + ".approval_timeout");
      if (!d.ok()) return d.status();
      rule.approval_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
      if (rule.approval_timeout.count() == 0) {
        return Err(*t, path + ".approval_timeout", "must be at least 1ms");
      }
    }
    if (const YamlNode* m = Get(n, "match")) {
      if (absl::Status s = CompileConditions(*m, path + ".match", &c.match); !s.ok()) return s;
    }
    if (const YamlNode* u = Get(n, "unless")) {
      if (absl::Status s = CompileConditions(*u, path + ".unless", &c.unless); !s.ok()) return s;
      c.has_unless = !c.unless.empty();
      if (!c.has_unless) {
        return Err(*u, path + ".unless", "an empty `unless` would make the rule never match");
      }
    }
    if (const YamlNode* w = Get(n, "time_window")) {
      if (absl::Status s = CompileWindow(*w, path + ".time_window", &c.window); !s.ok()) return s;
      c.has_window = true;
    }
    if (const YamlNode* r = Get(n, "rate_limit")) {
      if (absl::Status s = CompileCounter(*r, path + ".rate_limit", true, &c.rate); !s.ok()) {
        return s;
      }
      c.has_rate = true;
    }
    if (const YamlNode* b = Get(n, "budget")) {
      if (absl::Status s = CompileCounter(*b, path + ".budget", false, &c.budget); !s.ok()) {
        return s;
      }
      c.has_budget = true;
    }
    out_->rules.push_back(std::move(rule));
    out_->compiled.push_back(std::move(c));
    rule_id_.clear();
    return absl::OkStatus();
  }

  absl::Status CompileConditions(const YamlNode& n, const std::string& path, Conditions* out) {
    if (IsPlainNull(n)) return absl::OkStatus();
    if (absl::Status s =
            CheckKeys(n, path,
                      {"agent_id", "tool_name", "tool_type", "operation", "target_system",
                       "initiator_type", "initiator_id", "arguments", "tool_in_snapshot"});
        !s.ok()) {
      return s;
    }
    for (int f = 0; f < kNumFields; ++f) {
      const YamlNode* v = Get(n, kFieldNames[f]);
      if (v == nullptr) continue;
      const std::string fpath = Join(path, kFieldNames[f]);
      auto items = ReadStringList(*v, fpath);
      if (!items.ok()) return items.status();
      StringMatcher m;
      for (const YamlNode* item : *items) {
        auto g = Glob::Compile(item->scalar);
        if (!g.ok()) return Err(*item, fpath, absl::StrCat("bad glob: ", g.status().message()));
        m.Add(*std::move(g));
      }
      if (m.matches_everything()) continue;  // "*" in the list: the condition always holds
      m.Finish();
      out->fields.emplace_back(f, std::move(m));
    }
    if (const YamlNode* t = Get(n, "tool_in_snapshot")) {
      const std::string tpath = Join(path, "tool_in_snapshot");
      if (!t->IsScalar() || (t->scalar != "true" && t->scalar != "false")) {
        return Err(*t, tpath, "expected true or false");
      }
      out->tool_in_snapshot = t->scalar == "true" ? 1 : 0;
    }
    if (const YamlNode* a = Get(n, "arguments")) {
      const std::string apath = Join(path, "arguments");
      if (!a->IsSequence()) return Err(*a, apath, "expected a list of predicates");
      for (size_t i = 0; i < a->items.size(); ++i) {
        Predicate p;
        if (absl::Status s = CompilePredicate(a->items[i], absl::StrCat(apath, "[", i, "]"), &p);
            !s.ok()) {
          return s;
        }
        out->arguments.push_back(std::move(p));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Json> ToJson(const YamlNode& n, const std::string& path, int depth) const {
    if (depth > 2 * kMaxNestingDepth) return Err(n, path, "nested too deeply");
    if (n.IsNull()) return Json(nullptr);
    if (n.IsScalar()) {
      auto v = PlainScalarToJson(n);
      if (!v.ok()) return Err(n, path, S(v.status().message()));
      if (v->is_string() && !IsValidUtf8(n.scalar)) return Err(n, path, "not valid UTF-8");
      return v;
    }
    if (n.IsSequence()) {
      Json arr = Json::array();
      for (const YamlNode& item : n.items) {
        auto v = ToJson(item, path, depth + 1);
        if (!v.ok()) return v.status();
        arr.push_back(*std::move(v));
      }
      return arr;
    }
    Json obj = Json::object();
    for (size_t i = 0; i + 1 < n.items.size(); i += 2) {
      const YamlNode& k = n.items[i];
      if (!k.IsScalar() || !IsValidUtf8(k.scalar)) return Err(k, path, "keys must be strings");
      if (obj.contains(k.scalar))
        return Err(k, path, absl::StrCat("duplicate key '", k.scalar, "'"));
      auto v = ToJson(n.items[i + 1], path, depth + 1);
      if (!v.ok()) return v.status();
      obj[k.scalar] = *std::move(v);
    }
    return obj;
  }

  absl::Status CompilePredicate(const YamlNode& n, const std::string& path, Predicate* p) {
    if (absl::Status s = CheckKeys(n, path,
                                   {"pointer", "equals", "in", "regex", "not_regex", "<", "<=", ">",
                                    ">=", "lt", "lte", "gt", "gte", "exists"});
        !s.ok()) {
      return s;
    }
    const YamlNode* ptr = Get(n, "pointer");
    if (ptr == nullptr) return Err(n, path, "missing key 'pointer'");
    if (!ptr->IsScalar()) return Err(*ptr, path + ".pointer", "expected a JSON pointer string");
    if (absl::Status s = ParsePointer(*ptr, path + ".pointer", &p->pointer); !s.ok()) return s;

    if (const YamlNode* v = Get(n, "exists")) {
      auto b = ReadBool(*v, path + ".exists");
      if (!b.ok()) return b.status();
      p->exists = *b ? 1 : 0;
    }
    if (const YamlNode* v = Get(n, "equals")) {
      auto j = ToJson(*v, path + ".equals", 0);
      if (!j.ok()) return j.status();
      p->has_equals = true;
      p->equals = *std::move(j);
    }
    if (const YamlNode* v = Get(n, "in")) {
      if (!v->IsSequence()) return Err(*v, path + ".in", "expected a list of values");
      for (const YamlNode& item : v->items) {
        auto j = ToJson(item, path + ".in", 0);
        if (!j.ok()) return j.status();
        p->in.push_back(*std::move(j));
      }
      p->has_in = true;
    }
    for (const char* key : {"regex", "not_regex"}) {
      const YamlNode* v = Get(n, key);
      if (v == nullptr) continue;
      const std::string rpath = Join(path, key);
      auto text = ReadString(*v, rpath);
      if (!text.ok()) return text.status();
      if (text->size() > kMaxRegexBytes) {
        return Err(*v, rpath, absl::StrCat("regex longer than ", kMaxRegexBytes, " bytes"));
      }
      RE2::Options options;
      options.set_log_errors(false);
      auto re = std::make_unique<RE2>(*text, options);
      if (!re->ok()) return Err(*v, rpath, absl::StrCat("invalid regex: ", re->error()));
      (std::strcmp(key, "regex") == 0 ? p->regex : p->not_regex) = std::move(re);
    }
    static constexpr std::pair<std::string_view, CmpOp> kOps[] = {
        {"<", CmpOp::kLt},  {"<=", CmpOp::kLe},  {">", CmpOp::kGt},  {">=", CmpOp::kGe},
        {"lt", CmpOp::kLt}, {"lte", CmpOp::kLe}, {"gt", CmpOp::kGt}, {"gte", CmpOp::kGe}};
    for (const auto& [key, op] : kOps) {
      const YamlNode* v = Get(n, key);
      if (v == nullptr) continue;
      const std::string cpath = Join(path, key);
      if (!v->IsScalar()) return Err(*v, cpath, "expected a number");
      auto j = PlainScalarToJson(*v);
      if (!j.ok() || !j->is_number()) return Err(*v, cpath, "expected a number");
      Comparison c{op, j->get<double>(), false, 0};
      if (j->is_number_integer() && !j->is_number_unsigned()) {
        c.integral = true;
        c.int_value = j->get<int64_t>();
      }
      p->comparisons.push_back(c);
    }
    if (p->exists < 0 && !p->has_value_ops()) {
      return Err(n, path,
                 "a predicate needs an operator: equals, in, regex, not_regex, <, <=, >, >= or "
                 "exists");
    }
    return absl::OkStatus();
  }

  absl::Status ParsePointer(const YamlNode& n, const std::string& path, Pointer* p) const {
    const std::string& s = n.scalar;
    if (!s.empty() && s[0] != '/') {
      return Err(n, path, "a JSON pointer is empty or starts with '/' (e.g. /command)");
    }
    if (!IsValidUtf8(s)) return Err(n, path, "not valid UTF-8");
    p->text = s;
    size_t i = 0;
    while (i < s.size()) {
      ++i;  // the '/'
      std::string token;
      while (i < s.size() && s[i] != '/') {
        if (s[i] == '~') {
          if (i + 1 < s.size() && (s[i + 1] == '0' || s[i + 1] == '1')) {
            token += s[i + 1] == '0' ? '~' : '/';
            i += 2;
            continue;
          }
          return Err(n, path, "'~' must be followed by 0 or 1 in a JSON pointer");
        }
        token += s[i++];
      }
      // RFC 6901 array index: "0" or digits without a leading zero.
      int64_t index = -1;
      if (!token.empty() && token.size() <= 18 &&
          std::all_of(token.begin(), token.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
          (token.size() == 1 || token[0] != '0')) {
        std::from_chars(token.data(), token.data() + token.size(), index);
      }
      p->tokens.push_back(std::move(token));
      p->indices.push_back(index);
    }
    return absl::OkStatus();
  }

  absl::Status CompileWindow(const YamlNode& n, const std::string& path, TimeWindow* w) {
    if (absl::Status s = CheckKeys(n, path, {"days", "hours", "timezone", "outside"}); !s.ok()) {
      return s;
    }
    w->zone = absl::UTCTimeZone();
    if (const YamlNode* z = Get(n, "timezone")) {
      const std::string zpath = path + ".timezone";
      auto name = ReadString(*z, zpath);
      if (!name.ok()) return name.status();
      if (!ValidZoneName(*name) || !absl::LoadTimeZone(*name, &w->zone)) {
        return Err(*z, zpath,
                   absl::StrCat("unknown time zone '", *name,
                                "' (expected an IANA name such as Europe/Paris or UTC)"));
      }
    }
    if (const YamlNode* d = Get(n, "days")) {
      const std::string dpath = path + ".days";
      auto items = ReadStringList(*d, dpath);
      if (!items.ok()) return items.status();
      w->days = 0;
      for (const YamlNode* item : *items) {
        const std::string& s = item->scalar;
        const size_t dash = s.find('-');
        const int from = ParseDay(s.substr(0, dash));
        const int to = dash == std::string::npos ? from : ParseDay(s.substr(dash + 1));
        if (from < 0 || to < 0) {
          return Err(*item, dpath,
                     absl::StrCat("expected a day (mon ... sun) or a range such as mon-fri, not '",
                                  s, "'"));
        }
        for (int day = from;; day = (day + 1) % 7) {
          w->days |= static_cast<uint8_t>(1u << day);
          if (day == to) break;
        }
      }
    }
    if (const YamlNode* h = Get(n, "hours")) {
      const std::string hpath = path + ".hours";
      auto items = ReadStringList(*h, hpath);
      if (!items.ok()) return items.status();
      for (const YamlNode* item : *items) {
        const std::string& s = item->scalar;
        const int from = s.size() == 11 && s[5] == '-' ? ParseClock(s.substr(0, 5)) : -1;
        const int to = s.size() == 11 && s[5] == '-' ? ParseClock(s.substr(6)) : -1;
        if (from < 0 || to < 0 || from == to || from == 24 * 60) {
          return Err(*item, hpath,
                     absl::StrCat("expected a range of local times such as 09:00-17:00 (or "
                                  "22:00-06:00 across midnight), not '",
                                  s, "'"));
        }
        w->hours.emplace_back(from, to);
      }
    }
    if (const YamlNode* o = Get(n, "outside")) {
      auto b = ReadBool(*o, path + ".outside");
      if (!b.ok()) return b.status();
      w->outside = *b;
    }
    return absl::OkStatus();
  }

  absl::Status CompileCounter(const YamlNode& n, const std::string& path, bool rate,
                              CounterSpec* c) {
    if (absl::Status s = rate ? CheckKeys(n, path, {"max", "per", "scope"})
                              : CheckKeys(n, path, {"max", "scope"});
        !s.ok()) {
      return s;
    }
    const YamlNode* max = Get(n, "max");
    if (max == nullptr) return Err(n, path, "missing key 'max'");
    auto m = ReadCount(*max, path + ".max");
    if (!m.ok()) return m.status();
    c->max = *m;
    if (rate) {
      const YamlNode* per = Get(n, "per");
      if (per == nullptr) return Err(n, path, "missing key 'per'");
      auto d = ReadDuration(*per, path + ".per");
      if (!d.ok()) return d.status();
      c->per = *d;
    }
    std::string scope = "session";
    if (const YamlNode* s = Get(n, "scope")) {
      if (!s->IsScalar() ||
          (s->scalar != "session" && s->scalar != "agent" && s->scalar != "global")) {
        return Err(*s, path + ".scope", "expected session, agent or global");
      }
      scope = s->scalar;
    }
    c->scope = scope == "session" ? Scope::kSession
               : scope == "agent" ? Scope::kAgent
                                  : Scope::kGlobal;
    // Counters survive a reload when the rule keeps its id, kind, window and scope.
    std::string key = rate ? "rate" : "budget";
    for (const std::string& part : {rule_id_, std::to_string(c->per.count()), scope}) {
      key.push_back('\0');
      key += part;
    }
    c->id = Fnv1a(key);
    return absl::OkStatus();
  }

  const std::string source_;
  RuleSet::Impl* const out_;
  std::string rule_id_;  // the rule being compiled, named in errors
};

}  // namespace

absl::StatusOr<std::shared_ptr<const RuleSet>> CompilePolicy(std::string_view text,
                                                             std::string_view source_name) {
  const std::string prefix = source_name.empty() ? "" : absl::StrCat(A(source_name), ":");
  if (text.size() > kMaxPolicyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "0:0: the policy is larger than ", kMaxPolicyBytes, " bytes"));
  }
  try {
    YamlLimits limits;
    limits.max_depth = kMaxNestingDepth;
    absl::StatusOr<YamlNode> root = ParseYamlTree(text, limits);
    if (!root.ok()) {
      if (root.status().code() != absl::StatusCode::kInvalidArgument) return root.status();
      return absl::InvalidArgumentError(absl::StrCat(prefix, root.status().message()));
    }
    auto impl = std::make_unique<RuleSet::Impl>();
    impl->source_name = std::string(source_name);
    Compiler compiler(source_name, impl.get());
    if (absl::Status s = compiler.Compile(*root, text); !s.ok()) return s;
    impl->BuildIndex();
    return std::shared_ptr<const RuleSet>(new RuleSet(std::move(impl)));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory compiling the policy");
  } catch (const std::exception& e) {  // nlohmann or the standard library: not expected
    return absl::InternalError(absl::StrCat("compiling the policy: ", e.what()));
  }
}

}  // namespace toolgate::policy
