#include "daemon/normalize/jcs.h"

#include <openssl/evp.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace toolgate::normalize {
namespace {

using ::testing::HasSubstr;

struct Vector {
  const char* name;
  std::string input;
  std::string expected;
};

// RFC 8785 test data (testdata/input and testdata/output of the cyberphone/json-canonicalization
// repository, and the examples of RFC 8785 sections 3.2.2 and 3.2.3). Non-ASCII bytes are spelled
// as hex escapes (so that invisible characters stay visible), except in "french".
std::vector<Vector> RfcVectors() {
  return {
      {"arrays",
       R"([
  56,
  {
    "d": true,
    "10": null,
    "1": [ ]
  }
])",
       R"([56,{"1":[],"10":null,"d":true}])"},
      {"french",
       "{\n"
       "  \"peach\": \"This sorting order\",\n"
       "  \"péché\": \"is wrong according to French\",\n"
       "  \"pêche\": \"but canonicalization MUST\",\n"
       "  \"sin\":   \"ingnore locale\"\n"
       "}\n",
       "{\"peach\":\"This sorting order\",\"péché\":\"is wrong according to French\","
       "\"pêche\":\"but canonicalization MUST\",\"sin\":\"ingnore locale\"}"},
      {"structures",
       R"({
  "1": {"f": {"f": "hi","F": 5} ,"\n": 56.0},
  "10": { },
  "": "empty",
  "a": { },
  "111": [ { } ],
  "A": { }
})",
       R"({"":"empty","1":{"\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{}],"A":{},"a":{}})"},
      {"unicode",
       R"({
  "Unnormalized Unicode":"\u1e0d\u0307"
}
)",
       "{\"Unnormalized Unicode\":\"\xE1\xB8\x8D\xCC\x87\"}"},
      {"unicode_rfc",  // RFC 8785 appendix: no normalization of A + combining ring.
       R"({"Unnormalized Unicode":"A\u030a"})", "{\"Unnormalized Unicode\":\"A\xCC\x8A\"}"},
      {"values",
       R"({
  "numbers": [1E30, 4.50, 333333333.33333329, 2e-3, 0.000000000000000000000000001],
  "escaping": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
})",
       "{\"escaping\":\"\xE2\x82\xAC$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\",\"literals\":[null,true,"
       "false],\"numbers\":[1e+30,4.5,333333333.3333333,0.002,1e-27]}"},
      {"weird",
       R"({
  "\u20ac": "Euro Sign",
  "1": "One",
  "\u0080": "Control\u007f",
  "\ud83d\ude02": "Smiley",
  "\u00f6": "Latin Small Letter O With Diaeresis",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "</script>": "Browser Challenge"
}
)",
       "{\"1\":\"One\",\"</script>\":\"Browser Challenge\",\"\xC2\x80\":\"Control\x7F\","
       "\"\xC3\xB6\":\"Latin Small Letter O With Diaeresis\",\"\xE2\x82\xAC\":\"Euro Sign\","
       "\"\xF0\x9F\x98\x82\":\"Smiley\",\"\xEF\xAC\xB3\":\"Hebrew Letter Dalet With Dagesh\"}"},
      {"rfc_3_2_2",
       R"({
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
})",
       "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],"
       "\"string\":\"\xE2\x82\xAC$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"},
      {"rfc_3_2_3_sorting",
       R"({
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
})",
       "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\xC2\x80\":\"Control\",\"\xC3\xB6\":\"Latin "
       "Small Letter O With Diaeresis\",\"\xE2\x82\xAC\":\"Euro Sign\",\"\xF0\x9F\x98\x80\":"
       "\"Emoji: Grinning Face\",\"\xEF\xAC\xB3\":\"Hebrew Letter Dalet With Dagesh\"}"},
  };
}

