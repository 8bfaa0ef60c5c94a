#include "daemon/policy/glob.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace toolgate::policy {

uint32_t DecodeUtf8(std::string_view text, size_t pos, size_t* len) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  // A byte that does not start a valid sequence maps to U+DC80..U+DCFF (as Python's
  // "surrogateescape"): surrogates never decode from valid UTF-8, so it stays distinct.
  const auto invalid = [&] {
    *len = 1;
    return b0 < 0x80 ? static_cast<uint32_t>(b0) : 0xDC00u + b0;
  };
  if (b0 < 0x80) return invalid();
  size_t n;
  uint32_t cp;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return invalid();
  }
  if (pos + n > text.size()) return invalid();
  for (size_t i = 1; i < n; ++i) {
    const unsigned char b = byte(pos + i);
    if ((b & 0xC0) != 0x80) return invalid();
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return invalid();
  *len = n;
  return cp;
}

bool HasGlobOperator(std::string_view pattern) {
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      ++i;
    } else if (c == '*' || c == '?' || c == '[') {
      return true;
    }
  }
  return false;
}

absl::StatusOr<Glob> Glob::Compile(std::string_view pattern) {
  if (pattern.size() > kMaxPatternBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("glob longer than ", kMaxPatternBytes, " bytes"));
  }
  Glob g;
  g.pattern_ = std::string(pattern);
  const auto add_literal = [&g](std::string_view bytes) {
    if (!g.tokens_.empty() && g.tokens_.back().op == Op::kLiteral) {
      g.literals_.append(bytes);
      g.tokens_.back().end = static_cast<uint32_t>(g.literals_.size());
      return;
    }
    const auto begin = static_cast<uint32_t>(g.literals_.size());
    g.literals_.append(bytes);
    g.tokens_.push_back({Op::kLiteral, begin, static_cast<uint32_t>(g.literals_.size())});
  };

  size_t i = 0;
  while (i < pattern.size()) {
    const char c = pattern[i];
    if (c == '\\') {
      if (i + 1 >= pattern.size()) return absl::InvalidArgumentError("trailing '\\' in glob");
      size_t len;
      DecodeUtf8(pattern, i + 1, &len);
      add_literal(pattern.substr(i + 1, len));
      i += 1 + len;
    } else if (c == '*') {
      if (g.tokens_.empty() || g.tokens_.back().op != Op::kStar) g.tokens_.push_back({Op::kStar});
      ++i;
    } else if (c == '?') {
      g.tokens_.push_back({Op::kAnyOne});
      ++i;
    } else if (c == '[') {
      Token t{Op::kClass};
      t.begin = static_cast<uint32_t>(g.ranges_.size());
      size_t j = i + 1;
      if (j < pattern.size() && (pattern[j] == '!' || pattern[j] == '^')) {
        t.negated = true;
        ++j;
      }
      bool first = true;
      bool closed = false;
      while (j < pattern.size()) {
        if (pattern[j] == ']' && !first) {
          closed = true;
          ++j;
          break;
        }
        first = false;
        size_t len;
        if (pattern[j] == '\\') {
          if (++j >= pattern.size()) break;
        }
        const uint32_t lo = DecodeUtf8(pattern, j, &len);
        j += len;
        uint32_t hi = lo;
        if (j + 1 < pattern.size() && pattern[j] == '-' && pattern[j + 1] != ']') {
          ++j;
          if (pattern[j] == '\\') {
            if (++j >= pattern.size()) break;
          }
          hi = DecodeUtf8(pattern, j, &len);
          j += len;
          if (hi < lo) {
            return absl::InvalidArgumentError(
                absl::StrCat("empty range in glob class at byte ", j - 1));
          }
        }
        g.ranges_.push_back({lo, hi});
      }
      if (!closed) {
        return absl::InvalidArgumentError(absl::StrCat("unterminated '[' at byte ", i));
      }
      t.end = static_cast<uint32_t>(g.ranges_.size());
      g.tokens_.push_back(t);
      i = j;
    } else {
      size_t len;
      DecodeUtf8(pattern, i, &len);
      add_literal(pattern.substr(i, len));
      i += len;
    }
  }

  const auto op = [&g](size_t i) { return g.tokens_[i].op; };
  const size_t n = g.tokens_.size();
  if (n == 0 || (n == 1 && op(0) == Op::kLiteral)) {
    g.shape_ = Shape::kLiteral;
  } else if (n == 1 && op(0) == Op::kStar) {
    g.shape_ = Shape::kEverything;
  } else if (n == 2 && op(0) == Op::kLiteral && op(1) == Op::kStar) {
    g.shape_ = Shape::kPrefix;
  } else if (n == 2 && op(0) == Op::kStar && op(1) == Op::kLiteral) {
    g.shape_ = Shape::kSuffix;
  } else if (n == 3 && op(0) == Op::kStar && op(1) == Op::kLiteral && op(2) == Op::kStar) {
    g.shape_ = Shape::kContains;
    g.contains_ = g.literals_.substr(g.tokens_[1].begin, g.tokens_[1].end - g.tokens_[1].begin);
  }
  g.matches_everything_ = g.tokens_.size() == 1 && g.tokens_[0].op == Op::kStar;
  g.is_literal_ = g.tokens_.empty() || (g.tokens_.size() == 1 && g.tokens_[0].op == Op::kLiteral);
  if (!g.tokens_.empty() && g.tokens_.front().op == Op::kLiteral) {
    const Token& t = g.tokens_.front();
    g.literal_prefix_ = g.literals_.substr(t.begin, t.end - t.begin);
  }
  if (!g.tokens_.empty() && g.tokens_.back().op == Op::kLiteral) {
    const Token& t = g.tokens_.back();
    g.literal_suffix_ = g.literals_.substr(t.begin, t.end - t.begin);
  }
  return g;
}

