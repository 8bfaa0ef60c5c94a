#include "daemon/ingest/events_service.h"

#include <deque>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"

namespace toolgate::ingest {

using toolgate::v1::StreamAck;
using toolgate::v1::StreamRequest;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

EventsService::EventsService(config::IngestOptions options, const normalize::Normalizer* normalizer,
                             spool::Spool* spool, config::Millis retry_after)
    : options_(options),
      normalizer_(normalizer),
      spool_(spool),
      retry_after_(retry_after),
      retry_after_text_(std::to_string(retry_after.count())) {}

absl::Status EventsService::NormalizeAll(
    const google::protobuf::RepeatedPtrField<toolgate::v1::Event>& in,
    std::vector<normalize::NormalizedEvent>* out) {
  if (in.empty()) return absl::InvalidArgumentError("events: at least one event is required");
  if (static_cast<uint64_t>(in.size()) > options_.max_events_per_request) {
    return absl::InvalidArgumentError(
        absl::StrCat("events: at most ", options_.max_events_per_request,
                     " events per request (ingest.max_events_per_request), got ", in.size()));
  }
  out->resize(in.size());
  for (int i = 0; i < in.size(); ++i) {
    if (absl::Status s = normalizer_->Normalize(in[i], absl::StrCat("events[", i, "]"), &(*out)[i]);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

void EventsService::Count(const absl::Status& s, size_t events) {
  if (s.ok()) {
    events_received_.fetch_add(events, std::memory_order_relaxed);
  } else if (absl::IsResourceExhausted(s)) {
    refused_full_.fetch_add(1, std::memory_order_relaxed);
  }
}

std::vector<toolgate::v1::Event> EventsService::Lifecycle(
    const google::protobuf::RepeatedPtrField<toolgate::v1::Event>& in) const {
  std::vector<toolgate::v1::Event> out;
  if (!lifecycle_) return out;
  for (const auto& e : in) {
    switch (e.kind_case()) {
      case toolgate::v1::Event::kSessionStart:
      case toolgate::v1::Event::kSessionEnd:
      case toolgate::v1::Event::kIdentity:
        out.push_back(e);
        break;
      case toolgate::v1::Event::kGeneric: {
        const std::string& c = e.generic().category();
        if (c == "session_start" || c == "session_end" || c == "identity") out.push_back(e);
        break;
      }
      default:
        break;
    }
  }
  return out;
}

IngestStats EventsService::stats() const {
  return {events_received_.load(), events_invalid_.load(), refused_full_.load(),
          streams_open_.load()};
}

grpc::ServerUnaryReactor* EventsService::Record(grpc::CallbackServerContext* ctx,
                                                const toolgate::v1::RecordRequest* request,
                                                toolgate::v1::RecordResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::vector<normalize::NormalizedEvent> events;
  if (absl::Status s = NormalizeAll(request->events(), &events); !s.ok()) {
    events_invalid_.fetch_add(request->events_size(), std::memory_order_relaxed);
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  // The ids go to the answer, and stay with the events: the spool recognises resends by them.
  for (const auto& e : events) response->add_event_ids(e.event_id);
  const size_t n = events.size();
  std::vector<toolgate::v1::Event> life = Lifecycle(request->events());
  // Copied into the callback: empty (cheap) unless the request has lifecycle events (rare).
  spool_->Append(std::move(events), [this, reactor, ctx, n, life](const absl::Status& s) mutable {
    Count(s, n);
    if (s.ok() && !life.empty()) lifecycle_(std::move(life));
    if (absl::IsResourceExhausted(s)) {
      // The standard gRPC retry pushback trailer: clients with a retry policy honour it.
      ctx->AddTrailingMetadata("grpc-retry-pushback-ms", retry_after_text_);
    }
    reactor->Finish(ToGrpc(s));
  });
  return reactor;
}

// One bidirectional stream. Lives until gRPC calls OnDone and every append it started has
// called back (an append outlives a cancelled stream).
class EventsService::StreamReactor final
    : public grpc::ServerBidiReactor<StreamRequest, StreamAck> {
 public:
  explicit StreamReactor(EventsService* service) : service_(service) {
    service_->streams_open_.fetch_add(1);
    bool stopping;
    {
      std::lock_guard<std::mutex> l(service_->streams_mu_);
      service_->streams_.insert(this);
      stopping = service_->stopping_;
    }
    std::lock_guard<std::mutex> l(mu_);
    StartRead(&request_);
    if (stopping) StopLocked();
  }

  // Shutdown: no more batches are taken; the stream ends once those read are acknowledged.
  void Stop() {
    std::lock_guard<std::mutex> l(mu_);
    StopLocked();
  }

  void OnReadDone(bool ok) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!ok || stopping_) {
        // A batch read after the stop is not stored: it gets no acknowledgement, so the client
        // sends it again to the next daemon.
        reads_done_ = true;
        MaybeFinishLocked();
        return;
      }
      ++outstanding_;  // this batch, until it is answered: a stop waits for it
    }
    const uint64_t sequence = request_.sequence();
    std::vector<normalize::NormalizedEvent> events;
    absl::Status s = service_->NormalizeAll(request_.events(), &events);
    if (!s.ok()) {
      service_->events_invalid_.fetch_add(request_.events_size(), std::memory_order_relaxed);
      StreamAck ack;
      ack.set_sequence(sequence);
      ack.set_code(static_cast<int>(s.code()));
      ack.set_message(std::string(s.message()));
      OnAppended(std::move(ack), /*resume=*/true);
      return;
    }
    StreamAck ok_ack;
    ok_ack.set_sequence(sequence);
    for (const auto& e : events) ok_ack.add_event_ids(e.event_id);  // copied: resends
    const size_t n = events.size();
    std::vector<toolgate::v1::Event> life = service_->Lifecycle(request_.events());
    {
      // Reading on (or pausing) before the append: its callback may run at once.
      std::lock_guard<std::mutex> l(mu_);
      if (outstanding_ < service_->options_.stream_window) {
        if (!stopping_) StartRead(&request_);
      } else {
        read_paused_ = true;  // resumed by OnAppended
      }
    }
    service_->spool_->Append(
        std::move(events),
        [this, n, ack = std::move(ok_ack), life = std::move(life)](const absl::Status& st) mutable {
          service_->Count(st, n);
          if (st.ok() && !life.empty()) service_->lifecycle_(std::move(life));
          if (!st.ok()) {
            ack.clear_event_ids();
            ack.set_code(static_cast<int>(st.code()));
            ack.set_message(std::string(st.message()));
            if (absl::IsResourceExhausted(st)) {
              ack.set_retry_after_ms(static_cast<uint32_t>(service_->retry_after_.count()));
            }
          }
          OnAppended(std::move(ack), /*resume=*/false);
        });
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(mu_);
    writing_ = false;
    if (!ok) {
      write_failed_ = true;
      acks_.clear();
    } else if (!acks_.empty()) {
      StartNextWriteLocked();
    }
    MaybeFinishLocked();
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> l(service_->streams_mu_);
      service_->streams_.erase(this);
    }
    bool last;
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
      last = outstanding_ == 0;
    }
    service_->streams_open_.fetch_sub(1);
    if (last) delete this;
  }

