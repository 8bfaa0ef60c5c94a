#include "daemon/normalize/jcs.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace toolgate::normalize {
namespace {

// Nesting limit for AppendCanonical, which recurses.
constexpr int kMaxAppendDepth = 512;

constexpr char kHexDigits[] = "0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// UTF-8 and strings.

// Returns the length (1..4) of the well-formed UTF-8 sequence starting at `p` (`p < end`), or 0
// if it is ill-formed (overlong, surrogate, above U+10FFFF, truncated, stray continuation byte).
inline int Utf8SequenceLength(const unsigned char* p, const unsigned char* end) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  const std::ptrdiff_t avail = end - p;
  if (c < 0xC2) return 0;
  if (c < 0xE0) return (avail >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
  if (c < 0xF0) {
    if (avail < 3) return 0;
    const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80;
    const unsigned char hi = c == 0xED ? 0x9F : 0xBF;
    return (p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80) ? 3 : 0;
  }
  if (c < 0xF5) {
    if (avail < 4) return 0;
    const unsigned char lo = c == 0xF0 ? 0x90 : 0x80;
    const unsigned char hi = c == 0xF4 ? 0x8F : 0xBF;
    return (p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80) ? 4 : 0;
  }
  return 0;
}

inline void AppendUtf8(uint32_t cp, std::string* out) {
  char buf[4];
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
    return;
  }
  if (cp < 0x800) {
    buf[0] = static_cast<char>(0xC0 | (cp >> 6));
    buf[1] = static_cast<char>(0x80 | (cp & 0x3F));
    out->append(buf, 2);
  } else if (cp < 0x10000) {
    buf[0] = static_cast<char>(0xE0 | (cp >> 12));
    buf[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    buf[2] = static_cast<char>(0x80 | (cp & 0x3F));
    out->append(buf, 3);
  } else {
    buf[0] = static_cast<char>(0xF0 | (cp >> 18));
    buf[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    buf[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    buf[3] = static_cast<char>(0x80 | (cp & 0x3F));
    out->append(buf, 4);
  }
}

// True for the ASCII characters RFC 8785 requires to be escaped.
inline bool NeedsEscape(unsigned char c) { return c < 0x20 || c == '"' || c == '\\'; }

// Appends the RFC 8785 escape for `c`, which must satisfy NeedsEscape(c).
inline void AppendEscape(unsigned char c, std::string* out) {
  switch (c) {
    case '"':
      out->append("\\\"", 2);
      return;
    case '\\':
      out->append("\\\\", 2);
      return;
    case '\b':
      out->append("\\b", 2);
      return;
    case '\f':
      out->append("\\f", 2);
      return;
    case '\n':
      out->append("\\n", 2);
      return;
    case '\r':
      out->append("\\r", 2);
      return;
    case '\t':
      out->append("\\t", 2);
      return;
    default: {
      const char buf[6] = {'\\', 'u', '0', '0', kHexDigits[c >> 4], kHexDigits[c & 0xF]};
      out->append(buf, 6);
      return;
    }
  }
}

// Appends `s` as a canonical JSON string literal. Returns false if `s` is not valid UTF-8 (the
// caller discards the output then).
bool AppendQuotedString(std::string_view s, std::string* out) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* const end = p + s.size();
  const auto* run = p;
  out->push_back('"');
  while (p < end) {
    const unsigned char c = *p;
    if (c >= 0x80) {
      const int len = Utf8SequenceLength(p, end);
      if (len == 0) return false;
      p += len;
    } else if (NeedsEscape(c)) {
      out->append(reinterpret_cast<const char*>(run), p - run);
      AppendEscape(c, out);
      run = ++p;
    } else {
      ++p;
    }
  }
  out->append(reinterpret_cast<const char*>(run), p - run);
  out->push_back('"');
  return true;
}

// Three-way comparison of two well-formed UTF-8 strings in the order of their UTF-16 code unit
// sequences (RFC 8785 section 3.2.3). UTF-8 byte order equals code point order, which differs
// from UTF-16 order only between supplementary characters (lead bytes F0..F4, encoded as
// surrogates D800..DFFF) and U+E000..U+FFFF (lead bytes EE, EF): the latter must sort after the
// former. Because the strings share a prefix up to the first differing byte, that byte is either
// a continuation byte in both or a lead byte in both, so remapping EE/EF above F4 suffices.
int CompareUtf16Order(std::string_view a, std::string_view b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = static_cast<unsigned char>(a[i]);
    unsigned char y = static_cast<unsigned char>(b[i]);
    if (x == y) continue;
    if (x >= 0xEE && y >= 0xEE) {
      if (x <= 0xEF) x += 0x10;
      if (y <= 0xEF) y += 0x10;
    }
    return x < y ? -1 : 1;
  }
  if (a.size() == b.size()) return 0;
  return a.size() < b.size() ? -1 : 1;
}

// ---------------------------------------------------------------------------------------------
// Numbers.

// Appends ECMAScript Number::toString(d) (ECMA-262 section 6.1.6.1.20) for finite `d`.
void AppendNumber(double d, std::string* out) {
  if (d == 0) {  // +0 and -0.
    out->push_back('0');
    return;
  }
  constexpr double k2Pow53 = 9007199254740992.0;
  char buf[40];
  if (std::fabs(d) < k2Pow53 && d == std::trunc(d)) {
    // Exact integers below 2^53: their digits are the shortest round-trip digits.
    const auto r = std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(d));
    out->append(buf, r.ptr - buf);
    return;
  }
  // Shortest round-trip digits, as "[-]D[.DDD]e(+|-)XX".
  const auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  const char* p = buf;
  const char* const end = r.ptr;
  if (*p == '-') {
    out->push_back('-');
    ++p;
  }
  char digits[24];
  int k = 0;
  digits[k++] = *p++;
  if (*p == '.') {
    ++p;
    while (p < end && *p != 'e' && k < static_cast<int>(sizeof(digits))) digits[k++] = *p++;
  }
  ++p;  // 'e'
  const bool negative_exponent = *p == '-';
  ++p;
  int e = 0;
  while (p < end) e = e * 10 + (*p++ - '0');
  if (negative_exponent) e = -e;
  const int n = e + 1;  // d = 0.digits * 10^n
  if (k <= n && n <= 21) {
    out->append(digits, k);
    out->append(n - k, '0');
  } else if (0 < n && n <= 21) {
    out->append(digits, n);
    out->push_back('.');
    out->append(digits + n, k - n);
  } else if (-6 < n && n <= 0) {
    out->append("0.", 2);
    out->append(-n, '0');
    out->append(digits, k);
  } else {
    out->push_back(digits[0]);
    if (k > 1) {
      out->push_back('.');
      out->append(digits + 1, k - 1);
    }
    out->push_back('e');
    out->push_back(n - 1 >= 0 ? '+' : '-');
    const auto er = std::to_chars(buf, buf + sizeof(buf), std::abs(n - 1));
    out->append(buf, er.ptr - buf);
  }
}

inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// For a grammatically valid JSON number token whose value std::from_chars reported as out of
// range, returns true if it overflowed (magnitude >= 1) rather than underflowed.
bool OutOfRangeIsOverflow(const char* p, const char* end) {
  if (*p == '-') ++p;
  // Decimal exponent of the first significant digit, relative to the decimal point.
  int64_t significant_exponent = 0;
  bool found = false;
  int64_t int_digits = 0;
  while (p < end && IsDigit(*p)) {
    if (*p != '0' || found) {
      found = true;
      if (int_digits < (int64_t{1} << 40)) ++int_digits;
    }
    ++p;
  }
  if (found) {
    significant_exponent = int_digits - 1;
  } else if (p < end && *p == '.') {
    ++p;
    int64_t zeros = 0;
    while (p < end && *p == '0') {
      if (zeros < (int64_t{1} << 40)) ++zeros;
      ++p;
    }
    significant_exponent = -(zeros + 1);
  }
  while (p < end && *p != 'e' && *p != 'E') ++p;
  int64_t exponent = 0;
  if (p < end) {
    ++p;
    const bool negative = *p == '-';
    if (*p == '+' || *p == '-') ++p;
    while (p < end) {
      if (exponent < (int64_t{1} << 40)) exponent = exponent * 10 + (*p - '0');
      ++p;
    }
    if (negative) exponent = -exponent;
  }
  return significant_exponent + exponent >= 0;
}

// ---------------------------------------------------------------------------------------------
// Parser.

// One object member already written to the output as `"key":value`.
struct Member {
  size_t key_begin;   // Offset of the decoded key in the input or in the key arena.
  size_t key_len;
  bool key_in_arena;  // Keys with escapes are decoded into the arena.
  size_t src_offset;  // Offset of the key's opening quote in the input, for errors.
  size_t out_begin;   // [out_begin, out_end) holds `"key":value` in the output.
  size_t out_end;
};