// Further cases: numbers read from text, strings, ordering, whitespace.
std::vector<Vector> MoreVectors() {
  return {
      {"int", "1200", "1200"},
      {"neg_int", "-17", "-17"},
      {"zero", "0", "0"},
      {"neg_zero", "-0", "0"},
      {"neg_zero_float", "-0.0e5", "0"},
      {"one_point_zero", "1.0", "1"},
      {"exp_integer", "1e2", "100"},
      {"upper_exp", "1E+2", "100"},
      {"trailing_zeros", "4.50", "4.5"},
      {"fifteen_digits", "999999999999999", "999999999999999"},
      {"sixteen_digits", "1234567890123456", "1234567890123456"},
      {"2^53", "9007199254740992", "9007199254740992"},
      {"2^53+1_rounds", "9007199254740993", "9007199254740992"},
      {"big_integer", "123456789012345678901234567890", "1.2345678901234568e+29"},
      {"1e20_is_plain", "1e20", "100000000000000000000"},
      {"1e21_is_exp", "1e21", "1e+21"},
      {"21_digit_integer", "999999999999999999999", "1e+21"},
      {"small_plain", "0.000001", "0.000001"},
      {"small_exp", "0.0000001", "1e-7"},
      {"small_exp_digits", "0.00000015", "1.5e-7"},
      {"tenth", "0.1", "0.1"},
      {"float_sum", "0.30000000000000004", "0.30000000000000004"},
      {"min_subnormal", "5e-324", "5e-324"},
      {"min_subnormal_long", "4.9406564584124654e-324", "5e-324"},
      {"underflow_to_zero", "1e-400", "0"},
      {"neg_underflow_to_zero", "-1e-400", "0"},
      {"huge_exponent_zero", "0e999999999999999999999", "0"},
      {"long_mantissa_underflow", "0.00000000000000000000000000000000000000000000001e-300", "0"},
      {"max_double", "1.7976931348623157e308", "1.7976931348623157e+308"},
      {"long_fraction", "3.14159265358979323846264338327950288", "3.141592653589793"},
      {"neg_exp_form", "-1.25e-9", "-1.25e-9"},
      {"string_escapes", R"("\"\\\/\b\f\n\r\t")", R"("\"\\/\b\f\n\r\t")"},
      {"control_escapes", R"("\u0000\u0001\u001F\u007f")", "\"\\u0000\\u0001\\u001f\x7F\""},
      {"unicode_escapes_to_raw", R"("\u00e9\u00C9\u2028\uFFFF")",
       "\"\xC3\xA9\xC3\x89\xE2\x80\xA8\xEF\xBF\xBF\""},
      {"surrogate_pair", R"("\uD83D\uDE00")", "\"\xF0\x9F\x98\x80\""},
      {"raw_utf8_passthrough", "\"\xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF\"",
       "\"\xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF\""},
      {"slash_and_html", R"("</script>&<>'")", R"("</script>&<>'")"},
      {"whitespace", " \t\r\n[ 1 ,\n\t2 ,{ \"b\" : null , \"a\" : [ ] } ] \n",
       R"([1,2,{"a":[],"b":null}])"},
      {"empty_containers", R"({"a":{},"b":[],"c":[[]],"d":[{}]})",
       R"({"a":{},"b":[],"c":[[]],"d":[{}]})"},
      // UTF-16 order: U+1F600 (D83D DE00) < U+E000 < U+FFFF, though UTF-8 bytes say otherwise.
      {"utf16_order", "{\"\xEF\xBF\xBF\":3,\"\xEE\x80\x80\":2,\"\xF0\x9F\x98\x80\":1,\"z\":0}",
       "{\"z\":0,\"\xF0\x9F\x98\x80\":1,\"\xEE\x80\x80\":2,\"\xEF\xBF\xBF\":3}"},
      {"prefix_sorts_first", R"({"ab":1,"a":2,"":3,"b":4})", R"({"":3,"a":2,"ab":1,"b":4})"},
      {"escaped_keys_sort_decoded", R"({"b":1,"\u0061":2,"\n":3,"\u0009":4})",
       R"({"\t":4,"\n":3,"a":2,"b":1})"},
      {"nested_sort", R"({"b":{"y":1,"x":[{"q":1,"p":2}]},"a":0})",
       R"({"a":0,"b":{"x":[{"p":2,"q":1}],"y":1}})"},
      {"same_key_in_sibling_objects", R"([{"a":1},{"a":2}])", R"([{"a":1},{"a":2}])"},
      {"same_key_at_two_levels", R"({"a":{"a":1}})", R"({"a":{"a":1}})"},
      {"literals", "[true,false,null]", "[true,false,null]"},
      {"top_level_string", R"("x")", R"("x")"},
      {"tool_arguments",
       R"({"path":"/tmp/report.csv","mode":"w","rows":1200,"tags":["q3","finance"],)"
       R"("options":{"overwrite":true,"encoding":"utf-8"}})",
       R"({"mode":"w","options":{"encoding":"utf-8","overwrite":true},"path":"/tmp/report.csv",)"
       R"("rows":1200,"tags":["q3","finance"]})"},
  };
}

