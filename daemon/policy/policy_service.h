// PolicyService: toolgate.v1.Policy.Check — a synchronous decision from the local rule set.
//
// The answer is computed on the gRPC thread from the rule set in force (no I/O, no lock but the
// rate counters') and sent at once. The check is also recorded, after the answer, as an
// `approval` event in the session's chain (approverId "toolgate-policy", the decision, the rule,
// the reason, the policy revision, the decision id and the argumentsHash): the append does not
// delay the answer, and an append that fails (spool full) is logged and counted in
// toolgate_check_audit_failures_total rather than turning an answer into an error.
//
// REQUIRE_APPROVAL is answered as such; holding the action pending for a guardian
// (WaitForDecision) is not built yet and answers UNIMPLEMENTED.
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_POLICY_POLICY_SERVICE_H_
#define TOOLGATE_DAEMON_POLICY_POLICY_SERVICE_H_

#include <atomic>

#include "daemon/common/clock.h"
#include "daemon/config/config.h"
#include "daemon/normalize/normalizer.h"
#include "daemon/policy/policy_source.h"
#include "daemon/policy/rate_state.h"
#include "daemon/spool/spool.h"
#include "toolgate/v1/policy.grpc.pb.h"

namespace toolgate::policy {

struct CheckStats {
  uint64_t allow = 0, deny = 0, require_approval = 0, invalid = 0, audit_failures = 0;
};

class PolicyService final : public toolgate::v1::Policy::CallbackService {
 public:
  PolicyService(config::PolicyOptions options, uint64_t max_argument_bytes, PolicySource* source,
                const normalize::Normalizer* normalizer, spool::Spool* spool, Clock* clock);

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx,
                                  const toolgate::v1::CheckRequest* request,
                                  toolgate::v1::CheckResponse* response) override;

  // Decides without RPC or audit (also used by `toolgate policy test` through the same code).
  absl::Status Decide(const toolgate::v1::Action& action, toolgate::v1::CheckResponse* response,
                      std::string* arguments_hash);

  CheckStats stats() const;

 private:
  void Record(const toolgate::v1::Action& action, const toolgate::v1::CheckResponse& response,
              const std::string& arguments_hash);

  const config::PolicyOptions options_;
  const uint64_t max_argument_bytes_;
  PolicySource* const source_;
  const normalize::Normalizer* const normalizer_;
  spool::Spool* const spool_;
  Clock* const clock_;
  RateState rate_state_;
  std::atomic<uint64_t> allow_{0}, deny_{0}, require_approval_{0}, invalid_{0};
  std::atomic<uint64_t> audit_failures_{0};
};

toolgate::v1::Decision ToProto(Effect effect);

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_POLICY_SERVICE_H_