struct Frame {
  bool is_object;
  size_t member_base;  // Index of this object's first member in `members_`.
  size_t arena_mark;   // Key arena size when the object was opened.
};

// Single-pass, iterative JSON parser that writes canonical output as it goes. Scalars are
// written directly; when an object closes, its members are checked for duplicates and, if not
// already in order, their output byte ranges are permuted into RFC 8785 order in place.
class Parser {
 public:
  Parser(std::string_view input, int max_depth, std::string* out)
      : begin_(input.data()),
        p_(input.data()),
        end_(input.data() + input.size()),
        max_depth_(max_depth),
        out_(out) {}

  absl::Status Run();

 private:
  enum class State { kValue, kAfterValue, kKey };

  size_t Offset(const char* p) const { return static_cast<size_t>(p - begin_); }

  absl::Status Error(const char* what, const char* at) const {
    return absl::InvalidArgumentError(absl::StrCat("jcs: ", what, " at byte ", Offset(at)));
  }

  void SkipWhitespace() {
    const char* p = p_;
    while (p < end_ && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
    p_ = p;
  }

  std::string_view KeyOf(const Member& m) const {
    return std::string_view((m.key_in_arena ? arena_.data() : begin_) + m.key_begin, m.key_len);
  }

  absl::Status ParseString(Member* key);
  bool ParseHex4(uint32_t* cp);
  absl::Status ParseNumber();
  absl::Status ParseLiteral();
  absl::Status FinishObject(const Frame& frame);

  const char* const begin_;
  const char* p_;
  const char* const end_;
  const int max_depth_;
  std::string* const out_;
  absl::InlinedVector<Frame, 16> frames_;
  absl::InlinedVector<Member, 32> members_;
  std::string arena_;
};

absl::Status Parser::Run() {
  State state = State::kValue;
  while (true) {
    switch (state) {
      case State::kValue: {
        SkipWhitespace();
        if (p_ == end_) return Error("unexpected end of input", p_);
        const char c = *p_;
        if (c == '{' || c == '[') {
          if (static_cast<int64_t>(frames_.size()) >= max_depth_) {
            return Error("nesting deeper than max_depth", p_);
          }
          const bool is_object = c == '{';
          ++p_;
          out_->push_back(c);
          frames_.push_back(Frame{is_object, members_.size(), arena_.size()});
          SkipWhitespace();
          const char close = is_object ? '}' : ']';
          if (p_ < end_ && *p_ == close) {
            ++p_;
            out_->push_back(close);
            frames_.pop_back();
            state = State::kAfterValue;
          } else {
            state = is_object ? State::kKey : State::kValue;
          }
          break;
        }
        absl::Status status;
        if (c == '"') {
          status = ParseString(nullptr);
        } else if (c == '-' || IsDigit(c)) {
          status = ParseNumber();
        } else {
          status = ParseLiteral();
        }
        if (!status.ok()) return status;
        state = State::kAfterValue;
        break;
      }
      case State::kAfterValue: {
        if (frames_.empty()) {
          SkipWhitespace();
          if (p_ != end_) return Error("unexpected data after JSON value", p_);
          return absl::OkStatus();
        }
        const Frame& frame = frames_.back();
        if (frame.is_object) members_.back().out_end = out_->size();
        SkipWhitespace();
        if (p_ == end_) return Error("unexpected end of input", p_);
        const char c = *p_;
        if (c == ',') {
          ++p_;
          out_->push_back(',');
          state = frame.is_object ? State::kKey : State::kValue;
        } else if (frame.is_object && c == '}') {
          if (absl::Status s = FinishObject(frame); !s.ok()) return s;
          ++p_;
          out_->push_back('}');
          members_.resize(frame.member_base);
          arena_.resize(frame.arena_mark);
          frames_.pop_back();
        } else if (!frame.is_object && c == ']') {
          ++p_;
          out_->push_back(']');
          frames_.pop_back();
        } else {
          return Error(frame.is_object ? "expected ',' or '}'" : "expected ',' or ']'", p_);
        }
        break;
      }
      case State::kKey: {
        SkipWhitespace();
        if (p_ == end_) return Error("unexpected end of input", p_);
        if (*p_ != '"') return Error("expected string key", p_);
        Member& m = members_.emplace_back();
        m.src_offset = Offset(p_);
        m.out_begin = out_->size();
        if (absl::Status s = ParseString(&m); !s.ok()) return s;
        SkipWhitespace();
        if (p_ == end_) return Error("unexpected end of input", p_);
        if (*p_ != ':') return Error("expected ':'", p_);
        ++p_;
        out_->push_back(':');
        state = State::kValue;
        break;
      }
    }
  }
}

bool Parser::ParseHex4(uint32_t* cp) {
  if (end_ - p_ < 4) return false;
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = p_[i];
    uint32_t digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return false;
    }
    v = (v << 4) | digit;
  }
  p_ += 4;
  *cp = v;
  return true;
}

