// RateState: the mutable half of the policy engine — the call counters behind `rate_limit` and
// `budget` rules. A compiled RuleSet is immutable; everything that changes from call to call
// lives here, so one RateState can outlive many RuleSets (hot reload keeps the counts of every
// rule whose id, limit and scope are unchanged, because counters are keyed by those).
//
// Two kinds of counter, each identified by a 64-bit counter id (chosen by the RuleSet) and a
// scope key (a session id, an agent id, or "" for the global scope):
//   - window counters: calls in a sliding window, approximated with two fixed windows aligned to
//     multiples of the window length (the count of the current window plus the previous window's
//     count weighted by the part of it that is still inside the sliding window). Exact while all
//     calls fall in one fixed window; otherwise off by at most the previous window's rounding.
//   - total counters: calls counted since the counter was created.
//
// Memory is bounded: at most `max_keys` counters are kept. Each shard keeps its counters in
// least-recently-used order; a counter untouched for `idle_ttl`, or the least recently used one
// when the shard is full, is dropped when a call touches that shard. Dropping a window counter
// that has been idle for longer than its window changes nothing; dropping a total counter
// restarts that budget (documented in docs/policy.md).
//
// Allocation: counting on an existing counter never allocates; creating a counter (the first call
// of a new session or agent to a rate-limited rule) allocates one list node and one map node.
//
// Thread-safe: counters are split over 16 shards, each behind its own mutex, held only for the
// update of one counter.
#ifndef TOOLGATE_DAEMON_POLICY_RATE_STATE_H_
#define TOOLGATE_DAEMON_POLICY_RATE_STATE_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "daemon/common/clock.h"

namespace toolgate::policy {

struct RateStateOptions {
  // Counters kept at most (all shards together); beyond, the least recently used are dropped.
  // About 200 bytes each plus the scope key. Default 100,000 (about 20-30 MiB at worst).
  size_t max_keys = 100'000;
  // A counter not touched for this long is dropped (a budget then starts again). Default 24 h.
  std::chrono::nanoseconds idle_ttl = std::chrono::hours(24);
};

class RateState {
 public:
  explicit RateState(RateStateOptions options = {});
  RateState(const RateState&) = delete;
  RateState& operator=(const RateState&) = delete;

  // Counts one call at `now` on the window counter (`counter`, `key`) with window length
  // `window` (> 0) and returns the estimated number of calls in the sliding window ending at
  // `now`, this one included (so the first call returns 1).
  double CountInWindow(uint64_t counter, std::string_view key, std::chrono::nanoseconds window,
                       SystemTime now);

  // Counts one call on the total counter (`counter`, `key`) and returns the number of calls
  // counted on it, this one included.
  uint64_t CountTotal(uint64_t counter, std::string_view key, SystemTime now);

  // Counters currently kept.
  size_t size() const;
  // Counters dropped so far (idle or pushed out).
  uint64_t evicted() const { return evicted_.load(std::memory_order_relaxed); }

 private:
  static constexpr size_t kShards = 16;

  struct Counter {
    uint64_t id;
    std::string key;
    SystemTime last_used;
    int64_t window_index = 0;  // window counters: index of the current fixed window
    uint64_t current = 0;      // calls in the current fixed window, or the total
    uint64_t previous = 0;     // calls in the fixed window before it
  };
  struct KeyView {
    uint64_t id;
    std::string_view key;  // points into the Counter's own key
    bool operator==(const KeyView& o) const { return id == o.id && key == o.key; }
  };
  struct KeyHash {
    size_t operator()(const KeyView& k) const;
  };
  using Lru = std::list<Counter>;
  struct Shard {
    mutable std::mutex mu;
    Lru lru;                                                  // guarded by mu; front = newest
    std::unordered_map<KeyView, Lru::iterator, KeyHash> map;  // guarded by mu
  };

  // Finds or creates the counter and moves it to the front. Requires shard.mu.
  Counter& Touch(Shard& shard, const KeyView& k, SystemTime now);
  Shard& ShardFor(const KeyView& k);

  const RateStateOptions options_;
  const size_t per_shard_;
  std::array<Shard, kShards> shards_;
  std::atomic<uint64_t> evicted_{0};
};

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_RATE_STATE_H_