class JcsVectorTest : public ::testing::TestWithParam<Vector> {};

TEST_P(JcsVectorTest, Canonicalizes) {
  const Vector& v = GetParam();
  absl::StatusOr<std::string> got = CanonicalizeJson(v.input);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, v.expected);
}

TEST_P(JcsVectorTest, IsIdempotent) {
  const Vector& v = GetParam();
  absl::StatusOr<std::string> again = CanonicalizeJson(v.expected);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, v.expected);
}

TEST_P(JcsVectorTest, AppendCanonicalAgreesOnParsedValue) {
  const Vector& v = GetParam();
  const nlohmann::json parsed = nlohmann::json::parse(v.input, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(parsed.is_discarded());
  std::string out = "prefix:";
  ASSERT_TRUE(AppendCanonical(parsed, &out).ok());
  EXPECT_EQ(out, "prefix:" + v.expected);
}

std::string VectorName(const ::testing::TestParamInfo<Vector>& info) {
  std::string name;
  for (const char c : std::string_view(info.param.name)) {
    name.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Rfc8785, JcsVectorTest, ::testing::ValuesIn(RfcVectors()), VectorName);
INSTANTIATE_TEST_SUITE_P(More, JcsVectorTest, ::testing::ValuesIn(MoreVectors()), VectorName);

// RFC 8785 appendix B: IEEE-754 bit patterns and their ECMAScript serialization.
struct NumberVector {
  uint64_t bits;
  const char* expected;
};

class JcsNumberTest : public ::testing::TestWithParam<NumberVector> {};

double FromBits(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof(d));
  return d;
}

TEST_P(JcsNumberTest, AppendCanonicalSerializesDouble) {
  std::string out;
  ASSERT_TRUE(AppendCanonical(nlohmann::json(FromBits(GetParam().bits)), &out).ok());
  EXPECT_EQ(out, GetParam().expected);
}

TEST_P(JcsNumberTest, CanonicalizeJsonRoundTripsText) {
  const double d = FromBits(GetParam().bits);
  char text[64];
  std::snprintf(text, sizeof(text), "%.17g", d);  // Exact round trip, not canonical.
  absl::StatusOr<std::string> got = CanonicalizeJson(text);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, GetParam().expected) << "from " << text;
  // The canonical text parses back to the same double (except -0, written as 0).
  absl::StatusOr<std::string> again = CanonicalizeJson(GetParam().expected);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, GetParam().expected);
}

