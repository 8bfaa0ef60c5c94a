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

// Writes code point `cp` (a Unicode scalar value) as UTF-8 to `w` (room for 4 bytes); returns the
// number of bytes written.
inline size_t WriteUtf8(uint32_t cp, char* w) {
  if (cp < 0x80) {
    w[0] = static_cast<char>(cp);
    return 1;
  }
  if (cp < 0x800) {
    w[0] = static_cast<char>(0xC0 | (cp >> 6));
    w[1] = static_cast<char>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    w[0] = static_cast<char>(0xE0 | (cp >> 12));
    w[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    w[2] = static_cast<char>(0x80 | (cp & 0x3F));
    return 3;
  }
  w[0] = static_cast<char>(0xF0 | (cp >> 18));
  w[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
  w[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
  w[3] = static_cast<char>(0x80 | (cp & 0x3F));
  return 4;
}

inline void AppendUtf8(uint32_t cp, std::string* out) {
  char buf[4];
  out->append(buf, WriteUtf8(cp, buf));
}

// True for the ASCII characters RFC 8785 requires to be escaped.
inline bool NeedsEscape(unsigned char c) { return c < 0x20 || c == '"' || c == '\\'; }

// Word-at-a-time tests on eight bytes (bit 7 of a byte set where the test holds, exact for a
// word whose bytes are all below 0x80; callers test the high bits of the word itself too).
constexpr uint64_t kLowBits = 0x0101010101010101ULL;
constexpr uint64_t kHighBits = 0x8080808080808080ULL;
inline uint64_t HasLess(uint64_t v, unsigned char n) { return (v - kLowBits * n) & ~v; }
inline uint64_t HasByte(uint64_t v, unsigned char c) {
  const uint64_t x = v ^ (kLowBits * c);
  return (x - kLowBits) & ~x;
}

// Writes the RFC 8785 escape for `c`, which must satisfy NeedsEscape(c), to `w` (room for 6
// bytes); returns the number of bytes written.
inline size_t WriteEscape(unsigned char c, char* w) {
  w[0] = '\\';
  switch (c) {
    case '"':
      w[1] = '"';
      return 2;
    case '\\':
      w[1] = '\\';
      return 2;
    case '\b':
      w[1] = 'b';
      return 2;
    case '\f':
      w[1] = 'f';
      return 2;
    case '\n':
      w[1] = 'n';
      return 2;
    case '\r':
      w[1] = 'r';
      return 2;
    case '\t':
      w[1] = 't';
      return 2;
    default:
      w[1] = 'u';
      w[2] = '0';
      w[3] = '0';
      w[4] = kHexDigits[c >> 4];
      w[5] = kHexDigits[c & 0xF];
      return 6;
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
    // Eight bytes at a time while they are plain ASCII (the common case for ids, names and
    // argument text): none >= 0x80, < 0x20, '"' or '\\'.
    while (end - p >= 8) {
      uint64_t v;
      std::memcpy(&v, p, 8);
      if (((v | HasLess(v, 0x20) | HasByte(v, '"') | HasByte(v, '\\')) & kHighBits) != 0) break;
      p += 8;
    }
    if (p == end) break;
    const unsigned char c = *p;
    if (c >= 0x80) {
      const int len = Utf8SequenceLength(p, end);
      if (len == 0) return false;
      p += len;
    } else if (NeedsEscape(c)) {
      out->append(reinterpret_cast<const char*>(run), p - run);
      char buf[6];
      out->append(buf, WriteEscape(c, buf));
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
inline int CompareUtf16Order(std::string_view a, std::string_view b) {
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

// Longest output of WriteNumber: "-0.00000" + 17 digits.
constexpr size_t kMaxNumberLength = 25;

// Writes ECMAScript Number::toString(d) (ECMA-262 section 6.1.6.1.20) for finite `d` to `w`, which
// must have room for kMaxNumberLength bytes, and returns the end of the written text.
char* WriteNumber(double d, char* w) {
  if (d == 0) {  // +0 and -0.
    *w++ = '0';
    return w;
  }
  constexpr double k2Pow53 = 9007199254740992.0;
  if (std::fabs(d) < k2Pow53 && d == std::trunc(d)) {
    // Exact integers below 2^53: their digits are the shortest round-trip digits.
    return std::to_chars(w, w + kMaxNumberLength, static_cast<int64_t>(d)).ptr;
  }
  // Shortest round-trip digits, as "[-]D[.DDD]e(+|-)X[XX]".
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  const char* p = buf;
  const char* const end = r.ptr;
  if (*p == '-') {
    *w++ = '-';
    ++p;
  }
  char digits[20];
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
  const int n = e + 1;  // d = 0.digits * 10^n, with k significant digits.
  if (k <= n && n <= 21) {
    std::memcpy(w, digits, k);
    std::memset(w + k, '0', n - k);
    return w + n;
  }
  if (0 < n && n <= 21) {
    std::memcpy(w, digits, n);
    w[n] = '.';
    std::memcpy(w + n + 1, digits + n, k - n);
    return w + k + 1;
  }
  if (-6 < n && n <= 0) {
    *w++ = '0';
    *w++ = '.';
    std::memset(w, '0', -n);
    w += -n;
    std::memcpy(w, digits, k);
    return w + k;
  }
  *w++ = digits[0];
  if (k > 1) {
    *w++ = '.';
    std::memcpy(w, digits + 1, k - 1);
    w += k - 1;
  }
  *w++ = 'e';
  *w++ = n - 1 >= 0 ? '+' : '-';
  return std::to_chars(w, w + 4, std::abs(n - 1)).ptr;
}

void AppendNumber(double d, std::string* out) {
  char buf[kMaxNumberLength];
  out->append(buf, WriteNumber(d, buf) - buf);
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
  size_t key_begin;  // Offset of the decoded key in the input or in the key arena.
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

// True for bytes a string scan can copy without looking: printable ASCII other than '"', '\'.
inline bool IsPlainStringByte(unsigned char c) {
  return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

// True if any of the 8 bytes in `x` is not IsPlainStringByte. Exact for "any" (the usual
// zero-byte tricks only give false positives above a true hit).
inline bool HasNonPlainByte(uint64_t x) {
  constexpr uint64_t kOnes = 0x0101010101010101ULL;
  constexpr uint64_t kHighs = 0x8080808080808080ULL;
  const uint64_t below_space = (x - kOnes * 0x20) & ~x;
  const uint64_t quote = x ^ (kOnes * '"');
  const uint64_t backslash = x ^ (kOnes * '\\');
  const uint64_t has_quote = (quote - kOnes) & ~quote;
  const uint64_t has_backslash = (backslash - kOnes) & ~backslash;
  return ((below_space | has_quote | has_backslash | x) & kHighs) != 0;
}

// Spare output bytes always kept beyond what the remaining input can produce, so that short
// copies may write a fixed 16 bytes.
constexpr size_t kOutputSlack = 16;

// Input and output positions, passed and returned by value so that they stay in registers (writes
// through a char* would otherwise force reloading them from memory after every output byte).
struct Cursor {
  const char* p;  // Next input byte; nullptr after a failure.
  char* w;        // Next output byte.
};

inline const char* SkipWhitespace(const char* p, const char* end) {
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  return p;
}

// Single-pass, iterative JSON parser that writes canonical output as it goes. Scalars are
// written directly; when an object closes, its members are checked for duplicates and, if not
// already in order, their output byte ranges are permuted into RFC 8785 order in place.
//
// Output goes through a raw cursor into `out_`, which is kept sized to its allocation. Every
// token except a number produces at most as many bytes as it consumes, so the invariant
// "room left >= input left + kOutputSlack" (established up front, re-checked before each number
// and each reordering) guarantees that no other write needs a bounds check.
class Parser {
 public:
  Parser(std::string_view input, int max_depth, std::string* out)
      : begin_(input.data()), end_(input.data() + input.size()), max_depth_(max_depth), out_(out) {}

  // On success `*out` holds the canonical bytes; otherwise returns false and sets error().
  bool Run();
  const absl::Status& error() const { return error_; }

 private:
  enum class State { kValue, kAfterValue, kKey };

  size_t Offset(const char* p) const { return static_cast<size_t>(p - begin_); }

  // Records the error; the Cursor form is for the token parsers, the bool form for Run().
  Cursor Fail(const char* what, const char* at) {
    error_ = absl::InvalidArgumentError(absl::StrCat("jcs: ", what, " at byte ", Offset(at)));
    return Cursor{nullptr, nullptr};
  }
  bool Error(const char* what, const char* at) {
    Fail(what, at);
    return false;
  }

  // Makes sure the output has room for `extra` bytes plus the input after `p`; returns `w`,
  // relocated if the buffer moved.
  char* Reserve(const char* p, char* w, size_t extra) {
    const size_t need = static_cast<size_t>(end_ - p) + extra + kOutputSlack;
    if (static_cast<size_t>(out_end_ - w) >= need) return w;
    const size_t used = static_cast<size_t>(w - out_begin_);
    out_->resize(std::max(2 * out_->size(), used + need));
    out_begin_ = out_->data();
    out_end_ = out_begin_ + out_->size();
    return out_begin_ + used;
  }

  Cursor ParseString(const char* p, char* w, Member* key);
  bool ParseHex4(const char* p, uint32_t* cp) const;
  Cursor ParseNumber(const char* p, char* w);
  Cursor FinishObject(const Frame& frame, const char* p, char* w);

  const char* const begin_;
  const char* const end_;
  const int max_depth_;
  std::string* const out_;
  char* out_begin_ = nullptr;  // Output allocation.
  char* out_end_ = nullptr;
  absl::InlinedVector<Frame, 16> frames_;
  absl::InlinedVector<Member, 16> members_;
  std::string arena_;
  absl::Status error_;
};

bool Parser::Run() {
  out_->resize(2 * static_cast<size_t>(end_ - begin_) + kOutputSlack + 48);
  out_begin_ = out_->data();
  out_end_ = out_begin_ + out_->size();
  const char* p = begin_;
  const char* const end = end_;
  char* w = out_begin_;
  State state = State::kValue;
  while (true) {
    switch (state) {
      case State::kValue: {
        p = SkipWhitespace(p, end);
        if (p == end) return Error("unexpected end of input", p);
        const char c = *p;
        if (c == '"') {
          const Cursor next = ParseString(p, w, nullptr);
          if (next.p == nullptr) return false;
          p = next.p;
          w = next.w;
        } else if (c == '-' || IsDigit(c)) {
          const Cursor next = ParseNumber(p, w);
          if (next.p == nullptr) return false;
          p = next.p;
          w = next.w;
        } else if (c == '{' || c == '[') {
          if (static_cast<int64_t>(frames_.size()) >= max_depth_) {
            return Error("nesting deeper than max_depth", p);
          }
          const bool is_object = c == '{';
          ++p;
          *w++ = c;
          Frame& frame = frames_.emplace_back();
          frame.is_object = is_object;
          frame.member_base = members_.size();
          frame.arena_mark = arena_.size();
          p = SkipWhitespace(p, end);
          const char close = is_object ? '}' : ']';
          if (p < end && *p == close) {
            ++p;
            *w++ = close;
            frames_.pop_back();
          } else {
            state = is_object ? State::kKey : State::kValue;
            break;
          }
        } else {
          const char* literal;
          size_t len;
          if (c == 't') {
            literal = "true";
            len = 4;
          } else if (c == 'f') {
            literal = "false";
            len = 5;
          } else if (c == 'n') {
            literal = "null";
            len = 4;
          } else {
            return Error("unexpected character", p);
          }
          if (static_cast<size_t>(end - p) < len || std::memcmp(p, literal, len) != 0) {
            return Error("unexpected character", p);
          }
          std::memcpy(w, literal, len);
          w += len;
          p += len;
        }
        state = State::kAfterValue;
        break;
      }
      case State::kAfterValue: {
        if (frames_.empty()) {
          p = SkipWhitespace(p, end);
          if (p != end) return Error("unexpected data after JSON value", p);
          out_->resize(static_cast<size_t>(w - out_begin_));
          return true;
        }
        const Frame& frame = frames_.back();
        if (frame.is_object) members_.back().out_end = static_cast<size_t>(w - out_begin_);
        p = SkipWhitespace(p, end);
        if (p == end) return Error("unexpected end of input", p);
        const char c = *p;
        if (c == ',') {
          ++p;
          *w++ = ',';
          state = frame.is_object ? State::kKey : State::kValue;
        } else if (frame.is_object && c == '}') {
          const Cursor next = FinishObject(frame, p, w);
          if (next.p == nullptr) return false;
          w = next.w;
          ++p;
          *w++ = '}';
          members_.resize(frame.member_base);
          arena_.resize(frame.arena_mark);
          frames_.pop_back();
        } else if (!frame.is_object && c == ']') {
          ++p;
          *w++ = ']';
          frames_.pop_back();
        } else {
          return Error(frame.is_object ? "expected ',' or '}'" : "expected ',' or ']'", p);
        }
        break;
      }
      case State::kKey: {
        p = SkipWhitespace(p, end);
        if (p == end) return Error("unexpected end of input", p);
        if (*p != '"') return Error("expected string key", p);
        Member& m = members_.emplace_back();
        m.src_offset = Offset(p);
        m.out_begin = static_cast<size_t>(w - out_begin_);
        const Cursor next = ParseString(p, w, &m);
        if (next.p == nullptr) return false;
        p = SkipWhitespace(next.p, end);
        w = next.w;
        if (p == end) return Error("unexpected end of input", p);
        if (*p != ':') return Error("expected ':'", p);
        ++p;
        *w++ = ':';
        state = State::kValue;
        break;
      }
    }
  }
}

bool Parser::ParseHex4(const char* p, uint32_t* cp) const {
  if (end_ - p < 4) return false;
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = p[i];
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
  *cp = v;
  return true;
}

// Parses the string literal at `p` (which is '"') and writes its canonical form at `w`. If `key`
// is not null, records where the decoded key can be found. Writes at most as many bytes as it
// reads.
Cursor Parser::ParseString(const char* p, char* w, Member* key) {
  const char* const end = end_;
  const char* const quote = p;
  const char* const start = p + 1;
  p = start;
  const char* run = start;  // Start of the input bytes not yet copied to the output.
  bool in_arena = false;    // The decoded key is being built in `arena_`.
  const size_t arena_begin = arena_.size();
  *w++ = '"';
  while (true) {
    // Skip plain bytes, 8 at a time while possible, and well-formed UTF-8 sequences.
    unsigned char c;
    while (true) {
      while (end - p >= 8) {
        uint64_t x;
        std::memcpy(&x, p, sizeof(x));
        if (HasNonPlainByte(x)) break;
        p += 8;
      }
      while (p < end && IsPlainStringByte(static_cast<unsigned char>(*p))) ++p;
      if (p == end) return Fail("unterminated string", quote);
      c = static_cast<unsigned char>(*p);
      if (c < 0x80) break;
      const int len = Utf8SequenceLength(reinterpret_cast<const unsigned char*>(p),
                                         reinterpret_cast<const unsigned char*>(end));
      if (len == 0) return Fail("invalid UTF-8", p);
      p += len;
    }
    if (c < 0x20) return Fail("unescaped control character", p);
    const size_t run_len = static_cast<size_t>(p - run);
    if (run_len <= 16 && end - run >= 16) {
      // Fixed-size copy of short runs (no library call). The output always has at least
      // kOutputSlack spare bytes beyond what the rest of the input can produce.
      std::memcpy(w, run, 16);
    } else {
      std::memcpy(w, run, run_len);
    }
    w += run_len;
    if (in_arena) arena_.append(run, run_len);
    if (c == '"') {
      *w++ = '"';
      if (key != nullptr) {
        key->key_in_arena = in_arena;
        if (in_arena) {
          key->key_begin = arena_begin;
          key->key_len = arena_.size() - arena_begin;
        } else {
          key->key_begin = Offset(start);
          key->key_len = static_cast<size_t>(p - start);
        }
      }
      return Cursor{p + 1, w};
    }
    // Backslash escape.
    if (key != nullptr && !in_arena) {
      in_arena = true;
      arena_.append(start, p - start);
    }
    const char* const escape = p;
    ++p;
    if (p == end) return Fail("unterminated string", quote);
    uint32_t cp;
    switch (*p++) {
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
        if (!ParseHex4(p, &cp)) return Fail("invalid \\u escape", escape);
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return Fail("lone surrogate escape", escape);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t low;
          if (end - p < 2 || p[0] != '\\' || p[1] != 'u') {
            return Fail("lone surrogate escape", escape);
          }
          if (!ParseHex4(p + 2, &low)) return Fail("invalid \\u escape", p);
          if (low < 0xDC00 || low > 0xDFFF) return Fail("lone surrogate escape", escape);
          p += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        break;
      }
      default:
        return Fail("invalid escape", escape);
    }
    // The escape consumed 2, 6 or 12 bytes; its canonical form takes at most as many.
    if (cp < 0x80 && NeedsEscape(static_cast<unsigned char>(cp))) {
      w += WriteEscape(static_cast<unsigned char>(cp), w);
    } else {
      w += WriteUtf8(cp, w);
    }
    if (in_arena) AppendUtf8(cp, &arena_);
    run = p;
  }
}

Cursor Parser::ParseNumber(const char* p, char* w) {
  const char* const end = end_;
  const char* const start = p;
  const bool negative = *p == '-';
  if (negative) ++p;
  if (p == end || !IsDigit(*p)) return Fail("invalid number", start);
  if (*p == '0') {
    ++p;
  } else {
    while (p < end && IsDigit(*p)) ++p;
  }
  const size_t int_digits = static_cast<size_t>(p - start) - (negative ? 1 : 0);
  bool plain_integer = true;
  if (p < end && *p == '.') {
    plain_integer = false;
    ++p;
    if (p == end || !IsDigit(*p)) return Fail("invalid number", start);
    while (p < end && IsDigit(*p)) ++p;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    plain_integer = false;
    ++p;
    if (p < end && (*p == '+' || *p == '-')) ++p;
    if (p == end || !IsDigit(*p)) return Fail("invalid number", start);
    while (p < end && IsDigit(*p)) ++p;
  }
  // Fast path: integers of up to 15 digits are exact doubles and already canonical (the grammar
  // excludes leading zeros), except for -0.
  if (plain_integer && int_digits <= 15) {
    if (int_digits == 1 && start[negative ? 1 : 0] == '0') {
      *w++ = '0';
    } else {
      const size_t len = static_cast<size_t>(p - start);
      std::memcpy(w, start, len);
      w += len;
    }
    return Cursor{p, w};
  }
  double d = 0;
  const auto r = std::from_chars(start, p, d);
  if (r.ec == std::errc::result_out_of_range) {
    if (OutOfRangeIsOverflow(start, p)) return Fail("number out of double range", start);
    d = 0;  // Underflow: JavaScript reads it as (-)0.
  } else if (r.ec != std::errc() || r.ptr != p || !std::isfinite(d)) {
    return Fail("number out of double range", start);
  }
  w = Reserve(p, w, kMaxNumberLength);
  return Cursor{p, WriteNumber(d, w)};
}

// Called at the '}' at `p` with the output cursor `w` after the last member. Returns `w`,
// relocated if the output buffer moved, or p == nullptr on a duplicate key.
Cursor Parser::FinishObject(const Frame& frame, const char* p, char* w) {
  const size_t count = members_.size() - frame.member_base;
  // Raw pointers: the (hardened) container accessors are measurably slower here.
  const Member* const members = members_.data() + frame.member_base;
  const char* const arena = arena_.data();
  const auto key = [members, arena, this](size_t i) {
    const Member& m = members[i];
    return std::string_view((m.key_in_arena ? arena : begin_) + m.key_begin, m.key_len);
  };
  bool sorted = true;
  for (size_t i = 1; i < count; ++i) {
    const int c = CompareUtf16Order(key(i - 1), key(i));
    if (c == 0) return Fail("duplicate object key", begin_ + members[i].src_offset);
    if (c > 0) sorted = false;
  }
  if (sorted) return Cursor{p, w};

  // Sort member indices by key.
  absl::InlinedVector<size_t, 16> order_storage(count);
  size_t* const order = order_storage.data();
  for (size_t i = 0; i < count; ++i) order[i] = i;
  if (count <= 16) {
    // Insertion sort: typical objects are small.
    for (size_t i = 1; i < count; ++i) {
      const size_t e = order[i];
      const std::string_view e_key = key(e);
      size_t j = i;
      for (; j > 0 && CompareUtf16Order(e_key, key(order[j - 1])) < 0; --j) {
        order[j] = order[j - 1];
      }
      order[j] = e;
    }
  } else {
    std::sort(order, order + count,
              [&key](size_t a, size_t b) { return CompareUtf16Order(key(a), key(b)) < 0; });
  }
  for (size_t i = 1; i < count; ++i) {
    if (CompareUtf16Order(key(order[i - 1]), key(order[i])) == 0) {
      const size_t offset =
          std::max(members[order[i - 1]].src_offset, members[order[i]].src_offset);
      return Fail("duplicate object key", begin_ + offset);
    }
  }
  // Copy the members' bytes past the output cursor, then write them back in order.
  const size_t region_begin = members[0].out_begin;
  const size_t region_len = members[count - 1].out_end - region_begin;
  w = Reserve(p, w, region_len);
  char* const scratch = w;
  std::memcpy(scratch, out_begin_ + region_begin, region_len);
  char* dst = out_begin_ + region_begin;
  for (size_t i = 0; i < count; ++i) {
    const Member& m = members[order[i]];
    if (i != 0) *dst++ = ',';
    const size_t n = m.out_end - m.out_begin;
    std::memcpy(dst, scratch + (m.out_begin - region_begin), n);
    dst += n;
  }
  return Cursor{p, w};
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
  std::string out;
  if (absl::Status s = CanonicalizeJsonTo(json_text, &out, max_depth); !s.ok()) return s;
  return out;
}

absl::Status CanonicalizeJsonTo(std::string_view json_text, std::string* out, int max_depth) {
#if defined(__cpp_exceptions)
  try {
#endif
    out->clear();
    Parser parser(json_text, max_depth, out);
    if (!parser.Run()) return parser.error();
    return absl::OkStatus();
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
