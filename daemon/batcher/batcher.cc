#include "daemon/batcher/batcher.h"

#include <utility>

namespace toolgate::batcher {

Batcher::Batcher(config::BatchOptions options, spool::Reader* reader, Clock* clock)
    : options_(options), reader_(reader), clock_(clock) {}

absl::Status Batcher::Next(bool flush, std::vector<spool::StoredEvent>* out, SteadyTime* wake) {
  out->clear();
  if (buffer_.size() < options_.max_events && buffer_bytes_ < options_.max_bytes) {
    const size_t before = buffer_.size();
    // Whole chunks are read; what exceeds this batch waits in the buffer for the next.
    if (absl::Status s = reader_->ReadAfter(cursor_, options_.max_events - buffer_.size(),
                                            options_.max_bytes - buffer_bytes_, &buffer_);
        !s.ok()) {
      return s;
    }
    for (size_t i = before; i < buffer_.size(); ++i) buffer_bytes_ += buffer_[i].body.size();
    if (buffer_.size() > before) cursor_ = buffer_.back().seq;
    if (before == 0 && !buffer_.empty()) first_seen_ = clock_->Steady();
  }
  if (buffer_.empty()) return absl::OkStatus();
  const SteadyTime due = first_seen_ + options_.max_delay;
  if (!flush && buffer_.size() < options_.max_events && buffer_bytes_ < options_.max_bytes &&
      clock_->Steady() < due) {
    *wake = due;
    return absl::OkStatus();
  }
  // Cut at max_events / max_bytes (at least one event).
  size_t n = 0, bytes = 0;
  while (n < buffer_.size() && n < options_.max_events &&
         (n == 0 || bytes + buffer_[n].body.size() <= options_.max_bytes)) {
    bytes += buffer_[n].body.size();
    ++n;
  }
  out->assign(std::make_move_iterator(buffer_.begin()),
              std::make_move_iterator(buffer_.begin() + static_cast<std::ptrdiff_t>(n)));
  buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(n));
  buffer_bytes_ -= bytes;
  return absl::OkStatus();
}

}  // namespace toolgate::batcher
