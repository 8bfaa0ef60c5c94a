// CircuitBreaker: stops asking a failing upstream, and probes it again later.
//
// Closed: every call goes through; `failures` consecutive failures open it. Open: calls are
// refused (the caller answers with its failure mode) until `reset_after` has passed; then the
// next call is let through alone as a probe (half-open) — its success closes the breaker, its
// failure opens it again for another `reset_after`. Time is passed in, so tests drive it.
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_POLICY_CIRCUIT_BREAKER_H_
#define TOOLGATE_DAEMON_POLICY_CIRCUIT_BREAKER_H_

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string_view>

namespace toolgate::policy {

class CircuitBreaker {
 public:
  enum class State { kClosed, kOpen, kHalfOpen };
  using Time = std::chrono::steady_clock::time_point;

  CircuitBreaker(uint32_t failures, std::chrono::milliseconds reset_after)
      : threshold_(failures == 0 ? 1 : failures), reset_after_(reset_after) {}

  // May a call go out now? In the open state, true once per reset period (the probe).
  bool Allow(Time now) {
    std::lock_guard<std::mutex> l(mu_);
    switch (state_) {
      case State::kClosed:
        return true;
      case State::kHalfOpen:
        return false;  // one probe at a time
      case State::kOpen:
        if (now - opened_at_ < reset_after_) return false;
        state_ = State::kHalfOpen;
        return true;
    }
    return false;
  }

  void OnSuccess() {
    std::lock_guard<std::mutex> l(mu_);
    state_ = State::kClosed;
    consecutive_ = 0;
  }

  void OnFailure(Time now) {
    std::lock_guard<std::mutex> l(mu_);
    ++consecutive_;
    if (state_ == State::kHalfOpen || consecutive_ >= threshold_) {
      if (state_ != State::kOpen) ++opened_;
      state_ = State::kOpen;
      opened_at_ = now;
    }
  }

  State state() const {
    std::lock_guard<std::mutex> l(mu_);
    return state_;
  }
  uint64_t times_opened() const {
    std::lock_guard<std::mutex> l(mu_);
    return opened_;
  }

  static std::string_view Name(State s) {
    switch (s) {
      case State::kClosed:
        return "closed";
      case State::kOpen:
        return "open";
      case State::kHalfOpen:
        return "half_open";
    }
    return "";
  }

 private:
  const uint32_t threshold_;
  const std::chrono::milliseconds reset_after_;
  mutable std::mutex mu_;
  State state_ = State::kClosed;  // guarded by mu_
  uint32_t consecutive_ = 0;      // guarded by mu_
  Time opened_at_{};              // guarded by mu_
  uint64_t opened_ = 0;           // guarded by mu_
};

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_CIRCUIT_BREAKER_H_
