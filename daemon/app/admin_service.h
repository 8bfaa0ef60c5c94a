// AdminService: toolgate.v1.Admin (status, flush, dead letters, sessions, export, tail).
//
// Tail streams the events each commit makes durable, fed by the spool's tap (OnCommitted, on
// the spool's writer thread). The tap is on only while at least one tail is open. Each tail has
// its own queue of at most kMaxTailQueue events: a tail that reads slower than events commit is
// ended with RESOURCE_EXHAUSTED, so that it never slows the spool nor holds memory unbounded.
//
// Thread-safe. Reads open their own spool reader per call; mutations go through the spool's
// writer. Flush waits on a helper thread, never on a gRPC thread.
#ifndef TOOLGATE_DAEMON_APP_ADMIN_SERVICE_H_
#define TOOLGATE_DAEMON_APP_ADMIN_SERVICE_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "daemon/policy/policy_source.h"
#include "daemon/spool/spool.h"
#include "toolgate/v1/admin.grpc.pb.h"

namespace toolgate::app {

class AdminService final : public toolgate::v1::Admin::CallbackService {
 public:
  using StatusFiller = std::function<void(toolgate::v1::StatusResponse*)>;
  using FlushHook = std::function<void()>;
  using ReloadHook = std::function<policy::ReloadResult()>;

  AdminService(spool::Spool* spool, StatusFiller fill_status, FlushHook flush, ReloadHook reload);

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx,
                                   const toolgate::v1::StatusRequest* req,
                                   toolgate::v1::StatusResponse* resp) override;
  grpc::ServerUnaryReactor* Flush(grpc::CallbackServerContext* ctx,
                                  const toolgate::v1::FlushRequest* req,
                                  toolgate::v1::FlushResponse* resp) override;
  grpc::ServerUnaryReactor* ReloadPolicies(grpc::CallbackServerContext* ctx,
                                           const toolgate::v1::ReloadPoliciesRequest* req,
                                           toolgate::v1::ReloadPoliciesResponse* resp) override;
  grpc::ServerUnaryReactor* ListDeadLetters(grpc::CallbackServerContext* ctx,
                                            const toolgate::v1::ListDeadLettersRequest* req,
                                            toolgate::v1::ListDeadLettersResponse* resp) override;
  grpc::ServerUnaryReactor* RetryDeadLetters(grpc::CallbackServerContext* ctx,
                                             const toolgate::v1::RetryDeadLettersRequest* req,
                                             toolgate::v1::RetryDeadLettersResponse* resp) override;
  grpc::ServerUnaryReactor* PurgeDeadLetters(grpc::CallbackServerContext* ctx,
                                             const toolgate::v1::PurgeDeadLettersRequest* req,
                                             toolgate::v1::PurgeDeadLettersResponse* resp) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx,
                                         const toolgate::v1::ListSessionsRequest* req,
                                         toolgate::v1::ListSessionsResponse* resp) override;
  grpc::ServerWriteReactor<toolgate::v1::StoredEvent>* ExportSession(
      grpc::CallbackServerContext* ctx, const toolgate::v1::ExportSessionRequest* req) override;
  grpc::ServerWriteReactor<toolgate::v1::StoredEvent>* Tail(
      grpc::CallbackServerContext* ctx, const toolgate::v1::TailRequest* req) override;

  // Initial metadata of a Tail call, sent once the tail is registered: from then on, every
  // committed event reaches it.
  static constexpr char kTailReadyKey[] = "toolgate-tail-ready";
  // Events queued for one tail at most; beyond, that tail ends with RESOURCE_EXHAUSTED.
  static constexpr size_t kMaxTailQueue = 10000;

  // The spool's tap (Spool::SetTap): hands committed events to the open tails. Never blocks.
  void OnCommitted(std::vector<spool::CommittedEvent> events);
  // Ends the open tails with UNAVAILABLE and refuses new ones: called at shutdown, before the
  // server waits for its calls to end (a tail never ends by itself).
  void StopTails();
  // Answers the Flush calls still waiting (complete or not) and refuses to wait in new ones:
  // called at shutdown, before the spool they watch is closed.
  void StopFlushes();
  ~AdminService() override;

 private:
  struct PendingFlush {
    grpc::ServerUnaryReactor* reactor;
    toolgate::v1::FlushResponse* response;
    std::chrono::steady_clock::time_point deadline;
  };
  // The one thread that waits for the queue to drain for every waiting Flush (started with
  // the first one), instead of a detached thread per call that could outlive the spool.
  void FlushWaitLoop();
  // Requires flush_mu_.
  void AnswerFlushLocked(const PendingFlush& f);
  struct TailState;
  class TailReactor;
  void RemoveTail(const std::shared_ptr<TailState>& tail);

  spool::Spool* const spool_;
  const StatusFiller fill_status_;
  const FlushHook flush_;
  const ReloadHook reload_;

  std::mutex tails_mu_;                            // taken before a TailState's mutex
  std::vector<std::shared_ptr<TailState>> tails_;  // guarded by tails_mu_
  bool tails_stopped_ = false;                     // guarded by tails_mu_

  std::mutex flush_mu_;
  std::condition_variable flush_cv_;
  std::vector<PendingFlush> flushes_;  // guarded by flush_mu_
  bool flushes_stopped_ = false;       // guarded by flush_mu_
  std::thread flush_thread_;           // started under flush_mu_
};

}  // namespace toolgate::app

#endif  // TOOLGATE_DAEMON_APP_ADMIN_SERVICE_H_