// Parses the string literal at p_ (which is '"') and writes its canonical form. If `key` is not
// null, records where the decoded key can be found.
absl::Status Parser::ParseString(Member* key) {
  const char* const quote = p_;
  const char* const start = ++p_;
  const char* run = start;  // Start of the raw bytes not yet copied to the output.
  bool in_arena = false;    // The decoded key is being built in `arena_`.
  const size_t arena_begin = arena_.size();
  out_->push_back('"');
  while (true) {
    {
      // Hot loop on locals: stores to the output would otherwise force reloads of p_/end_.
      const auto* p = reinterpret_cast<const unsigned char*>(p_);
      const auto* const end = reinterpret_cast<const unsigned char*>(end_);
      while (p < end) {
        const unsigned char c = *p;
        if (c >= 0x80) {
          const int len = Utf8SequenceLength(p, end);
          if (len == 0) return Error("invalid UTF-8", reinterpret_cast<const char*>(p));
          p += len;
        } else if (NeedsEscape(c)) {
          break;
        } else {
          ++p;
        }
      }
      p_ = reinterpret_cast<const char*>(p);
    }
    if (p_ == end_) return Error("unterminated string", quote);
    const char c = *p_;
    if (static_cast<unsigned char>(c) < 0x20) return Error("unescaped control character", p_);
    out_->append(run, p_ - run);
    if (in_arena) arena_.append(run, p_ - run);
    if (c == '"') {
      ++p_;
      out_->push_back('"');
      if (key != nullptr) {
        key->key_in_arena = in_arena;
        if (in_arena) {
          key->key_begin = arena_begin;
          key->key_len = arena_.size() - arena_begin;
        } else {
          key->key_begin = Offset(start);
          key->key_len = static_cast<size_t>(p_ - 1 - start);
        }
      }
      return absl::OkStatus();
    }
    // Backslash escape.
    if (key != nullptr && !in_arena) {
      in_arena = true;
      arena_.append(start, p_ - start);
    }
    const char* const escape = p_;
    ++p_;
    if (p_ == end_) return Error("unterminated string", quote);
    uint32_t cp;
    switch (*p_++) {
      case '"':
        cp = '"';
        break;
      case '\\':
        cp = '\\';
        break;
      case '/':
        cp = '/';
        break;
      case 'b':
        cp = '\b';
        break;
      case 'f':
        cp = '\f';
        break;
      case 'n':
        cp = '\n';
        break;
      case 'r':
        cp = '\r';
        break;
      case 't':
        cp = '\t';
        break;
      case 'u': {
        if (!ParseHex4(&cp)) return Error("invalid \\u escape", escape);
        if (cp >= 0xDC00 && cp <= 0xDFFF) return Error("lone surrogate escape", escape);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t low;
          if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') {
            return Error("lone surrogate escape", escape);
          }
          p_ += 2;
          if (!ParseHex4(&low)) return Error("invalid \\u escape", p_ - 2);
          if (low < 0xDC00 || low > 0xDFFF) return Error("lone surrogate escape", escape);
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        break;
      }
      default:
        return Error("invalid escape", escape);
    }
    if (cp < 0x80 && NeedsEscape(static_cast<unsigned char>(cp))) {
      AppendEscape(static_cast<unsigned char>(cp), out_);
    } else {
      AppendUtf8(cp, out_);
    }
    if (in_arena) AppendUtf8(cp, &arena_);
    run = p_;
  }
}

