// AgentsService: toolgate.v1.Agents — an agent registers its name, framework, version and a
// snapshot of its tools/graph.
//
// Register validates (agent_id 1-128 of [A-Za-z0-9_-], name required, the snapshot per
// ParseSnapshot), stores the agent in the registry, emits an `identity` event (agentName,
// version, capabilities = the snapshot's tool names, snapshotHash) in the session `session_id`
// (default "registration") and answers once that event is durable. With an upstream it also
// registers the agent there (POST /v1/agents, integrationMode "sidecar"; 409 means it is
// there already) before answering; when the upstream cannot be reached the answer says
// upstream_registered: false and a background loop retries every 30 s.
//
// Thread-safe. No gRPC thread waits: the answer is finished from the spool's or the HTTP
// client's callback.
#ifndef TOOLGATE_DAEMON_AGENTS_AGENTS_SERVICE_H_
#define TOOLGATE_DAEMON_AGENTS_AGENTS_SERVICE_H_

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "daemon/agents/registry.h"
#include "daemon/common/http_client.h"
#include "daemon/normalize/normalizer.h"
#include "daemon/spool/spool.h"
#include "toolgate/v1/agents.grpc.pb.h"

namespace toolgate::agents {

class AgentsService final : public toolgate::v1::Agents::CallbackService {
 public:
  // `http` is null in standalone mode.
  AgentsService(AgentRegistry* registry, const normalize::Normalizer* normalizer,
                spool::Spool* spool, HttpClient* http, size_t max_snapshot_bytes,
                std::chrono::milliseconds upstream_timeout);
  ~AgentsService() override;

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const toolgate::v1::RegisterAgentRequest* req,
                                     toolgate::v1::RegisterAgentResponse* resp) override;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx,
                                const toolgate::v1::GetAgentRequest* req,
                                toolgate::v1::AgentInfo* resp) override;

  // Starts the retry loop of upstream registrations (with an upstream only).
  void Start();
  void Stop();

  uint64_t registered() const { return registered_.load(); }
  uint64_t upstream_failures() const { return upstream_failures_.load(); }

 private:
  // POST /v1/agents; `done(true)` on 2xx or 409.
  void RegisterUpstream(const toolgate::v1::RegisterAgentRequest& req,
                        std::function<void(bool)> done);
  void RetryLoop();

  AgentRegistry* const registry_;
  const normalize::Normalizer* const normalizer_;
  spool::Spool* const spool_;
  HttpClient* const http_;
  const size_t max_snapshot_bytes_;
  const std::chrono::milliseconds upstream_timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread retry_;
  std::atomic<uint64_t> registered_{0}, upstream_failures_{0};
};

}  // namespace toolgate::agents

#endif  // TOOLGATE_DAEMON_AGENTS_AGENTS_SERVICE_H_
