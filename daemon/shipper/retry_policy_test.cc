#include "daemon/shipper/retry_policy.h"

#include <gtest/gtest.h>

namespace toolgate::shipper {
namespace {

using std::chrono::milliseconds;

TEST(Classify, Table) {
  struct Case {
    long status;
    bool transport;
    ShipAction want;
  } cases[] = {
      {200, false, ShipAction::kOk},         {202, false, ShipAction::kOk},
      {408, false, ShipAction::kRetry},      {429, false, ShipAction::kRetry},
      {500, false, ShipAction::kRetry},      {502, false, ShipAction::kRetry},
      {503, false, ShipAction::kRetry},      {504, false, ShipAction::kRetry},
      {0, true, ShipAction::kRetry},         {202, true, ShipAction::kRetry},
      {401, false, ShipAction::kAuthPause},  {403, false, ShipAction::kAuthPause},
      {400, false, ShipAction::kDeadLetter}, {404, false, ShipAction::kDeadLetter},
      {409, false, ShipAction::kDeadLetter}, {422, false, ShipAction::kDeadLetter},
      {413, false, ShipAction::kDeadLetter}, {501, false, ShipAction::kDeadLetter},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(Classify(c.status, c.transport), c.want) << c.status << " " << c.transport;
  }
}

TEST(RetryAfter, SecondsAndHttpDate) {
  const SystemTime now = std::chrono::system_clock::from_time_t(1445412480);  // 07:28:00 GMT
  EXPECT_EQ(*ParseRetryAfter("3", now), milliseconds(3000));
  EXPECT_EQ(*ParseRetryAfter(" 120 ", now), milliseconds(120000));
  EXPECT_EQ(*ParseRetryAfter("Wed, 21 Oct 2015 07:28:10 GMT", now), milliseconds(10000));
  EXPECT_EQ(*ParseRetryAfter("Wed, 21 Oct 2015 07:00:00 GMT", now), milliseconds(0));
  EXPECT_FALSE(ParseRetryAfter("", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("soon", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("-5", now).has_value());
}

TEST(Backoff, FullJitterWithinDoublingBoundCappedAtMax) {
  const milliseconds initial(500), max(30000);
  EXPECT_EQ(BackoffDelay(1, initial, max, 0.0), milliseconds(0));
  EXPECT_EQ(BackoffDelay(1, initial, max, 0.999), milliseconds(499));
  EXPECT_EQ(BackoffDelay(3, initial, max, 0.5), milliseconds(1000));    // bound 2000
  EXPECT_EQ(BackoffDelay(10, initial, max, 0.5), milliseconds(15000));  // capped at 30000
  EXPECT_EQ(BackoffDelay(1000, initial, max, 0.999), milliseconds(29970));
}

}  // namespace
}  // namespace toolgate::shipper