absl::Status Parser::ParseNumber() {
  const char* const start = p_;
  const bool negative = *p_ == '-';
  if (negative) ++p_;
  if (p_ == end_ || !IsDigit(*p_)) return Error("invalid number", start);
  if (*p_ == '0') {
    ++p_;
  } else {
    while (p_ < end_ && IsDigit(*p_)) ++p_;
  }
  const size_t int_digits = static_cast<size_t>(p_ - start) - (negative ? 1 : 0);
  bool plain_integer = true;
  if (p_ < end_ && *p_ == '.') {
    plain_integer = false;
    ++p_;
    if (p_ == end_ || !IsDigit(*p_)) return Error("invalid number", start);
    while (p_ < end_ && IsDigit(*p_)) ++p_;
  }
  if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
    plain_integer = false;
    ++p_;
    if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
    if (p_ == end_ || !IsDigit(*p_)) return Error("invalid number", start);
    while (p_ < end_ && IsDigit(*p_)) ++p_;
  }
  // Fast path: integers of up to 15 digits are exact doubles and already canonical (the grammar
  // excludes leading zeros), except for -0.
  if (plain_integer && int_digits <= 15) {
    if (int_digits == 1 && start[negative ? 1 : 0] == '0') {
      out_->push_back('0');
    } else {
      out_->append(start, p_ - start);
    }
    return absl::OkStatus();
  }
  double d = 0;
  const auto r = std::from_chars(start, p_, d);
  if (r.ec == std::errc::result_out_of_range) {
    if (OutOfRangeIsOverflow(start, p_)) return Error("number out of double range", start);
    d = 0;  // Underflow: JavaScript reads it as (-)0.
  } else if (r.ec != std::errc() || r.ptr != p_ || !std::isfinite(d)) {
    return Error("number out of double range", start);
  }
  AppendNumber(d, out_);
  return absl::OkStatus();
}

absl::Status Parser::ParseLiteral() {
  const std::string_view rest(p_, static_cast<size_t>(end_ - p_));
  for (std::string_view literal : {std::string_view("true"), std::string_view("false"),
                                   std::string_view("null")}) {
    if (rest.substr(0, literal.size()) == literal) {
      out_->append(literal.data(), literal.size());
      p_ += literal.size();
      return absl::OkStatus();
    }
  }
  return Error("unexpected character", p_);
}

