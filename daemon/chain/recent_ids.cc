#include "daemon/chain/recent_ids.h"

namespace toolgate::chain {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool RecentIds::ParseUuid(std::string_view text, std::pair<uint64_t, uint64_t>* out) {
  if (text.size() != 36) return false;
  uint64_t parts[2] = {0, 0};
  int nibbles = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return false;
      continue;
    }
    const int v = HexValue(text[i]);
    if (v < 0) return false;
    uint64_t& p = parts[nibbles / 16];
    p = (p << 4) | static_cast<uint64_t>(v);
    ++nibbles;
  }
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

bool RecentIds::SeenOrRemember(std::string_view id) {
  Key key;
  if (!ParseUuid(id, &key)) return false;
  return SeenOrRemember(key);
}

bool RecentIds::SeenOrRemember(const Key& key) {
  if (ring_.empty()) return false;
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
