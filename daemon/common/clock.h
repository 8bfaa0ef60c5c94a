// Clock: the seam between the daemon and time, so tests can drive time by hand.
//
// Thread-safe: RealClock is stateless; FakeClock guards its time with a mutex.
#ifndef TOOLGATE_DAEMON_COMMON_CLOCK_H_
#define TOOLGATE_DAEMON_COMMON_CLOCK_H_

#include <chrono>
#include <mutex>

namespace toolgate {

using SystemTime = std::chrono::system_clock::time_point;
using SteadyTime = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time, for timestamps that leave the process.
  virtual SystemTime Now() const = 0;
  // Monotonic time, for timeouts and backoff.
  virtual SteadyTime Steady() const = 0;

  // The process-wide real clock.
  static Clock* Real();
};

class FakeClock : public Clock {
 public:
  explicit FakeClock(SystemTime start = SystemTime(std::chrono::seconds(1'700'000'000)))
      : now_(start) {}
  SystemTime Now() const override {
    std::lock_guard<std::mutex> l(mu_);
    return now_;
  }
  SteadyTime Steady() const override {
    std::lock_guard<std::mutex> l(mu_);
    return SteadyTime(now_.time_since_epoch());
  }
  void Advance(std::chrono::nanoseconds d) {
    std::lock_guard<std::mutex> l(mu_);
    now_ += std::chrono::duration_cast<SystemTime::duration>(d);
  }

 private:
  mutable std::mutex mu_;
  SystemTime now_;  // guarded by mu_
};

}  // namespace toolgate

#endif  // TOOLGATE_DAEMON_COMMON_CLOCK_H_
