#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "daemon/common/crypto.h"
#include "daemon/common/dir_lock.h"
#include "daemon/common/time_util.h"

namespace toolgate {
namespace {

TEST(Crypto, Sha256KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Crypto, HmacRfc4231Case2) {
  EXPECT_EQ(HmacSha256Hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(Crypto, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
}

TEST(Crypto, UuidsAreV4AndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    std::string u = NewUuid();
    ASSERT_EQ(u.size(), 36u);
    EXPECT_EQ(u[14], '4');
    EXPECT_TRUE(u[19] == '8' || u[19] == '9' || u[19] == 'a' || u[19] == 'b');
    EXPECT_TRUE(seen.insert(u).second);
  }
}

TEST(DirLock, OneHolderAtATimeNamedByPid) {
  char tmpl[] = "/tmp/toolgate-dirlock-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  {
    auto first = DirLock::Acquire(dir);
    ASSERT_TRUE(first.ok()) << first.status();
    // flock conflicts between two open file descriptions, even in one process.
    auto second = DirLock::Acquire(dir);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(second.status().message().find(absl::StrCat("(pid ", getpid(), ")")),
              std::string::npos)
        << second.status();
    EXPECT_NE(second.status().message().find(dir), std::string::npos);
  }
  // Released with its holder; a lock file left behind does not block the next one.
  EXPECT_TRUE(std::filesystem::exists(std::filesystem::path(dir) / DirLock::kFileName));
  EXPECT_TRUE(DirLock::Acquire(dir).ok());
  // A directory that cannot hold the lock file is an error naming the path.
  auto missing = DirLock::Acquire(dir + "/no/such/dir");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(missing.status().message().find("toolgated.lock"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Time, FormatIsRfc3339Utc) {
  const SystemTime t = SystemTime(std::chrono::seconds(1700000000)) + std::chrono::microseconds(42);
  EXPECT_EQ(FormatRfc3339(t), "2023-11-14T22:13:20.000042Z");
}

TEST(Time, ParseAcceptsTimezonesAndRoundTrips) {
  const SystemTime t = SystemTime(std::chrono::seconds(1700000000));
  EXPECT_EQ(*ParseRfc3339("2023-11-14T22:13:20Z"), t);
  EXPECT_EQ(*ParseRfc3339("2023-11-14T23:13:20+01:00"), t);
  EXPECT_EQ(*ParseRfc3339("2023-11-14T21:13:20.000-01:00"), t);
  EXPECT_EQ(*ParseRfc3339(FormatRfc3339(t)), t);
}

TEST(Time, ParseRejectsMissingTimezoneAndGarbage) {
  for (const char* bad :
       {"2023-11-14T22:13:20", "2023-11-14", "2023-13-14T22:13:20Z", "2023-11-14T22:13:20+0100",
        "yesterday", "2023-11-14T22:13:20Zjunk", "2023-11-14T22:13:20.",
        // Regression (event fuzz target): beyond 2262 the nanosecond count overflowed.
        "4052-01-01T00:00:00+02:00", "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z"}) {
    EXPECT_FALSE(ParseRfc3339(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace toolgate