INSTANTIATE_TEST_SUITE_P(
    AppendixB, JcsNumberTest,
    ::testing::Values(NumberVector{0x0000000000000000, "0"}, NumberVector{0x8000000000000000, "0"},
                      NumberVector{0x0000000000000001, "5e-324"},
                      NumberVector{0x8000000000000001, "-5e-324"},
                      NumberVector{0x7fefffffffffffff, "1.7976931348623157e+308"},
                      NumberVector{0xffefffffffffffff, "-1.7976931348623157e+308"},
                      NumberVector{0x4340000000000000, "9007199254740992"},
                      NumberVector{0xc340000000000000, "-9007199254740992"},
                      NumberVector{0x4430000000000000, "295147905179352830000"},
                      NumberVector{0x44b52d02c7e14af5, "9.999999999999997e+22"},
                      NumberVector{0x44b52d02c7e14af6, "1e+23"},
                      NumberVector{0x44b52d02c7e14af7, "1.0000000000000001e+23"},
                      NumberVector{0x444b1ae4d6e2ef4e, "999999999999999700000"},
                      NumberVector{0x444b1ae4d6e2ef4f, "999999999999999900000"},
                      NumberVector{0x444b1ae4d6e2ef50, "1e+21"},
                      NumberVector{0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"},
                      NumberVector{0x3eb0c6f7a0b5ed8d, "0.000001"},
                      NumberVector{0x41b3de4355555553, "333333333.3333332"},
                      NumberVector{0x41b3de4355555554, "333333333.33333325"},
                      NumberVector{0x41b3de4355555555, "333333333.3333333"},
                      NumberVector{0x41b3de4355555556, "333333333.3333334"},
                      NumberVector{0x41b3de4355555557, "333333333.33333343"},
                      NumberVector{0xbecbf647612f3696, "-0.0000033333333333333333"},
                      NumberVector{0x43143ff3c1cb0959, "1424953923781206.2"}));

TEST(JcsNumberTest, NonFiniteAppendixBValuesAreRejected) {
  for (const uint64_t bits :
       {uint64_t{0x7fffffffffffffff}, uint64_t{0x7ff0000000000000}, uint64_t{0xfff0000000000000}}) {
    std::string out = "keep";
    const absl::Status s = AppendCanonical(nlohmann::json(FromBits(bits)), &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << std::hex << bits;
    EXPECT_EQ(out, "keep");
  }
}

// Errors: input, expected message fragment (which includes the byte offset).
struct ErrorVector {
  const char* name;
  std::string input;
  std::string message;
};

class JcsErrorTest : public ::testing::TestWithParam<ErrorVector> {};

TEST_P(JcsErrorTest, IsRejected) {
  const ErrorVector& v = GetParam();
  absl::StatusOr<std::string> got = CanonicalizeJson(v.input);
  ASSERT_FALSE(got.ok()) << "accepted as " << *got;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr(v.message));
}

std::string ErrorName(const ::testing::TestParamInfo<ErrorVector>& info) {
  std::string name;
  for (const char c : std::string_view(info.param.name)) {
    name.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    Errors, JcsErrorTest,
    ::testing::Values(
        ErrorVector{"empty", "", "unexpected end of input at byte 0"},
        ErrorVector{"only_whitespace", "  \n", "unexpected end of input at byte 3"},
        ErrorVector{"not_json", "hello", "unexpected character at byte 0"},
        ErrorVector{"trailing_garbage", "{\"a\":1} x",
                    "unexpected data after JSON value at byte 8"},
        ErrorVector{"two_values", "1 2", "unexpected data after JSON value at byte 2"},
        ErrorVector{"leading_zero", "01", "unexpected data after JSON value at byte 1"},
        ErrorVector{"unclosed_object", "{\"a\":1", "unexpected end of input at byte 6"},
        ErrorVector{"unclosed_array", "[1,2", "unexpected end of input at byte 4"},
        ErrorVector{"trailing_comma_array", "[1,]", "unexpected character at byte 3"},
        ErrorVector{"trailing_comma_object", "{\"a\":1,}", "expected string key at byte 7"},
        ErrorVector{"missing_colon", "{\"a\" 1}", "expected ':' at byte 5"},
        ErrorVector{"missing_comma", "[1 2]", "expected ',' or ']' at byte 3"},
        ErrorVector{"unquoted_key", "{a:1}", "expected string key at byte 1"},
        ErrorVector{"single_quotes", "['a']", "unexpected character at byte 1"},
        ErrorVector{"comment", "[1/*x*/]", "expected ',' or ']' at byte 2"},
        ErrorVector{"bom", "\xEF\xBB\xBF{}", "unexpected character at byte 0"},
        ErrorVector{"nan", "NaN", "unexpected character at byte 0"},
        ErrorVector{"infinity", "[Infinity]", "unexpected character at byte 1"},
        ErrorVector{"neg_infinity", "-Infinity", "invalid number at byte 0"},
        ErrorVector{"truncated_literal", "tru", "unexpected character at byte 0"},
        ErrorVector{"plus_sign", "+1", "unexpected character at byte 0"},
        ErrorVector{"bare_minus", "-", "invalid number at byte 0"},
        ErrorVector{"dot_without_digits", "1.", "invalid number at byte 0"},
        ErrorVector{"leading_dot", ".5", "unexpected character at byte 0"},
        ErrorVector{"empty_exponent", "[1e]", "invalid number at byte 1"},
        ErrorVector{"hex_number", "0x10", "unexpected data after JSON value at byte 1"},
        ErrorVector{"overflow", "[1e309]", "number out of double range at byte 1"},
        ErrorVector{"neg_overflow", "-1.8e308", "number out of double range at byte 0"},
        ErrorVector{"huge_integer", std::string(400, '9'), "number out of double range at byte 0"},
        ErrorVector{"unterminated_string", "\"abc", "unterminated string at byte 0"},
        ErrorVector{"raw_newline_in_string", "\"a\nb\"", "unescaped control character at byte 2"},
        ErrorVector{"raw_nul_in_string", std::string("\"a\0\"", 4),
                    "unescaped control character at byte 2"},
        ErrorVector{"bad_escape", R"("\x")", "invalid escape at byte 1"},
        ErrorVector{"short_unicode_escape", R"("\u12")", "invalid \\u escape at byte 1"},
        ErrorVector{"lone_high_surrogate", R"("\ud800")", "lone surrogate escape at byte 1"},
        ErrorVector{"lone_low_surrogate", R"(["\udc00"])", "lone surrogate escape at byte 2"},
        ErrorVector{"high_then_non_low", R"("\ud800\u0041")", "lone surrogate escape at byte 1"},
        ErrorVector{"high_then_high", R"("\ud800\ud800")", "lone surrogate escape at byte 1"},
        ErrorVector{"high_then_char", R"("\ud800x")", "lone surrogate escape at byte 1"},
        ErrorVector{"invalid_utf8_byte", "\"a\xFF\"", "invalid UTF-8 at byte 2"},
        ErrorVector{"stray_continuation", "\"\x80\"", "invalid UTF-8 at byte 1"},
        ErrorVector{"overlong_slash", "\"\xC0\xAF\"", "invalid UTF-8 at byte 1"},
        ErrorVector{"overlong_3byte", "\"\xE0\x80\xAF\"", "invalid UTF-8 at byte 1"},
        ErrorVector{"utf8_surrogate", "\"\xED\xA0\x80\"", "invalid UTF-8 at byte 1"},
        ErrorVector{"above_10ffff", "\"\xF4\x90\x80\x80\"", "invalid UTF-8 at byte 1"},
        ErrorVector{"truncated_sequence", "\"\xE2\x82\"", "invalid UTF-8 at byte 1"},
        ErrorVector{"invalid_utf8_in_key", "{\"\xFE\":1}", "invalid UTF-8 at byte 2"},
        ErrorVector{"invalid_utf8_outside_string", "[\xC3\xA9]", "unexpected character at byte 1"},
        ErrorVector{"duplicate_key", R"({"a":1,"b":2,"a":3})", "duplicate object key at byte 13"},
        ErrorVector{"duplicate_key_adjacent", R"({"a":1,"a":1})", "duplicate object key at byte 7"},
        ErrorVector{"duplicate_key_via_escape", R"({"a":1,"\u0061":2})",
                    "duplicate object key at byte 7"},
        ErrorVector{"duplicate_key_nested", R"([{"x":{"k":1,"k":2}}])",
                    "duplicate object key at byte 13"},
        ErrorVector{"too_deep", std::string(129, '[') + std::string(129, ']'),
                    "nesting deeper than max_depth at byte 128"}),
    ErrorName);

TEST(JcsDepthTest, AcceptsExactlyMaxDepth) {
  const std::string ok = std::string(128, '[') + std::string(128, ']');
  absl::StatusOr<std::string> got = CanonicalizeJson(ok);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, ok);
}

TEST(JcsDepthTest, HonorsCustomMaxDepth) {
  EXPECT_TRUE(CanonicalizeJson(R"({"a":[1]})", 2).ok());
  absl::StatusOr<std::string> got = CanonicalizeJson(R"({"a":[[1]]})", 2);
  ASSERT_FALSE(got.ok());
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("max_depth at byte 6"));
  EXPECT_TRUE(CanonicalizeJson("17", 0).ok());
  EXPECT_FALSE(CanonicalizeJson("[]", 0).ok());
}

