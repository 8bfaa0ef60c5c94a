#include "daemon/chain/recent_ids.h"

namespace toolgate::chain {
namespace {

// Hex digit values, -1 for anything else.
struct HexTable {
  int8_t v[256];
  constexpr HexTable() : v() {
    for (int i = 0; i < 256; ++i) v[i] = -1;
    for (int i = 0; i < 10; ++i) v['0' + i] = static_cast<int8_t>(i);
    for (int i = 0; i < 6; ++i) {
      v['a' + i] = static_cast<int8_t>(10 + i);
      v['A' + i] = static_cast<int8_t>(10 + i);
    }
  }
};
constexpr HexTable kHex;

}  // namespace

bool RecentIds::ParseUuid(std::string_view text, Key* out) {
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' ||
      text[23] != '-') {
    return false;
  }
  // The 32 hex digits, skipping the dashes; any invalid digit makes `bad` negative.
  static constexpr uint8_t kAt[32] = {0,  1,  2,  3,  4,  5,  6,  7,  9,  10, 11,
                                      12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25,
                                      26, 27, 28, 29, 30, 31, 32, 33, 34, 35};
  uint64_t parts[2] = {0, 0};
  int bad = 0;
  for (int i = 0; i < 32; ++i) {
    const int v = kHex.v[static_cast<unsigned char>(text[kAt[i]])];
    bad |= v;
    parts[i >> 4] = (parts[i >> 4] << 4) | static_cast<uint64_t>(v & 0xf);
  }
  if (bad < 0) return false;
  *out = {parts[0], parts[1]};
  return true;
}

void RecentIds::AppendKey(const Key& key, std::string* out) {
  for (uint64_t part : {key.first, key.second}) {
    for (int b = 7; b >= 0; --b) out->push_back(static_cast<char>(part >> (8 * b)));
  }
}

RecentIds::Key RecentIds::ReadKey(const unsigned char* p) {
  Key key{0, 0};
  for (int i = 0; i < 8; ++i) key.first = (key.first << 8) | p[i];
  for (int i = 8; i < 16; ++i) key.second = (key.second << 8) | p[i];
  return key;
}

bool RecentIds::SeenOrRemember(std::string_view id, Key* key) {
  Key k;
  if (key == nullptr) key = &k;
  if (capacity_ == 0 || !ParseUuid(id, key)) {
    *key = {0, 0};
    return false;
  }
  return SeenOrRemember(*key);
}

bool RecentIds::SeenOrRemember(const Key& key) {
  if (capacity_ == 0) return false;
  if (ring_.empty()) {
    ring_.resize(capacity_);
    set_.reserve(capacity_);
  }
  if (set_.contains(key)) return true;
  const bool full = used_ == ring_.size();
  if (logging_) undo_.push_back({next_, ring_[next_], full});
  if (full) {
    set_.erase(ring_[next_]);
  } else {
    ++used_;
  }
  ring_[next_] = key;
  next_ = (next_ + 1) % ring_.size();
  set_.insert(key);
  return false;
}

void RecentIds::Rollback() {
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
    set_.erase(ring_[it->slot]);
    if (it->had_old) {
      ring_[it->slot] = it->old;
      set_.insert(it->old);
    } else {
      --used_;
    }
    next_ = it->slot;
  }
  logging_ = false;
  undo_.clear();
}

}  // namespace toolgate::chain