bool Glob::ClassMatches(const Token& t, uint32_t cp) const {
  bool in = false;
  for (uint32_t r = t.begin; r < t.end; ++r) {
    if (cp >= ranges_[r].lo && cp <= ranges_[r].hi) {
      in = true;
      break;
    }
  }
  return in != t.negated;
}

bool Glob::Matches(std::string_view text) const {
  switch (shape_) {
    case Shape::kLiteral:
      return text == literal_prefix_;
    case Shape::kEverything:
      return true;
    case Shape::kPrefix:
      return text.size() >= literal_prefix_.size() &&
             text.compare(0, literal_prefix_.size(), literal_prefix_) == 0;
    case Shape::kSuffix:
      return text.size() >= literal_suffix_.size() &&
             text.compare(text.size() - literal_suffix_.size(), literal_suffix_.size(),
                          literal_suffix_) == 0;
    case Shape::kContains:
      return text.find(contains_) != std::string_view::npos;
    case Shape::kGeneral:
      break;
  }
  return MatchesGeneral(text);
}

// Iterative matching with one backtrack point (the last '*'). Between two stars every token
// consumes a length fixed by where it starts, so matching each segment at its leftmost
// position is optimal and earlier stars never need to be revisited.
bool Glob::MatchesGeneral(std::string_view text) const {
  const size_t n = tokens_.size();
  size_t ti = 0;
  size_t p = 0;
  size_t star_ti = n;  // n = no star seen yet
  size_t star_p = 0;
  while (true) {
    if (ti < n) {
      const Token& t = tokens_[ti];
      bool ok = false;
      switch (t.op) {
        case Op::kStar: {
          if (ti + 1 == n) return true;  // a trailing star takes whatever is left
          star_ti = ti++;
          star_p = p;
          // A literal after the star: skip straight to its next occurrence (none: no match,
          // since a later start of the star cannot find one either).
          const Token& next = tokens_[ti];
          if (next.op == Op::kLiteral) {
            const std::string_view lit(literals_.data() + next.begin, next.end - next.begin);
            const size_t at = text.find(lit, p);
            if (at == std::string_view::npos) return false;
            star_p = p = at;
          }
          continue;
        }
        case Op::kLiteral: {
          const std::string_view lit(literals_.data() + t.begin, t.end - t.begin);
          if (text.size() - p >= lit.size() && text.compare(p, lit.size(), lit) == 0) {
            p += lit.size();
            ok = true;
          }
          break;
        }
        case Op::kAnyOne:
          if (p < text.size()) {
            size_t len;
            DecodeUtf8(text, p, &len);
            p += len;
            ok = true;
          }
          break;
        case Op::kClass:
          if (p < text.size()) {
            size_t len;
            const uint32_t cp = DecodeUtf8(text, p, &len);
            if (ClassMatches(t, cp)) {
              p += len;
              ok = true;
            }
          }
          break;
      }
      if (ok) {
        ++ti;
        continue;
      }
    } else if (p == text.size()) {
      return true;
    }
    // Mismatch, or pattern exhausted with text left: let the last star take one more character
    // (or, before a literal, jump to the literal's next occurrence).
    if (star_ti == n || star_p >= text.size()) return false;
    size_t len;
    DecodeUtf8(text, star_p, &len);
    star_p += len;
    const Token& next = tokens_[star_ti + 1];
    if (next.op == Op::kLiteral) {
      const std::string_view lit(literals_.data() + next.begin, next.end - next.begin);
      const size_t at = text.find(lit, star_p);
      if (at == std::string_view::npos) return false;
      star_p = at;
    }
    p = star_p;
    ti = star_ti + 1;
  }
}

}  // namespace toolgate::policy
