// PolicyService: toolgate.v1.Policy.Check — a synchronous decision from the local rule set.
//
// The answer is computed on the gRPC thread from the rule set in force (no I/O, no lock but the
// rate counters') and sent at once. The check is also recorded, after the answer, as an
// `approval` event in the session's chain (approverId "toolgate-policy", the decision, the rule,
// the reason, the policy revision, the decision id and the argumentsHash): the append does not
// delay the answer, and an append that fails (spool full) is logged and counted in
// toolgate_check_audit_failures_total rather than turning an answer into an error.
//
// In remote mode (UseRemote) the decision comes from the upstream through RemoteChecker: the
// gRPC thread validates, the answer is finished from the HTTP client's thread (or at
// once from the cache or an open breaker) — no thread waits on the network. The answer's
// `source` says REMOTE, REMOTE_CACHE, FAILED_OPEN or FAILED_CLOSED.
//
// REQUIRE_APPROVAL holds the action pending in the guardian (with the rule's approval_timeout
// and on_timeout) and answers with its id; WaitForDecision streams heartbeats until the decision
// lands, then the decision, pushed the moment it is made (no polling). Creating the pending
// action writes one row to guardian.db on the gRPC thread: a rare path, accepted for now.
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_POLICY_POLICY_SERVICE_H_
#define TOOLGATE_DAEMON_POLICY_POLICY_SERVICE_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "daemon/common/clock.h"
#include "daemon/config/config.h"
#include "daemon/guardian/guardian.h"
#include "daemon/normalize/normalizer.h"
#include "daemon/policy/policy_source.h"
#include "daemon/policy/rate_state.h"
#include "daemon/policy/remote_checker.h"
#include "daemon/spool/spool.h"
#include "toolgate/v1/policy.grpc.pb.h"

namespace toolgate::policy {

struct CheckStats {
  uint64_t allow = 0, deny = 0, require_approval = 0, invalid = 0, audit_failures = 0;
};

class PolicyService final : public toolgate::v1::Policy::CallbackService {
 public:
  PolicyService(config::PolicyOptions options, uint64_t max_argument_bytes, PolicySource* source,
                const normalize::Normalizer* normalizer, spool::Spool* spool,
                guardian::Guardian* guardian, Clock* clock);
  ~PolicyService() override;

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx,
                                  const toolgate::v1::CheckRequest* request,
                                  toolgate::v1::CheckResponse* response) override;
  grpc::ServerWriteReactor<toolgate::v1::WaitUpdate>* WaitForDecision(
      grpc::CallbackServerContext* ctx, const toolgate::v1::WaitRequest* request) override;

  // Validates and decides `action` (and creates its pending action when approval is needed);
  // no RPC, no audit record. `canonical` receives the arguments' canonical JSON (RFC 8785).
  absl::Status Decide(const toolgate::v1::Action& action, toolgate::v1::CheckResponse* response,
                      std::string* canonical);

  // Remote mode: decisions from `remote` (not owned; outlives this). Call before serving.
  void UseRemote(RemoteChecker* remote) { remote_ = remote; }
  // The registered tools of an agent, for `tool_in_snapshot` (Agents.Register). Call before
  // serving; without it no agent has registered tools.
  using ToolsOf = std::function<std::shared_ptr<const ToolLookup>(const std::string& agent_id)>;
  void SetToolsOf(ToolsOf tools_of) { tools_of_ = std::move(tools_of); }

  CheckStats stats() const;

  // Shutdown: ends every WaitForDecision call (and any started later) with UNAVAILABLE, so that
  // none holds the drain; the pending actions stay and can be waited for again.
  void EndWaits();

 private:
  // Validates the action; `canonical` receives its arguments' canonical JSON, which their hash
  // is taken of where one is needed (the record, a pending action).
  absl::Status Validate(const toolgate::v1::Action& action, std::string* canonical);
  void CheckRemote(grpc::ServerUnaryReactor* reactor, const toolgate::v1::CheckRequest* request,
                   toolgate::v1::CheckResponse* response, std::string canonical);
  // Counts the decision, queues the check's audit record, and answers.
  void Answer(grpc::ServerUnaryReactor* reactor, const toolgate::v1::Action& action,
              toolgate::v1::CheckResponse* response, std::string canonical);
  // What a check's record is built from, copied before the answer.
  struct Pending {
    toolgate::v1::Action action;  // without its arguments: only their hash is recorded
    toolgate::v1::CheckResponse answer;
    std::string canonical;  // the arguments, hashed on the spool's writer thread
  };
  // The `approval` event of a check (on the spool's writer thread).
  absl::Status BuildRecord(const Pending& pending, normalize::NormalizedEvent* out) const;
  // A record's envelope and payload keys, beyond the sizes of its fields: what counts against
  // the spool's limit until the record is built.
  static constexpr uint64_t kRecordBytes = 512;

 public:
  struct WaitState;  // one WaitForDecision call; shared with the guardian's waiter

 private:
  void HeartbeatLoop();

  const config::PolicyOptions options_;
  const uint64_t max_argument_bytes_;
  PolicySource* const source_;
  const normalize::Normalizer* const normalizer_;
  spool::Spool* const spool_;
  Clock* const clock_;
  guardian::Guardian* const guardian_;
  RemoteChecker* remote_ = nullptr;
  ToolsOf tools_of_;
  RateState rate_state_;
  std::mutex waits_mu_;
  std::condition_variable waits_cv_;
  std::set<std::shared_ptr<WaitState>> waits_;  // guarded by waits_mu_
  bool stopping_ = false;                       // guarded by waits_mu_
  bool ending_ = false;                         // guarded by waits_mu_
  std::thread heartbeat_;
  std::atomic<uint64_t> allow_{0}, deny_{0}, require_approval_{0}, invalid_{0};
  std::atomic<uint64_t> audit_failures_{0};
};

toolgate::v1::Decision ToProto(Effect effect);

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_POLICY_SERVICE_H_
