// GuardianService: toolgate.v1.Guardian — list pending actions and decide them (the CLI's
// `pending`, `approve`, `reject`), and watch them (WatchPending: the actions pending now, then
// each new one, and with include_decisions each decision, pushed by a guardian listener; a
// watcher that reads too slowly to keep 1,000 updates queued is cancelled with
// RESOURCE_EXHAUSTED rather than holding memory without bound).
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_SERVICE_H_
#define TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_SERVICE_H_

#include <memory>
#include <mutex>
#include <set>

#include "daemon/guardian/guardian.h"
#include "toolgate/v1/guardian.grpc.pb.h"

namespace toolgate::guardian {

struct WatchState;  // one WatchPending call

class GuardianService final : public toolgate::v1::Guardian::CallbackService {
 public:
  explicit GuardianService(Guardian* guardian) : guardian_(guardian) {}

  grpc::ServerUnaryReactor* ListPending(grpc::CallbackServerContext* ctx,
                                        const toolgate::v1::ListPendingRequest* req,
                                        toolgate::v1::ListPendingResponse* resp) override;
  grpc::ServerUnaryReactor* Decide(grpc::CallbackServerContext* ctx,
                                   const toolgate::v1::DecideRequest* req,
                                   toolgate::v1::DecideResponse* resp) override;
  grpc::ServerWriteReactor<toolgate::v1::PendingAction>* WatchPending(
      grpc::CallbackServerContext* ctx, const toolgate::v1::WatchPendingRequest* req) override;

  // Shutdown: ends every WatchPending call (and any started later) with UNAVAILABLE, so that
  // none holds the drain.
  void StopWatches();

 private:
  Guardian* const guardian_;
  std::mutex watches_mu_;
  std::set<std::shared_ptr<WatchState>> watches_;  // guarded by watches_mu_
  bool stopping_ = false;                          // guarded by watches_mu_
};

}  // namespace toolgate::guardian

#endif  // TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_SERVICE_H_