TEST(JcsDepthTest, DeepInputWithLargeLimitDoesNotUseStack) {
  const int depth = 200000;
  std::string deep = std::string(depth, '[') + std::string(depth, ']');
  absl::StatusOr<std::string> got = CanonicalizeJson(deep, depth);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, deep);
}

TEST(JcsTest, ManyMembersAreSorted) {
  // Keys k999..k0 in reverse order; canonical order is by UTF-16 code units ("k1" < "k10").
  nlohmann::json expected_object = nlohmann::json::object();
  std::string input = "{";
  for (int i = 999; i >= 0; --i) {
    input += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + (i ? "," : "}");
    expected_object["k" + std::to_string(i)] = i;
  }
  std::string expected;
  ASSERT_TRUE(AppendCanonical(expected_object, &expected).ok());
  absl::StatusOr<std::string> got = CanonicalizeJson(input);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, expected);
  EXPECT_EQ(got->substr(0, 20), R"({"k0":0,"k1":1,"k10")");
}

// The string scanner works 8 bytes at a time; put each kind of special byte at every offset.
TEST(JcsTest, SpecialBytesAtEveryOffsetInString) {
  for (int k = 0; k < 24; ++k) {
    const std::string pad(k, 'a');
    const std::string tail(24 - k, 'b');
    SCOPED_TRACE(k);
    absl::StatusOr<std::string> got = CanonicalizeJson("\"" + pad + "\x01" + tail + "\"");
    ASSERT_FALSE(got.ok());
    EXPECT_THAT(std::string(got.status().message()),
                HasSubstr("unescaped control character at byte " + std::to_string(k + 1)));
    got = CanonicalizeJson("\"" + pad + "\xFF" + tail + "\"");
    ASSERT_FALSE(got.ok());
    EXPECT_THAT(std::string(got.status().message()),
                HasSubstr("invalid UTF-8 at byte " + std::to_string(k + 1)));
    got = CanonicalizeJson("\"" + pad + "\\\"\\u0041\\/" + tail + "\"");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, "\"" + pad + "\\\"A/" + tail + "\"");
    got = CanonicalizeJson("\"" + pad + "\xC3\xA9\x7F~ " + tail + "\"");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, "\"" + pad + "\xC3\xA9\x7F~ " + tail + "\"");
    got = CanonicalizeJson("\"" + pad);  // Unterminated right after the run.
    ASSERT_FALSE(got.ok());
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("unterminated string at byte 0"));
  }
}

