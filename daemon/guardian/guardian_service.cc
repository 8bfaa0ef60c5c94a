#include "daemon/guardian/guardian_service.h"

namespace toolgate::guardian {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace

grpc::ServerUnaryReactor* GuardianService::ListPending(grpc::CallbackServerContext* ctx,
                                                       const toolgate::v1::ListPendingRequest* req,
                                                       toolgate::v1::ListPendingResponse* resp) {
  auto* r = ctx->DefaultReactor();
  auto list = guardian_->List(req->status(), req->limit() ? req->limit() : 100);
  if (!list.ok()) {
    r->Finish(ToGrpc(list.status()));
    return r;
  }
  for (auto& a : *list) *resp->add_actions() = std::move(a);
  r->Finish(grpc::Status::OK);
  return r;
}

grpc::ServerUnaryReactor* GuardianService::Decide(grpc::CallbackServerContext* ctx,
                                                  const toolgate::v1::DecideRequest* req,
                                                  toolgate::v1::DecideResponse* resp) {
  auto* r = ctx->DefaultReactor();
  if (req->id().empty()) {
    r->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "id: required"));
    return r;
  }
  if (req->approver_id().empty()) {
    r->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                           "approver_id: required (who decided is part of the audit trail)"));
    return r;
  }
  if (!req->approve() && req->reason().empty()) {
    r->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "reason: required to reject an action"));
    return r;
  }
  auto decided = guardian_->Decide(req->id(), req->approve(), req->reason(), req->approver_id());
  if (!decided.ok()) {
    r->Finish(ToGrpc(decided.status()));
    return r;
  }
  *resp->mutable_action() = std::move(*decided);
  r->Finish(grpc::Status::OK);
  return r;
}

}  // namespace toolgate::guardian
