#include "client/lib/event_streamer.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/lib/ack_policy.h"

namespace toolgate::client_internal {
namespace {

using Clock = std::chrono::steady_clock;

// Waits on `cv` until `pred` holds or `deadline` (wall clock) passes; returns pred().
template <typename Pred>
bool WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& l, absl::Time deadline,
               Pred pred) {
  if (deadline == absl::InfiniteFuture()) {
    cv.wait(l, pred);
    return true;
  }
  while (!pred()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return pred();
    cv.wait_for(l, absl::ToChronoNanoseconds(std::min(left, absl::Hours(1))));
  }
  return true;
}

std::chrono::nanoseconds ToNanos(absl::Duration d) { return absl::ToChronoNanoseconds(d); }

}  // namespace

EventStreamer::EventStreamer(const std::shared_ptr<grpc::ChannelInterface>& channel,
                             const ClientOptions& options)
    : options_(options),
      stub_(v1::Events::NewStub(channel)),
      backoff_(ToNanos(options.backoff_initial)),
      jitter_(std::random_device{}()) {
  sender_ = std::thread([this] { Run(); });
}

EventStreamer::~EventStreamer() { (void)Close(absl::Now()); }

absl::Status EventStreamer::Add(v1::Event event, size_t bytes) {
  std::lock_guard<std::mutex> l(mu_);
  if (closing_) return absl::FailedPreconditionError("toolgate: the client is closed");
  if (buffered_events_ >= options_.max_buffered_events ||
      buffered_bytes_ + bytes > options_.max_buffered_bytes) {
    ++stats_.dropped;
    return absl::ResourceExhaustedError(
        absl::StrCat("toolgate: event dropped, the client's buffer is full (", buffered_events_,
                     " events, ", buffered_bytes_, " bytes unacknowledged)"));
  }
  const bool was_empty = pending_.empty();
  const bool was_short = pending_bytes_ < options_.max_batch_bytes;
  Item& item = pending_.emplace_back();
  item.index = next_index_++;
  item.bytes = bytes;
  item.enqueued = Clock::now();
  item.event = std::move(event);
  ++buffered_events_;
  buffered_bytes_ += bytes;
  pending_bytes_ += bytes;
  ++stats_.recorded;
  // Wake the sender only when it has something new to do: start a batch, or send a full one.
  if (was_empty || pending_.size() == options_.max_batch_events ||
      (was_short && pending_bytes_ >= options_.max_batch_bytes)) {
    cv_.notify_one();
  }
  return absl::OkStatus();
}

absl::Status EventStreamer::Flush(absl::Time deadline) {
  std::unique_lock<std::mutex> l(mu_);
  const uint64_t target = next_index_;
  ++flush_waiters_;  // the sender stops waiting for batches to fill
  cv_.notify_one();
  const bool done =
      WaitUntil(done_cv_, l, deadline, [&] { return MinUnresolvedLocked() >= target; });
  --flush_waiters_;
  if (done) return absl::OkStatus();
  return absl::DeadlineExceededError(absl::StrCat("toolgate: ", UnresolvedBeforeLocked(target),
                                                  " events not acknowledged by the deadline"));
}

absl::Status EventStreamer::Close(absl::Time deadline) {
  std::unique_lock<std::mutex> l(mu_);
  if (close_started_) {
    done_cv_.wait(l, [this] { return closed_; });
    return close_status_;
  }
  close_started_ = true;
  closing_ = true;
  cv_.notify_all();
  WaitUntil(done_cv_, l, deadline, [this] { return buffered_events_ == 0; });
  stop_ = true;
  close_deadline_ = deadline;
  // Events left: the daemon is stalled or away; cancelling unblocks a Write held by flow control.
  if (buffered_events_ > 0 && context_ != nullptr) context_->TryCancel();
  cv_.notify_all();
  // The half-close of an idle stream should be quick; do not let a daemon that stops at that
  // very moment hold Close longer than a second past its deadline.
  if (!WaitUntil(done_cv_, l, std::max(deadline, absl::Now()) + absl::Seconds(1),
                 [this] { return sender_done_; }) &&
      context_ != nullptr) {
    context_->TryCancel();
  }
  l.unlock();
  if (sender_.joinable()) sender_.join();
  l.lock();
  stats_.abandoned = buffered_events_;
  close_status_ = buffered_events_ == 0
                      ? absl::OkStatus()
                      : absl::DeadlineExceededError(
                            absl::StrCat("toolgate: closed with ", buffered_events_,
                                         " events not acknowledged by the deadline (abandoned)"));
  closed_ = true;
  done_cv_.notify_all();
  return close_status_;
}

void EventStreamer::Stats(ClientStats* out) const {
  std::lock_guard<std::mutex> l(mu_);
  *out = stats_;
  out->buffered = buffered_events_;
  out->in_flight_batches = in_flight_.size();
}

