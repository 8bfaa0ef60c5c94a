// GuardianService: toolgate.v1.Guardian — list pending actions and decide them (the CLI's
// `pending`, `approve`, `reject`). Watching new pending actions (WatchPending) is not built yet
// and answers UNIMPLEMENTED.
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_SERVICE_H_
#define TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_SERVICE_H_

#include "daemon/guardian/guardian.h"
#include "toolgate/v1/guardian.grpc.pb.h"

namespace toolgate::guardian {

class GuardianService final : public toolgate::v1::Guardian::CallbackService {
 public:
  explicit GuardianService(Guardian* guardian) : guardian_(guardian) {}

  grpc::ServerUnaryReactor* ListPending(grpc::CallbackServerContext* ctx,
                                        const toolgate::v1::ListPendingRequest* req,
                                        toolgate::v1::ListPendingResponse* resp) override;
  grpc::ServerUnaryReactor* Decide(grpc::CallbackServerContext* ctx,
                                   const toolgate::v1::DecideRequest* req,
                                   toolgate::v1::DecideResponse* resp) override;

 private:
  Guardian* const guardian_;
};

}  // namespace toolgate::guardian

#endif  // TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_SERVICE_H_
