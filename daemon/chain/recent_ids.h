// RecentIds: the event ids linked most recently, to recognise a resend.
//
// A client that lost an acknowledgement (a broken stream, a daemon restart) sends the same
// events again with the same eventIds. Stored twice, the second copy would be chained after the
// first with a different previousHash — the same eventId with different bytes, which an
// upstream that deduplicates by eventId would then see as a break in the chain. The writer
// therefore drops an event whose id it linked among the last `capacity` events (and
// acknowledges it: it is durable already). Ids are UUIDs, kept as 128-bit keys; anything else
// is never treated as a duplicate.
//
// Transactional, for the writer's commits: between Begin() and Commit() every change is logged,
// and Rollback() undoes them, so that a rolled-back commit (a full disk) does not leave behind
// ids that were never stored — the client's retry of those events must not be taken for a
// duplicate and dropped.
//
// Single-threaded (the spool's writer thread).
#ifndef TOOLGATE_DAEMON_CHAIN_RECENT_IDS_H_
#define TOOLGATE_DAEMON_CHAIN_RECENT_IDS_H_

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"

namespace toolgate::chain {

class RecentIds {
 public:
  // Nothing is allocated before the first id is remembered (a daemon whose clients never
  // choose ids pays no memory for this).
  explicit RecentIds(size_t capacity = kDefaultCapacity) : capacity_(capacity) {}

  // 65,536 ids: more than a client's window of unacknowledged events (64 batches of 1,000 by
  // default), for ~2.5 MiB.
  static constexpr size_t kDefaultCapacity = 1 << 16;

  using Key = std::pair<uint64_t, uint64_t>;  // a UUID's 128 bits

  // True when `id` is among the remembered ones; else remembers it (forgetting the oldest when
  // full) and returns false.
  // `key` (optional) gets the id's 128 bits, or {0, 0} when it is not a UUID.
  bool SeenOrRemember(std::string_view id, Key* key = nullptr);
  bool SeenOrRemember(const Key& key);
  // Remembers `id` (at start-up, from the events still in the spool).
  void Remember(std::string_view id) { SeenOrRemember(id); }
  size_t size() const { return set_.size(); }
  size_t capacity() const { return capacity_; }

  // Starts logging changes; Commit() keeps them, Rollback() undoes them.
  void Begin() {
    logging_ = true;
    undo_.clear();
  }
  void Commit() {
    logging_ = false;
    undo_.clear();
  }
  void Rollback();

  // The 128 bits of a canonical UUID text (case-insensitive); false when it is not one.
  static bool ParseUuid(std::string_view text, Key* out);
  // 16 bytes, big endian, for storing keys; and back.
  static void AppendKey(const Key& key, std::string* out);
  static Key ReadKey(const unsigned char* p);

 private:
  size_t capacity_;
  std::vector<Key> ring_;  // insertion order, for eviction; capacity_ slots once used
  size_t next_ = 0;
  size_t used_ = 0;
  absl::flat_hash_set<Key> set_;
  // Between Begin and Commit/Rollback: for each insertion, its slot and what it replaced.
  struct Undo {
    size_t slot;
    Key old;
    bool had_old;
  };
  bool logging_ = false;
  std::vector<Undo> undo_;
};

}  // namespace toolgate::chain

#endif  // TOOLGATE_DAEMON_CHAIN_RECENT_IDS_H_