void EventStreamer::Run() {
  std::unique_lock<std::mutex> l(mu_);
  bool opened_before = false;
  while (true) {
    // A stream is opened only when there is something to send.
    cv_.wait(l, [this] { return stop_ || !pending_.empty(); });
    if (stop_) break;
    if (opened_before) ++stats_.reconnects;
    opened_before = true;
    grpc::ClientContext context;
    context.set_initial_metadata_corked(true);  // the headers go with the first batch
    // Wait for the channel to (re)connect instead of failing at once; the channel applies the
    // reconnection backoff, and Close() cancels the wait.
    context.set_wait_for_ready(true);
    context_ = &context;
    stream_broken_ = false;
    reader_done_ = false;
    l.unlock();
    std::unique_ptr<Stream> stream = stub_->Stream(&context);
    std::thread reader([this, s = stream.get()] { ReadAcks(s); });
    l.lock();
    SendLoop(l, stream.get());

    if (stop_ && buffered_events_ == 0 && !stream_broken_) {
      // Everything is acknowledged: half-close, and the daemon finishes the stream.
      l.unlock();
      stream->WritesDone();
      l.lock();
      WaitUntil(cv_, l, std::min(close_deadline_, absl::Now() + absl::Seconds(1)),
                [this] { return reader_done_; });
    } else if (stream_broken_ && !reader_done_) {
      // A Write failed: the call is over and the reader is about to see its status.
      WaitUntil(cv_, l, absl::Now() + absl::Seconds(1), [this] { return reader_done_; });
    }
    if (!reader_done_) context.TryCancel();
    l.unlock();
    reader.join();
    const grpc::Status status = stream->Finish();
    stream.reset();
    l.lock();
    context_ = nullptr;
    HandleAcksLocked();  // those that arrived before the break
    // Everything still unacknowledged goes back to the front, in recording order, to be sent
    // again with the same eventIds on the next stream.
    std::vector<Item> unacked;
    for (auto& [sequence, batch] : in_flight_) {
      std::vector<Item> items = TakeEventsLocked(&batch, /*solo=*/false);
      std::move(items.begin(), items.end(), std::back_inserter(unacked));
    }
    in_flight_.clear();
    if (!unacked.empty()) RequeueLocked(std::move(unacked));
    if (stop_) break;
    ErrorLocked(absl::UnavailableError(
        absl::StrCat("toolgate: the event stream to ", options_.address, " ended (",
                     status.ok() ? std::string("closed by the daemon") : status.error_message(),
                     "); reconnecting")));
    ReportErrors(l);
    const std::chrono::nanoseconds wait = NextBackoffLocked();
    cv_.wait_for(l, wait, [this] { return stop_; });
    if (stop_) break;
  }
  sender_done_ = true;
  done_cv_.notify_all();
}

void EventStreamer::SendLoop(std::unique_lock<std::mutex>& l, Stream* stream) {
  const auto delay = ToNanos(options_.batch_delay);
  while (true) {
    HandleAcksLocked();
    ReportErrors(l);
    if (stop_ || stream_broken_) return;
    const Clock::time_point now = Clock::now();
    std::optional<Clock::time_point> wake;
    if (!pending_.empty() && in_flight_.size() < options_.max_in_flight_batches) {
      if (now < resume_at_) {
        wake = resume_at_;  // pushback or a retryable error: not before then
      } else {
        const Item& first = pending_.front();
        const bool ready = pending_.size() >= options_.max_batch_events ||
                           pending_bytes_ >= options_.max_batch_bytes || closing_ ||
                           flush_waiters_ > 0 || first.sent || first.solo ||
                           now >= first.enqueued + delay;
        if (ready) {
          Batch& batch = in_flight_[CutBatchLocked()];
          // Only this thread touches in-flight events; the map node is stable.
          l.unlock();
          const bool ok = stream->Write(batch.request);
          l.lock();
          if (!ok) {
            stream_broken_ = true;
            return;
          }
          continue;
        }
        wake = first.enqueued + delay;
      }
    }
    if (wake) {
      cv_.wait_until(l, *wake);
    } else {
      cv_.wait(l);
    }
  }
}

void EventStreamer::ReadAcks(Stream* stream) {
  v1::StreamAck ack;
  while (stream->Read(&ack)) {
    std::lock_guard<std::mutex> l(mu_);
    acks_.push_back(std::move(ack));
    ack.Clear();
    cv_.notify_one();
  }
  std::lock_guard<std::mutex> l(mu_);
  reader_done_ = true;
  stream_broken_ = true;
  cv_.notify_one();
}

uint64_t EventStreamer::CutBatchLocked() {
  const uint64_t sequence = next_sequence_++;
  Batch& batch = in_flight_[sequence];
  batch.request.set_sequence(sequence);
  while (!pending_.empty()) {
    Item& item = pending_.front();
    if (!batch.items.empty() &&
        (item.solo || batch.items.front().solo || batch.items.size() >= options_.max_batch_events ||
         batch.bytes + item.bytes > options_.max_batch_bytes)) {
      break;
    }
    if (item.sent) ++stats_.resent;
    item.sent = true;
    *batch.request.add_events() = std::move(item.event);
    batch.bytes += item.bytes;
    pending_bytes_ -= item.bytes;
    batch.items.push_back(std::move(item));
    pending_.pop_front();
  }
  return sequence;
}