TEST(JcsTest, LongEscapedKeysSortAndDetectDuplicates) {
  const std::string long_a = "\\u0061" + std::string(40, 'x');  // "a" + 40 x, escaped.
  absl::StatusOr<std::string> got =
      CanonicalizeJson("{\"b\":{\"" + long_a + "\":1,\"\\n\":2},\"" + long_a + "\":3}");
  ASSERT_TRUE(got.ok()) << got.status();
  const std::string plain_a = "a" + std::string(40, 'x');
  EXPECT_EQ(*got, "{\"" + plain_a + "\":3,\"b\":{\"\\n\":2,\"" + plain_a + "\":1}}");
  got = CanonicalizeJson("{\"" + plain_a + "\":1,\"z\":0,\"" + long_a + "\":2}");
  ASSERT_FALSE(got.ok());
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("duplicate object key"));
}

// Numbers such as 1e20 expand (4 -> 21 bytes), which forces the output buffer to grow, also
// while an object is being reordered.
TEST(JcsTest, OutputLargerThanInput) {
  std::string array = "[";
  for (int i = 0; i < 300; ++i) array += "1e20,";
  array += "-1e-7]";
  const std::string input =
      "{\"z\":" + array + ",\"a\":" + array + ",\"m\":{\"y\":" + array + ",\"x\":1e20}}";
  absl::StatusOr<std::string> got = CanonicalizeJson(input);
  ASSERT_TRUE(got.ok()) << got.status();
  std::string expected;
  ASSERT_TRUE(AppendCanonical(nlohmann::json::parse(input), &expected).ok());
  EXPECT_EQ(*got, expected);
  EXPECT_GT(got->size(), 4 * input.size());
}