absl::Status Parser::FinishObject(const Frame& frame) {
  const auto first = members_.begin() + frame.member_base;
  const auto last = members_.end();
  bool sorted = true;
  for (auto it = first + 1; it < last; ++it) {
    const int c = CompareUtf16Order(KeyOf(it[-1]), KeyOf(*it));
    if (c == 0) return Error("duplicate object key", begin_ + it->src_offset);
    if (c > 0) sorted = false;
  }
  if (sorted) return absl::OkStatus();

  const size_t region_begin = first->out_begin;
  const size_t region_end = (last - 1)->out_end;
  std::sort(first, last, [this](const Member& a, const Member& b) {
    return CompareUtf16Order(KeyOf(a), KeyOf(b)) < 0;
  });
  for (auto it = first + 1; it < last; ++it) {
    if (CompareUtf16Order(KeyOf(it[-1]), KeyOf(*it)) == 0) {
      return Error("duplicate object key",
                   begin_ + std::max(it[-1].src_offset, it->src_offset));
    }
  }
  // Copy the members' bytes past the end of the output, then write them back in order.
  const size_t len = region_end - region_begin;
  const size_t scratch = out_->size();
  out_->resize(scratch + len);
  char* const data = out_->data();
  std::memcpy(data + scratch, data + region_begin, len);
  char* w = data + region_begin;
  for (auto it = first; it < last; ++it) {
    if (it != first) *w++ = ',';
    const size_t n = it->out_end - it->out_begin;
    std::memcpy(w, data + scratch + (it->out_begin - region_begin), n);
    w += n;
  }
  out_->resize(scratch);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// nlohmann::json serialization.

absl::Status AppendValue(const nlohmann::json& value, int depth, std::string* out) {
  using Json = nlohmann::json;
  switch (value.type()) {
    case Json::value_t::null:
      out->append("null", 4);
      return absl::OkStatus();
    case Json::value_t::boolean:
      if (*value.get_ptr<const Json::boolean_t*>()) {
        out->append("true", 4);
      } else {
        out->append("false", 5);
      }
      return absl::OkStatus();
    case Json::value_t::number_integer:
      AppendNumber(static_cast<double>(*value.get_ptr<const Json::number_integer_t*>()), out);
      return absl::OkStatus();
    case Json::value_t::number_unsigned:
      AppendNumber(static_cast<double>(*value.get_ptr<const Json::number_unsigned_t*>()), out);
      return absl::OkStatus();
    case Json::value_t::number_float: {
      const double d = *value.get_ptr<const Json::number_float_t*>();
      if (!std::isfinite(d)) return absl::InvalidArgumentError("jcs: non-finite number");
      AppendNumber(d, out);
      return absl::OkStatus();
    }
    case Json::value_t::string:
      if (!AppendQuotedString(*value.get_ptr<const Json::string_t*>(), out)) {
        return absl::InvalidArgumentError("jcs: invalid UTF-8 in string");
      }
      return absl::OkStatus();
    case Json::value_t::array: {
      if (depth >= kMaxAppendDepth) return absl::InvalidArgumentError("jcs: nesting too deep");
      out->push_back('[');
      bool first = true;
      for (const Json& element : *value.get_ptr<const Json::array_t*>()) {
        if (!first) out->push_back(',');
        first = false;
        if (absl::Status s = AppendValue(element, depth + 1, out); !s.ok()) return s;
      }
      out->push_back(']');
      return absl::OkStatus();
    }
    case Json::value_t::object: {
      if (depth >= kMaxAppendDepth) return absl::InvalidArgumentError("jcs: nesting too deep");
      const Json::object_t& object = *value.get_ptr<const Json::object_t*>();
      absl::InlinedVector<const Json::object_t::value_type*, 16> members;
      members.reserve(object.size());
      for (const auto& member : object) members.push_back(&member);
      // std::map orders keys by UTF-8 bytes; RFC 8785 wants UTF-16 order.
      const auto less = [](const Json::object_t::value_type* a,
                           const Json::object_t::value_type* b) {
        return CompareUtf16Order(a->first, b->first) < 0;
      };
      if (!std::is_sorted(members.begin(), members.end(), less)) {
        std::sort(members.begin(), members.end(), less);
      }
      out->push_back('{');
      bool first = true;
      for (const auto* member : members) {
        if (!first) out->push_back(',');
        first = false;
        if (!AppendQuotedString(member->first, out)) {
          return absl::InvalidArgumentError("jcs: invalid UTF-8 in object key");
        }
        out->push_back(':');
        if (absl::Status s = AppendValue(member->second, depth + 1, out); !s.ok()) return s;
      }
      out->push_back('}');
      return absl::OkStatus();
    }
    case Json::value_t::binary:
      return absl::InvalidArgumentError("jcs: binary values have no JSON form");
    case Json::value_t::discarded:
      return absl::InvalidArgumentError("jcs: discarded value");
  }
  return absl::InvalidArgumentError("jcs: unknown value type");
}

}  // namespace

absl::StatusOr<std::string> CanonicalizeJson(std::string_view json_text, int max_depth) {
#if defined(__cpp_exceptions)
  try {
#endif
    std::string out;
    // Room for the output (usually no longer than the input) plus the scratch copy that
    // FinishObject appends when it reorders members, so that neither reallocates.
    out.reserve(2 * json_text.size() + 32);
    Parser parser(json_text, max_depth, &out);
    if (absl::Status s = parser.Run(); !s.ok()) return s;
    return out;
#if defined(__cpp_exceptions)
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("jcs: out of memory");
  } catch (const std::length_error&) {
    return absl::ResourceExhaustedError("jcs: output too large");
  } catch (...) {
    return absl::InternalError("jcs: unexpected exception");
  }
#endif
}

absl::Status AppendCanonical(const nlohmann::json& value, std::string* out) {
  const size_t original_size = out->size();
#if defined(__cpp_exceptions)
  try {
#endif
    absl::Status s = AppendValue(value, 0, out);
    if (!s.ok()) out->resize(original_size);
    return s;
#if defined(__cpp_exceptions)
  } catch (const std::bad_alloc&) {
    out->resize(original_size);
    return absl::ResourceExhaustedError("jcs: out of memory");
  } catch (const std::length_error&) {
    out->resize(original_size);
    return absl::ResourceExhaustedError("jcs: output too large");
  } catch (...) {
    out->resize(original_size);
    return absl::InternalError("jcs: unexpected exception");
  }
#endif
}

bool AppendCanonicalString(std::string_view s, std::string* out) {
  return AppendQuotedString(s, out);
}

void AppendCanonicalNumber(double d, std::string* out) { AppendNumber(d, out); }

}  // namespace toolgate::normalize