void EventStreamer::HandleAcksLocked() {
  while (!acks_.empty()) {
    v1::StreamAck ack = std::move(acks_.front());
    acks_.pop_front();
    auto it = in_flight_.find(ack.sequence());
    if (it == in_flight_.end()) continue;  // not a sequence of ours: ignore it
    Batch& batch = it->second;
    const size_t n = batch.items.size();
    switch (DecideAck(ack.code(), n)) {
      case AckAction::kDurable:
        stats_.acked += n;
        ReleaseLocked(batch);
        backoff_ = ToNanos(options_.backoff_initial);
        break;
      case AckAction::kRetryLater: {
        const std::chrono::nanoseconds wait =
            ack.retry_after_ms() > 0
                ? std::chrono::nanoseconds(std::chrono::milliseconds(ack.retry_after_ms()))
                : NextBackoffLocked();
        resume_at_ = std::max(resume_at_, Clock::now() + wait);
        ErrorLocked(absl::Status(
            static_cast<absl::StatusCode>(ack.code()),
            absl::StrCat("toolgate: the daemon could not take ", n, " events now (", ack.message(),
                         "); sending them again in ",
                         std::chrono::duration_cast<std::chrono::milliseconds>(wait).count(),
                         " ms")));
        RequeueLocked(TakeEventsLocked(&batch, /*solo=*/false));
        break;
      }
      case AckAction::kSplit:
        RequeueLocked(TakeEventsLocked(&batch, /*solo=*/true));
        break;
      case AckAction::kReject:
        stats_.rejected += n;
        ErrorLocked(absl::InvalidArgumentError(absl::StrCat("toolgate: the daemon refused event ",
                                                            batch.request.events(0).event_id(),
                                                            ": ", ack.message())));
        ReleaseLocked(batch);
        break;
    }
    in_flight_.erase(it);
    done_cv_.notify_all();
  }
}

std::vector<EventStreamer::Item> EventStreamer::TakeEventsLocked(Batch* batch, bool solo) {
  std::vector<Item> items = std::move(batch->items);
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].event = std::move(*batch->request.mutable_events(static_cast<int>(i)));
    items[i].solo = items[i].solo || solo;
  }
  batch->request.clear_events();
  batch->items.clear();
  return items;
}

void EventStreamer::RequeueLocked(std::vector<Item> items) {
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return a.index < b.index; });
  for (const Item& item : items) pending_bytes_ += item.bytes;
  if (pending_.empty() || items.back().index < pending_.front().index) {
    pending_.insert(pending_.begin(), std::make_move_iterator(items.begin()),
                    std::make_move_iterator(items.end()));
    return;
  }
  std::deque<Item> merged;
  std::merge(std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()),
             std::make_move_iterator(pending_.begin()), std::make_move_iterator(pending_.end()),
             std::back_inserter(merged),
             [](const Item& a, const Item& b) { return a.index < b.index; });
  pending_.swap(merged);
}

void EventStreamer::ReleaseLocked(const Batch& batch) {
  buffered_events_ -= batch.items.size();
  buffered_bytes_ -= batch.bytes;
}

uint64_t EventStreamer::MinUnresolvedLocked() const {
  uint64_t min = pending_.empty() ? std::numeric_limits<uint64_t>::max() : pending_.front().index;
  for (const auto& [sequence, batch] : in_flight_) {
    if (!batch.items.empty()) min = std::min(min, batch.items.front().index);
  }
  return min;
}

uint64_t EventStreamer::UnresolvedBeforeLocked(uint64_t index) const {
  const auto end = std::lower_bound(pending_.begin(), pending_.end(), index,
                                    [](const Item& item, uint64_t i) { return item.index < i; });
  uint64_t n = static_cast<uint64_t>(end - pending_.begin());
  for (const auto& [sequence, batch] : in_flight_) {
    for (const Item& item : batch.items) n += item.index < index;
  }
  return n;
}

std::chrono::nanoseconds EventStreamer::NextBackoffLocked() {
  const std::chrono::nanoseconds bound = backoff_;
  backoff_ = std::min(backoff_ * 2, ToNanos(options_.backoff_max));
  // Jitter: between half the bound and the bound, so that many clients do not reconnect in step.
  std::uniform_int_distribution<int64_t> pick(bound.count() / 2, bound.count());
  return std::chrono::nanoseconds(pick(jitter_));
}

void EventStreamer::ErrorLocked(absl::Status s) {
  stats_.last_error = std::string(s.message());
  if (options_.on_error && errors_.size() < 64) errors_.push_back(std::move(s));
}

void EventStreamer::ReportErrors(std::unique_lock<std::mutex>& l) {
  if (errors_.empty()) return;
  std::vector<absl::Status> errors;
  errors.swap(errors_);
  l.unlock();
  for (const absl::Status& s : errors) options_.on_error(s);
  l.lock();
}

}  // namespace toolgate::client_internal
