#include "daemon/notifier/inbound.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "daemon/common/log.h"
#include "daemon/notifier/signature.h"

namespace toolgate::notifier {
namespace {

using nlohmann::json;

InboundResponse Error(int status, const char* code, const std::string& message) {
  return {status, json({{"error", {{"code", code}, {"message", message}}}}).dump()};
}

InboundResponse Result(int status, json body) {
  return {status, body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

std::string Str(const json& o, const char* key) {
  return o.contains(key) && o[key].is_string() ? o[key].get<std::string>() : std::string();
}

}  // namespace

InboundWebhooks::InboundWebhooks(std::string secret, Clock* clock, guardian::Guardian* guardian)
    : secret_(std::move(secret)), clock_(clock), guardian_(guardian) {}

InboundStats InboundWebhooks::stats() const {
  return {accepted_.load(), rejected_.load(), decisions_.load()};
}

InboundResponse InboundWebhooks::Handle(std::string_view signature_header,
                                        const std::string& body) {
  if (body.size() > kMaxInboundBodyBytes) {
    ++rejected_;
    return Error(413, "PAYLOAD_TOO_LARGE", "body larger than 1 MiB");
  }
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(clock_->Now().time_since_epoch()).count();
  const SignatureCheck check = VerifyKaplaixSignature(signature_header, body, secret_, now);
  if (check != SignatureCheck::kOk) {
    ++rejected_;
    LogWarn("inbound webhook refused", {{"reason", SignatureCheckName(check)}});
    return Error(401, "AUTHENTICATION_FAILED",
                 std::string("x-kaplaix-signature: ") + SignatureCheckName(check));
  }
  ++accepted_;
  const json j = json::parse(body, nullptr, false);
  const std::string type = j.is_object() ? Str(j, "type") : std::string();
  if (type != "guardian.decision") {
    LogInfo("inbound webhook acknowledged, nothing to do",
            {{"type", type.empty() ? "(none)" : type.substr(0, 100)}});
    return Result(202, {{"status", "ignored"}});
  }
  const std::string id = Str(j, "pendingActionId");
  const std::string decision = Str(j, "decision");
  const std::string reason = Str(j, "reason");
  const std::string approver = Str(j, "approverId");
  if (id.empty()) return Error(400, "VALIDATION_ERROR", "pendingActionId: required");
  if (decision != "approved" && decision != "rejected") {
    return Error(400, "VALIDATION_ERROR", "decision: must be \"approved\" or \"rejected\"");
  }
  if (approver.empty()) return Error(400, "VALIDATION_ERROR", "approverId: required");
  if (decision == "rejected" && reason.empty()) {
    return Error(400, "VALIDATION_ERROR", "reason: required to reject");
  }
  return ApplyDecision(id, decision == "approved", reason, approver);
}

InboundResponse InboundWebhooks::ApplyDecision(const std::string& id, bool approve,
                                               const std::string& reason,
                                               const std::string& approver) {
  const json ignored = {{"status", "ignored"}, {"reason", "unknown pending action"}};
  if (guardian_ == nullptr) return Result(202, ignored);
  // toolgate's id, or the upstream's id of an action it created (remote policy mode) — decided
  // ones included, so that a retried webhook naming the upstream's id is told so too.
  auto found = guardian_->Get(id);
  if (absl::IsNotFound(found.status())) found = guardian_->GetByUpstreamId(id);
  if (!found.ok()) {
    if (absl::IsNotFound(found.status())) {
      LogInfo("inbound decision for an unknown pending action", {{"id", id}});
      return Result(202, ignored);
    }
    return Error(500, "INTERNAL_ERROR", std::string(found.status().message()));
  }
  const toolgate::v1::PendingStatus want =
      approve ? toolgate::v1::APPROVED : toolgate::v1::REJECTED;
  auto decided = guardian_->Decide(found->id(), approve, reason, approver);
  if (!decided.ok()) {
    if (absl::IsFailedPrecondition(decided.status())) {
      // Decided already: the same decision sent again (a retried webhook) is not an error.
      auto now = guardian_->Get(found->id());
      if (now.ok() && now->status() == want) {
        return Result(200, {{"status", "already_decided"},
                            {"pendingActionId", now->id()},
                            {"decision", guardian::StatusWord(now->status())}});
      }
      return Error(409, "CONFLICT", std::string(decided.status().message()));
    }
    if (absl::IsNotFound(decided.status())) return Result(202, ignored);
    return Error(500, "INTERNAL_ERROR", std::string(decided.status().message()));
  }
  ++decisions_;
  LogInfo("inbound webhook decision applied",
          {{"id", decided->id()},
           {"decision", guardian::StatusWord(decided->status())},
           {"approver", approver}});
  return Result(200, {{"status", "applied"},
                      {"pendingActionId", decided->id()},
                      {"decision", guardian::StatusWord(decided->status())}});
}

}  // namespace toolgate::notifier
