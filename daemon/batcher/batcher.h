// Batcher: takes events from the spool in order and cuts them into batches of at most
// max_events / max_bytes, waiting at most max_delay for a batch to fill.
//
// Single-threaded: the shipper's thread only. It owns a read cursor (the highest seq handed
// out); events handed out stay in the spool until the shipper acks them, so a crash resends.
#ifndef TOOLGATE_DAEMON_BATCHER_BATCHER_H_
#define TOOLGATE_DAEMON_BATCHER_BATCHER_H_

#include <vector>

#include "absl/status/status.h"
#include "daemon/common/clock.h"
#include "daemon/config/config.h"
#include "daemon/spool/spool.h"

namespace toolgate::batcher {

class Batcher {
 public:
  Batcher(config::BatchOptions options, spool::Reader* reader, Clock* clock);

  // Fills `out` with the next batch when one is due: full, or older than max_delay, or
  // `flush`. Otherwise leaves `out` empty and sets `*wake` to when the pending partial batch
  // becomes due (or leaves it untouched when nothing is pending).
  absl::Status Next(bool flush, std::vector<spool::StoredEvent>* out, SteadyTime* wake);

  // Whether events wait in the partial batch.
  bool pending() const { return !buffer_.empty(); }

 private:
  const config::BatchOptions options_;
  spool::Reader* const reader_;
  Clock* const clock_;
  uint64_t cursor_ = 0;  // highest seq read
  std::vector<spool::StoredEvent> buffer_;
  size_t buffer_bytes_ = 0;
  SteadyTime first_seen_{};
};

}  // namespace toolgate::batcher

#endif  // TOOLGATE_DAEMON_BATCHER_BATCHER_H_