TEST(JcsTest, OrderAndWhitespaceDoNotChangeCanonicalForm) {
  absl::StatusOr<std::string> a =
      CanonicalizeJson(R"({"b":[1,2.0,3e0],"a":{"y":"\u00e9","x":null}})");
  absl::StatusOr<std::string> b = CanonicalizeJson(
      "{ \"a\" : { \"x\" : null , \"y\" : \"\xC3\xA9\" } ,\n \"b\" : [ 1 , 2 , 3 ] }");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr), 1);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) {
    static constexpr char kHex[] = "0123456789abcdef";
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xF]);
  }
  return hex;
}

TEST(JcsTest, Sha256OfCanonicalFormIsStable) {
  // Canonical form: {"mode":"w","options":{"encoding":"utf-8","overwrite":true},
  // "path":"/tmp/report.csv","rows":1200,"tags":["q3","finance"]}; its SHA-256 was computed
  // independently with sha256sum.
  constexpr char kExpected[] = "1095a1f5e5fa82dc9365285f3b9d31945c3836ad1956a9d23bd6ecabd4360ec9";
  for (const char* input : {
           R"({"path":"/tmp/report.csv","mode":"w","rows":1200,"tags":["q3","finance"],)"
           R"("options":{"overwrite":true,"encoding":"utf-8"}})",
           R"({"tags":["q3","finance"],"rows":1.2e3,"path":"\/tmp\/report.csv",)"
           R"("options":{"encoding":"utf\u002d8","overwrite":true},"mode":"\u0077"})",
           "{\n  \"rows\": 1200.000,\n  \"options\": {\"overwrite\": true, \"encoding\": "
           "\"utf-8\"},\n  \"mode\": \"w\", \"path\": \"/tmp/report.csv\",\n  \"tags\": [\"q3\", "
           "\"finance\"]\n}\n",
       }) {
    absl::StatusOr<std::string> canonical = CanonicalizeJson(input);
    ASSERT_TRUE(canonical.ok()) << canonical.status();
    EXPECT_EQ(Sha256Hex(*canonical), kExpected) << *canonical;
  }
}

TEST(AppendCanonicalTest, SerializesBuiltValues) {
  nlohmann::json envelope = {
      {"zeta", nullptr},
      {"event", "tool_call"},
      {"seq", 42},
      {"big", std::numeric_limits<uint64_t>::max()},
      {"neg", std::numeric_limits<int64_t>::min()},
      {"ratio", 0.5},
      {"flags", {true, false}},
      {"\xEF\xBF\xBF", 1},      // U+FFFF
      {"\xF0\x9F\x98\x80", 2},  // U+1F600: before U+FFFF in UTF-16 order.
      {"ctl", std::string("a\x01\"\\\n", 5)},
  };
  std::string out;
  ASSERT_TRUE(AppendCanonical(envelope, &out).ok());
  EXPECT_EQ(out,
            "{\"big\":18446744073709552000,\"ctl\":\"a\\u0001\\\"\\\\\\n\",\"event\":\"tool_call\","
            "\"flags\":[true,false],\"neg\":-9223372036854776000,\"ratio\":0.5,\"seq\":42,"
            "\"zeta\":null,\"\xF0\x9F\x98\x80\":2,\"\xEF\xBF\xBF\":1}");
}

