// EventStreamer: the client's event buffer and its one background Events.Stream.
//
// Add() appends an event to `pending_` under `mu_` (no I/O, no wait) or, when the buffer bound
// is reached, drops it and counts it. The buffer is everything recorded and not yet resolved:
// `pending_` (not sent) plus `in_flight_` (sent, waiting for their StreamAck), so that what a
// stalled daemon has not acknowledged keeps its place in the bound.
//
// The sender thread owns the stream. It opens one when there is something to send, cuts
// batches from the front of `pending_` (each with a new sequence number, at most
// max_in_flight_batches unacknowledged), writes them, and handles the acknowledgements that the
// reader thread queues in `acks_` (DecideAck: release, retry after the hint, split, reject).
// When the stream breaks, it moves every unacknowledged batch back into `pending_` in recording
// order — the same events, so the same eventIds — waits a backoff, and opens a new stream.
// Only the sender thread touches the events of in-flight batches, so writing a batch needs no
// lock. Close() cancels the stream's context to unblock a Write that the daemon's flow control
// holds.
//
// Thread-safe.
#ifndef TOOLGATE_CLIENT_LIB_EVENT_STREAMER_H_
#define TOOLGATE_CLIENT_LIB_EVENT_STREAMER_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "toolgate/client.h"
#include "toolgate/v1/events.grpc.pb.h"

namespace toolgate::client_internal {

class EventStreamer {
 public:
  // Starts the sender thread. `options` must have been validated (Client::Create).
  EventStreamer(const std::shared_ptr<grpc::ChannelInterface>& channel,
                const ClientOptions& options);
  ~EventStreamer();  // Close(now) if not closed

  EventStreamer(const EventStreamer&) = delete;
  EventStreamer& operator=(const EventStreamer&) = delete;

  // `bytes` is the event's serialized size. OK, RESOURCE_EXHAUSTED (dropped, counted) or
  // FAILED_PRECONDITION (closed).
  absl::Status Add(v1::Event event, size_t bytes);
  absl::Status Flush(absl::Time deadline);
  absl::Status Close(absl::Time deadline);
  void Stats(ClientStats* out) const;

 private:
  using SteadyTime = std::chrono::steady_clock::time_point;
  using Stream = grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamAck>;

  struct Item {
    uint64_t index = 0;  // recording order
    size_t bytes = 0;
    bool solo = false;  // sent alone (the daemon refused a batch holding it)
    bool sent = false;  // sent at least once: a new send counts as a resend
    SteadyTime enqueued;
    v1::Event event;  // moved into the batch's request while in flight
  };
  struct Batch {
    std::vector<Item> items;  // their events are in `request`
    v1::StreamRequest request;
    size_t bytes = 0;
  };

  void Run();  // the sender thread
  // Writes batches and handles acks until the stream breaks or stop_. Requires mu_ held by `l`.
  void SendLoop(std::unique_lock<std::mutex>& l, Stream* stream);
  void ReadAcks(Stream* stream);  // the reader thread of one stream
  // The rest require mu_.
  uint64_t CutBatchLocked();
  void HandleAcksLocked();
  void RequeueLocked(std::vector<Item> items);  // merges into pending_ by index
  std::vector<Item> TakeEventsLocked(Batch* batch, bool solo);
  void ReleaseLocked(const Batch& batch);
  uint64_t MinUnresolvedLocked() const;
  uint64_t UnresolvedBeforeLocked(uint64_t index) const;
  std::chrono::nanoseconds NextBackoffLocked();
  void ErrorLocked(absl::Status s);
  // Calls on_error for the errors queued so far, with mu_ released.
  void ReportErrors(std::unique_lock<std::mutex>& l);

  const ClientOptions options_;
  std::unique_ptr<v1::Events::Stub> stub_;

  mutable std::mutex mu_;
  std::condition_variable cv_;           // wakes the sender thread
  std::condition_variable done_cv_;      // wakes Flush / Close waiters
  std::deque<Item> pending_;             // sorted by index; guarded by mu_
  size_t pending_bytes_ = 0;             // guarded by mu_
  std::map<uint64_t, Batch> in_flight_;  // by sequence; guarded by mu_ (events: sender only)
  std::deque<v1::StreamAck> acks_;       // from the reader thread; guarded by mu_
  uint64_t buffered_events_ = 0, buffered_bytes_ = 0;  // pending + in flight; guarded by mu_
  uint64_t next_index_ = 0, next_sequence_ = 1;        // guarded by mu_
  ClientStats stats_;                                  // counters; guarded by mu_
  std::vector<absl::Status> errors_;                   // for on_error; guarded by mu_
  int flush_waiters_ = 0;                              // guarded by mu_
  SteadyTime resume_at_{};                  // no send before (pushback, errors); guarded by mu_
  std::chrono::nanoseconds backoff_;        // guarded by mu_
  grpc::ClientContext* context_ = nullptr;  // of the open stream; guarded by mu_
  bool stream_broken_ = false, reader_done_ = false;  // guarded by mu_
  bool closing_ = false;                              // Add refuses; guarded by mu_
  bool stop_ = false;                                 // the sender ends; guarded by mu_
  bool close_started_ = false, closed_ = false;       // guarded by mu_
  bool sender_done_ = false;                          // guarded by mu_
  absl::Time close_deadline_ = absl::InfinitePast();  // guarded by mu_
  absl::Status close_status_;                         // guarded by mu_
  std::minstd_rand jitter_;                           // sender thread only
  std::thread sender_;
};

}  // namespace toolgate::client_internal

#endif  // TOOLGATE_CLIENT_LIB_EVENT_STREAMER_H_
