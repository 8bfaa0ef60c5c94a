// AdminService: toolgate.v1.Admin (status, flush, dead letters, sessions, export).
//
// Thread-safe. Reads open their own spool reader per call; mutations go through the spool's
// writer. Flush waits on a helper thread, never on a gRPC thread.
#ifndef TOOLGATE_DAEMON_APP_ADMIN_SERVICE_H_
#define TOOLGATE_DAEMON_APP_ADMIN_SERVICE_H_

#include <functional>

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

 private:
  spool::Spool* const spool_;
  const StatusFiller fill_status_;
  const FlushHook flush_;
  const ReloadHook reload_;
};

}  // namespace toolgate::app

#endif  // TOOLGATE_DAEMON_APP_ADMIN_SERVICE_H_