TEST(AppendCanonicalTest, RejectsInvalidValuesAndKeepsOutput) {
  const std::vector<nlohmann::json> bad = {
      nlohmann::json(std::numeric_limits<double>::quiet_NaN()),
      nlohmann::json(std::numeric_limits<double>::infinity()),
      nlohmann::json(-std::numeric_limits<double>::infinity()),
      nlohmann::json("bad \xC0\xAF utf8"),
      nlohmann::json("lone surrogate \xED\xA0\x80"),
      nlohmann::json::object({{"k\xFF", 1}}),
      nlohmann::json::array({1, {{"a", std::nan("")}}}),
      nlohmann::json::binary({1, 2, 3}),
      nlohmann::json(nlohmann::json::value_t::discarded),
  };
  for (const nlohmann::json& value : bad) {
    std::string out = "unchanged";
    const absl::Status s = AppendCanonical(value, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(out, "unchanged");
  }
}

TEST(AppendCanonicalTest, RejectsExcessiveNesting) {
  nlohmann::json deep = nlohmann::json::array();
  for (int i = 0; i < 600; ++i) deep = nlohmann::json::array({std::move(deep)});
  std::string out;
  EXPECT_EQ(AppendCanonical(deep, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(out.empty());
}

TEST(AppendCanonicalTest, StringAndNumberHelpers) {
  std::string out = "[";
  ASSERT_TRUE(AppendCanonicalString("a\"\\\x1f/\xC3\xA9\x7F\n", &out));
  out += ',';
  AppendCanonicalNumber(-0.0, &out);
  out += ',';
  AppendCanonicalNumber(1e21, &out);
  out += ',';
  AppendCanonicalNumber(0.000001, &out);
  out += ',';
  AppendCanonicalNumber(1.5e-7, &out);
  out += ',';
  AppendCanonicalNumber(123456789.125, &out);
  out += ']';
  EXPECT_EQ(out, "[\"a\\\"\\\\\\u001f/\xC3\xA9\x7F\\n\",0,1e+21,0.000001,1.5e-7,123456789.125]");
  std::string bad;
  EXPECT_FALSE(AppendCanonicalString("\xED\xA0\x80", &bad));
}

// The string writer also works 8 bytes at a time over plain ASCII: put each kind of byte that
// leaves that path at every offset of a 24-byte string.
TEST(AppendCanonicalTest, SpecialBytesAtEveryOffsetOfAWrittenString) {
  const struct {
    std::string in, out;
  } kCases[] = {{"\x01", "\\u0001"}, {"\x1f", "\\u001f"}, {"\n", "\\n"},
                {"\"", "\\\""},      {"\\", "\\\\"},      {"\xC3\xA9", "\xC3\xA9"},
                {"\x7F", "\x7F"},    {" ", " "},          {"\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80"}};
  for (int k = 0; k < 24; ++k) {
    const std::string pad(k, 'a');
    const std::string tail(24 - k, 'b');
    SCOPED_TRACE(k);
    for (const auto& c : kCases) {
      std::string out;
      ASSERT_TRUE(AppendCanonicalString(pad + c.in + tail, &out)) << c.out;
      EXPECT_EQ(out, "\"" + pad + c.out + tail + "\"");
    }
    std::string bad;
    EXPECT_FALSE(AppendCanonicalString(pad + "\xFF" + tail, &bad));
    EXPECT_FALSE(AppendCanonicalString(pad + "\xC3", &bad));  // cut at the end
  }
  std::string out;
  ASSERT_TRUE(AppendCanonicalString(std::string(64, 'x'), &out));
  EXPECT_EQ(out, "\"" + std::string(64, 'x') + "\"");
}

}  // namespace
}  // namespace toolgate::normalize
