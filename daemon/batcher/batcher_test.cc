#include "daemon/batcher/batcher.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <future>

namespace toolgate::batcher {
namespace {

normalize::NormalizedEvent Ev(int i) {
  normalize::NormalizedEvent e;
  e.session_id = "s";
  e.agent_id = "a";
  e.event_id = "id-" + std::to_string(i);
  e.SetParts(R"({"eventId":"id-)" + std::to_string(i) + R"(","payload":{})",
             R"(,"sessionId":"s"})");
  return e;
}

TEST(Batcher, CutsBySizeAndWaitsForMaxDelay) {
  const auto dir =
      std::filesystem::path(::testing::TempDir()) / ("batcher_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  FakeClock clock;
  spool::SpoolOptions o;
  o.path = (dir / "spool.db").string();
  o.standalone = false;
  auto spool = spool::Spool::Open(o, &clock);
  ASSERT_TRUE(spool.ok());
  std::vector<normalize::NormalizedEvent> evs;
  for (int i = 0; i < 7; ++i) evs.push_back(Ev(i));
  std::promise<void> done;
  (*spool)->Append(std::move(evs), [&](const absl::Status&) { done.set_value(); });
  done.get_future().wait();

  auto reader = (*spool)->NewReader();
  config::BatchOptions bo;
  bo.max_events = 3;
  bo.max_delay = std::chrono::milliseconds(200);
  Batcher b(bo, reader->get(), &clock);
  std::vector<spool::StoredEvent> out;
  SteadyTime wake{};
  ASSERT_TRUE(b.Next(false, &out, &wake).ok());
  EXPECT_EQ(out.size(), 3u);
  ASSERT_TRUE(b.Next(false, &out, &wake).ok());
  EXPECT_EQ(out.size(), 3u);
  ASSERT_TRUE(b.Next(false, &out, &wake).ok());
  EXPECT_TRUE(out.empty());  // one event left: waits for max_delay
  EXPECT_EQ(wake, clock.Steady() + std::chrono::milliseconds(200));
  clock.Advance(std::chrono::milliseconds(200));
  ASSERT_TRUE(b.Next(false, &out, &wake).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_NE(out[0].body.find("id-6"), std::string::npos);
  ASSERT_TRUE(b.Next(true, &out, &wake).ok());
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace toolgate::batcher
