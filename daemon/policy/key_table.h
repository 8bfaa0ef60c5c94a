// KeyTable: the read-only hash tables of the rule index, from strings (plain values, glob
// prefixes, glob suffixes) to lists of entries.
//
// Lookups take a hash the caller computes incrementally with Step(), so that every prefix (or,
// hashing backward, every suffix) of a value can be looked up in one pass over the value: the
// evaluation of a tool name against the prefixes of 1,000 globs costs one multiply per byte and
// one probe per distinct prefix length, not one hash of the whole key per length. The table is
// open-addressed in one flat array (load factor at most 1/2), so a probe that misses usually
// touches one cache line.
//
// Keys are views: the strings they point to must outlive the table and never move.
//
// Thread-safety: built on one thread (Add, Finish), then read-only; Find may be called
// concurrently.
#ifndef TOOLGATE_DAEMON_POLICY_KEY_TABLE_H_
#define TOOLGATE_DAEMON_POLICY_KEY_TABLE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace toolgate::policy {

template <typename T>
class KeyTable {
 public:
  // FNV-1a, one byte at a time.
  static constexpr uint64_t kSeed = 14695981039346656037ull;
  static uint64_t Step(uint64_t h, unsigned char c) { return (h ^ c) * 1099511628211ull; }
  static uint64_t HashForward(std::string_view s) {
    uint64_t h = kSeed;
    for (unsigned char c : s) h = Step(h, c);
    return h;
  }
  static uint64_t HashBackward(std::string_view s) {
    uint64_t h = kSeed;
    for (size_t i = s.size(); i > 0; --i) h = Step(h, static_cast<unsigned char>(s[i - 1]));
    return h;
  }

  // Build: the list for `key`, created empty on first use. Not after Finish().
  std::vector<T>& At(std::string_view key) {
    auto [it, inserted] = build_.emplace(key, static_cast<uint32_t>(lists_.size()));
    if (inserted) {
      keys_.push_back(key);
      lists_.emplace_back();
      auto pos = std::lower_bound(lengths_.begin(), lengths_.end(), key.size());
      if (pos == lengths_.end() || *pos != key.size()) lengths_.insert(pos, key.size());
    }
    return lists_[it->second];
  }
  // Build: the list for `key`, or nullptr.
  const std::vector<T>* Get(std::string_view key) const {
    auto it = build_.find(key);
    return it == build_.end() ? nullptr : &lists_[it->second];
  }

  // Lays out the probe array. `backward`: keys are found with HashBackward-style hashes.
  void Finish(bool backward) {
    size_t capacity = 8;
    while (capacity < 2 * keys_.size()) capacity *= 2;
    slots_.assign(capacity, Slot{0, nullptr, 0, kEmpty});
    mask_ = capacity - 1;
    for (uint32_t i = 0; i < keys_.size(); ++i) {
      const uint64_t h = backward ? HashBackward(keys_[i]) : HashForward(keys_[i]);
      size_t at = Mix(h) & mask_;
      while (slots_[at].list != kEmpty) at = (at + 1) & mask_;
      slots_[at] = Slot{h, keys_[i].data(), static_cast<uint32_t>(keys_[i].size()), i};
    }
    build_.clear();
  }

  // The list for `key` whose hash is `hash`, or nullptr. After Finish().
  const std::vector<T>* Find(std::string_view key, uint64_t hash) const {
    if (slots_.empty()) return nullptr;
    for (size_t at = Mix(hash) & mask_;; at = (at + 1) & mask_) {
      const Slot& s = slots_[at];
      if (s.list == kEmpty) return nullptr;
      if (s.hash == hash && s.size == key.size() &&
          std::memcmp(s.data, key.data(), key.size()) == 0) {
        return &lists_[s.list];
      }
    }
  }

  bool empty() const { return keys_.empty(); }
  // The distinct key lengths, ascending.
  const std::vector<size_t>& lengths() const { return lengths_; }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint64_t hash;
    const char* data;
    uint32_t size;
    uint32_t list;  // index in lists_, or kEmpty
  };
  static size_t Mix(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return static_cast<size_t>(h);
  }

  std::unordered_map<std::string_view, uint32_t> build_;  // build time only
  std::vector<std::string_view> keys_;
  std::vector<std::vector<T>> lists_;
  std::vector<size_t> lengths_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_KEY_TABLE_H_
