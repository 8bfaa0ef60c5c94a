// EventsService: the gRPC front of the audit path (toolgate.v1.Events, callback API).
//
// A reaction validates and normalizes the request on the gRPC thread (CPU only), hands the
// events to the spool, and answers when the spool's group commit calls back: it never waits
// on disk or network. Either every event of a request is stored, or none is.
//
// Flow control on Stream: at most `stream_window` batches of one stream wait for their commit;
// beyond that the daemon stops reading the stream, so gRPC's window pushes back on the client.
//
// At shutdown, StopStreams ends every open stream once the batches it already read are
// acknowledged (UNAVAILABLE: the client reconnects and resends anything unacknowledged), so that
// an idle stream does not hold the drain until its deadline.
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_INGEST_EVENTS_SERVICE_H_
#define TOOLGATE_DAEMON_INGEST_EVENTS_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <vector>

#include "daemon/config/config.h"
#include "daemon/normalize/normalizer.h"
#include "daemon/spool/spool.h"
#include "toolgate/v1/events.grpc.pb.h"

namespace toolgate::ingest {

struct IngestStats {
  uint64_t events_received = 0;  // accepted and durable
  uint64_t events_invalid = 0;   // in requests refused with INVALID_ARGUMENT
  uint64_t requests_refused_full = 0;
  uint64_t streams_open = 0;
};

class EventsService final : public toolgate::v1::Events::CallbackService {
 public:
  EventsService(config::IngestOptions options, const normalize::Normalizer* normalizer,
                spool::Spool* spool, config::Millis retry_after);

  grpc::ServerUnaryReactor* Record(grpc::CallbackServerContext* ctx,
                                   const toolgate::v1::RecordRequest* request,
                                   toolgate::v1::RecordResponse* response) override;
  grpc::ServerBidiReactor<toolgate::v1::StreamRequest, toolgate::v1::StreamAck>* Stream(
      grpc::CallbackServerContext* ctx) override;

  IngestStats stats() const;

  // Ends the open streams (and any opened later) after their last acknowledgements.
  void StopStreams();

  // Told of a request's session lifecycle events (session_start, session_end, identity, and
  // generic events of those categories) once the request is durable, on the spool's writer
  // thread: it must only enqueue (the notifier). Set before the server starts.
  using LifecycleObserver = std::function<void(std::vector<toolgate::v1::Event>)>;
  void SetLifecycleObserver(LifecycleObserver observer) { lifecycle_ = std::move(observer); }

 private:
  class StreamReactor;
  friend class StreamReactor;

  // Validates and normalizes every event of a request; fails on the first bad one.
  absl::Status NormalizeAll(const google::protobuf::RepeatedPtrField<toolgate::v1::Event>& in,
                            std::vector<normalize::NormalizedEvent>* out);
  void Count(const absl::Status& s, size_t events);
  // Copies of the lifecycle events of `in` (none when no observer is set).
  std::vector<toolgate::v1::Event> Lifecycle(
      const google::protobuf::RepeatedPtrField<toolgate::v1::Event>& in) const;

  const config::IngestOptions options_;
  const normalize::Normalizer* const normalizer_;
  spool::Spool* const spool_;
  const config::Millis retry_after_;
  const std::string retry_after_text_;  // the grpc-retry-pushback-ms trailer's value
  std::atomic<uint64_t> events_received_{0}, events_invalid_{0}, refused_full_{0};
  std::atomic<uint64_t> streams_open_{0};
  LifecycleObserver lifecycle_;  // set before serving, then read-only
  std::mutex streams_mu_;
  std::set<StreamReactor*> streams_;  // live streams; guarded by streams_mu_
  bool stopping_ = false;             // guarded by streams_mu_
};

// absl → gRPC status, same code and message.
grpc::Status ToGrpc(const absl::Status& s);

}  // namespace toolgate::ingest

#endif  // TOOLGATE_DAEMON_INGEST_EVENTS_SERVICE_H_