 private:
  void StopLocked() {
    stopping_ = true;
    MaybeFinishLocked();
  }

  // A batch is answered. `resume`: it was refused before the append, and the read that
  // follows it is started here.
  void OnAppended(StreamAck ack, bool resume) {
    bool remove = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      --outstanding_;
      if (done_) {
        remove = outstanding_ == 0;
      } else {
        QueueAckLocked(std::move(ack));
        if (resume && !stopping_) {
          StartRead(&request_);
        } else if (read_paused_ && outstanding_ < service_->options_.stream_window) {
          read_paused_ = false;
          if (!stopping_) StartRead(&request_);
        }
        MaybeFinishLocked();
      }
    }
    if (remove) delete this;
  }

  void QueueAckLocked(StreamAck ack) {
    if (write_failed_ || finished_) return;
    acks_.push_back(std::move(ack));
    if (!writing_) StartNextWriteLocked();
  }

  void StartNextWriteLocked() {
    current_ = std::move(acks_.front());
    acks_.pop_front();
    writing_ = true;
    StartWrite(&current_);
  }

  void MaybeFinishLocked() {
    if (finished_ || !(reads_done_ || stopping_) || outstanding_ > 0 || writing_ ||
        !acks_.empty()) {
      return;
    }
    finished_ = true;
    // A read may still be pending after a stop: Finish completes it (ok = false).
    Finish(stopping_ && !reads_done_
               ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "toolgated is shutting down: reconnect and resend what is "
                              "not acknowledged")
               : grpc::Status::OK);
  }

  EventsService* const service_;
  StreamRequest request_;  // owned by the pending read
  StreamAck current_;      // owned by the pending write
  std::mutex mu_;
  std::deque<StreamAck> acks_;  // guarded by mu_
  uint64_t outstanding_ = 0;    // appends not yet called back; guarded by mu_
  bool reads_done_ = false, read_paused_ = false, writing_ = false;  // guarded by mu_
  bool write_failed_ = false, finished_ = false, done_ = false;      // guarded by mu_
  bool stopping_ = false;                                            // guarded by mu_
};

void EventsService::StopStreams() {
  std::lock_guard<std::mutex> l(streams_mu_);
  stopping_ = true;
  for (StreamReactor* r : streams_) r->Stop();
}

grpc::ServerBidiReactor<StreamRequest, StreamAck>* EventsService::Stream(
    grpc::CallbackServerContext* ctx) {
  return new StreamReactor(this);
}

}  // namespace toolgate::ingest
