#include "daemon/policy/rate_state.h"

#include <algorithm>
#include <functional>

namespace toolgate::policy {
namespace {

// Floor division of nanosecond counts (times before the epoch round down too).
int64_t FloorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

}  // namespace

size_t RateState::KeyHash::operator()(const KeyView& k) const {
  const uint64_t h = std::hash<std::string_view>{}(k.key);
  return static_cast<size_t>(h ^ (k.id * 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2)));
}

RateState::RateState(RateStateOptions options)
    : options_(options), per_shard_(std::max<size_t>(1, options.max_keys / kShards)) {}

RateState::Shard& RateState::ShardFor(const KeyView& k) {
  // Use high bits, so the shard does not correlate with the bucket inside the shard's map.
  const uint64_t h = KeyHash{}(k)*0x9E3779B97F4A7C15ull;
  return shards_[(h >> 60) % kShards];
}

RateState::Counter& RateState::Touch(Shard& shard, const KeyView& k, SystemTime now) {
  auto it = shard.map.find(k);
  if (it != shard.map.end()) {
    shard.lru.splice(shard.lru.begin(), shard.lru, it->second);
    Counter& c = *it->second;
    c.last_used = now;
    return c;
  }
  // Make room before adding: drop counters idle too long, then the oldest while full.
  while (!shard.lru.empty()) {
    const Counter& oldest = shard.lru.back();
    if (shard.lru.size() < per_shard_ && now - oldest.last_used <= options_.idle_ttl) break;
    shard.map.erase(KeyView{oldest.id, oldest.key});
    shard.lru.pop_back();
    evicted_.fetch_add(1, std::memory_order_relaxed);
  }
  shard.lru.push_front(Counter{k.id, std::string(k.key), now});
  Counter& c = shard.lru.front();
  shard.map.emplace(KeyView{c.id, c.key}, shard.lru.begin());
  return c;
}

double RateState::CountInWindow(uint64_t counter, std::string_view key,
                                std::chrono::nanoseconds window, SystemTime now) {
  const int64_t len = std::max<int64_t>(1, window.count());
  const int64_t t =
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  const int64_t index = FloorDiv(t, len);
  const KeyView k{counter, key};
  Shard& shard = ShardFor(k);
  std::lock_guard<std::mutex> lock(shard.mu);
  Counter& c = Touch(shard, k, now);
  if (c.current == 0 && c.previous == 0) {
    c.window_index = index;
  } else if (index == c.window_index + 1) {
    c.previous = c.current;
    c.current = 0;
    c.window_index = index;
  } else if (index > c.window_index + 1) {
    c.previous = 0;
    c.current = 0;
    c.window_index = index;
  }
  // A call dated before the current window (a clock step back) is counted in the current one.
  ++c.current;
  const int64_t elapsed = t - c.window_index * len;  // in [0, len) unless the clock went back
  const double weight =
      elapsed >= len || elapsed < 0 ? 0.0 : static_cast<double>(len - elapsed) / len;
  return static_cast<double>(c.current) + static_cast<double>(c.previous) * weight;
}

uint64_t RateState::CountTotal(uint64_t counter, std::string_view key, SystemTime now) {
  const KeyView k{counter, key};
  Shard& shard = ShardFor(k);
  std::lock_guard<std::mutex> lock(shard.mu);
  Counter& c = Touch(shard, k, now);
  return ++c.current;
}

size_t RateState::size() const {
  size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mu);
    n += s.lru.size();
  }
  return n;
}

}  // namespace toolgate::policy
