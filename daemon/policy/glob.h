// Glob: the shell-style patterns of policy string conditions (tool names, agents, systems ...).
//
// Syntax (case-sensitive, whole-string match):
//   *        any sequence of characters, the empty one included
//   ?        exactly one character
//   [abc]    one of the characters listed; ranges ([a-z]) and negation ([!a-z] or [^a-z]);
//            a ']' right after '[' (or after '[!') is literal
//   \c       the character c itself (to match a literal *, ?, [ or \)
// Everything else matches itself. "Character" means a UTF-8 code point; a byte that is not part
// of valid UTF-8 counts as one character of its own, so any byte string can be matched.
//
// Matching never recurses and never allocates. "lit", "lit*", "*lit", "*lit*" and "*" are
// tested directly (a compare or a substring search); other patterns use a matcher with one
// backtrack point that jumps to the next occurrence of the literal after a '*', O(text *
// pattern) in the worst case.
//
// Thread-safety: a compiled Glob is immutable; Matches() may be called concurrently.
#ifndef TOOLGATE_DAEMON_POLICY_GLOB_H_
#define TOOLGATE_DAEMON_POLICY_GLOB_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace toolgate::policy {

// True when `pattern` contains an unescaped glob operator (*, ?, [), i.e. is not a plain string.
bool HasGlobOperator(std::string_view pattern);

class Glob {
 public:
  // Longest pattern accepted, in bytes.
  static constexpr size_t kMaxPatternBytes = 1024;

  // Errors: InvalidArgument naming the problem ("unterminated '['", "trailing '\\'",
  // "empty range z-a", "longer than 1024 bytes").
  static absl::StatusOr<Glob> Compile(std::string_view pattern);

  bool Matches(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }
  // The literal text every match starts with (escapes resolved); "" if the pattern starts with
  // an operator. Used to index rules by prefix.
  const std::string& literal_prefix() const { return literal_prefix_; }
  // The literal text every match ends with; "" if the pattern ends with an operator.
  const std::string& literal_suffix() const { return literal_suffix_; }
  // True for "*" (and "**" ...): matches every string.
  bool matches_everything() const { return matches_everything_; }
  // True when the pattern has no operator: it matches exactly literal_prefix().
  bool is_literal() const { return is_literal_; }
  // True for "LITERAL*": every string starting with literal_prefix() matches.
  bool is_prefix_only() const { return shape_ == Shape::kPrefix; }
  // True for "*LITERAL": every string ending with literal_suffix() matches.
  bool is_suffix_only() const { return shape_ == Shape::kSuffix; }

 private:
  enum class Op : uint8_t { kLiteral, kAnyOne, kClass, kStar };
  // Common shapes get a direct test instead of the general matcher.
  enum class Shape : uint8_t { kGeneral, kLiteral, kPrefix, kSuffix, kContains, kEverything };
  struct Token {
    Op op;
    uint32_t begin = 0;  // kLiteral: range in literals_; kClass: range in ranges_
    uint32_t end = 0;
    bool negated = false;  // kClass
  };
  struct Range {
    uint32_t lo, hi;  // code points, inclusive
  };

  Glob() = default;
  bool ClassMatches(const Token& t, uint32_t cp) const;
  bool MatchesGeneral(std::string_view text) const;

  std::string pattern_;
  std::string literals_;  // the literal runs, concatenated
  std::vector<Range> ranges_;
  std::vector<Token> tokens_;
  std::string literal_prefix_;
  std::string literal_suffix_;
  std::string contains_;  // kContains: the literal between the stars
  Shape shape_ = Shape::kGeneral;
  bool matches_everything_ = false;
  bool is_literal_ = false;
};

// Decodes the code point at text[pos] (pos < text.size()); stores its length in *len. An invalid
// or truncated sequence decodes as the single byte's value with *len = 1.
uint32_t DecodeUtf8(std::string_view text, size_t pos, size_t* len);

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_GLOB_H_
