#include "daemon/agents/agents_service.h"

#include <pthread.h>

#include <future>
#include <nlohmann/json.hpp>

#include "daemon/common/log.h"

namespace toolgate::agents {
namespace {

constexpr std::chrono::seconds kRetryEvery{30};

bool ValidAgentId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  }
  return true;
}

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

}  // namespace

AgentsService::AgentsService(AgentRegistry* registry, const normalize::Normalizer* normalizer,
                             spool::Spool* spool, HttpClient* http, size_t max_snapshot_bytes,
                             std::chrono::milliseconds upstream_timeout)
    : registry_(registry),
      normalizer_(normalizer),
      spool_(spool),
      http_(http),
      max_snapshot_bytes_(max_snapshot_bytes),
      upstream_timeout_(upstream_timeout) {}

AgentsService::~AgentsService() { Stop(); }

void AgentsService::Start() {
  if (http_ != nullptr) retry_ = std::thread([this] { RetryLoop(); });
}

void AgentsService::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (retry_.joinable()) retry_.join();
}

void AgentsService::RegisterUpstream(const toolgate::v1::RegisterAgentRequest& req,
                                     std::function<void(bool)> done) {
  nlohmann::json body = {
      {"agentId", req.agent_id()}, {"name", req.name()}, {"integrationMode", "sidecar"}};
  if (!req.description().empty()) body["description"] = req.description();
  if (!req.framework().empty()) body["framework"] = req.framework();
  if (!req.environment().empty()) body["environment"] = req.environment();
  http_->Send("POST", "/v1/agents", body.dump(), upstream_timeout_,
              [this, id = req.agent_id(), done = std::move(done)](HttpResponse r) {
                const bool ok = r.ok() || r.status == 409;  // 409: the upstream knows it already
                if (ok) {
                  if (absl::Status s = registry_->MarkUpstreamRegistered(id); !s.ok()) {
                    LogWarn("agents: cannot record the upstream registration",
                            {{"agent_id", id}, {"error", std::string(s.message())}});
                  }
                  LogInfo("agents: registered upstream",
                          {{"agent_id", id}, {"status", static_cast<int64_t>(r.status)}});
                } else {
                  upstream_failures_.fetch_add(1);
                  LogWarn("agents: upstream registration failed; retried every 30s",
                          {{"agent_id", id}, {"error", r.Describe()}});
                }
                done(ok);
              });
}

grpc::ServerUnaryReactor* AgentsService::Register(grpc::CallbackServerContext* ctx,
                                                  const toolgate::v1::RegisterAgentRequest* req,
                                                  toolgate::v1::RegisterAgentResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  if (!ValidAgentId(req->agent_id())) {
    reactor->Finish(Invalid("agent_id: required, 1-128 characters of [A-Za-z0-9_-]"));
    return reactor;
  }
  if (req->name().empty() || req->name().size() > 255) {
    reactor->Finish(Invalid("name: required, 1-255 characters"));
    return reactor;
  }
  if (req->session_id().size() > 255) {
    reactor->Finish(Invalid("session_id: at most 255 characters"));
    return reactor;
  }
  auto snapshot = ParseSnapshot(req->snapshot_json(), max_snapshot_bytes_);
  if (!snapshot.ok()) {
    reactor->Finish(Invalid(std::string(snapshot.status().message())));
    return reactor;
  }
  // The identity event first, so that a bad one (it cannot be, but) stores nothing.
  toolgate::v1::Event ev;
  ev.set_agent_id(req->agent_id());
  ev.set_session_id(req->session_id().empty() ? "registration" : req->session_id());
  auto* id = ev.mutable_identity();
  id->set_agent_name(req->name());
  id->set_version(req->version());
  for (const auto& t : snapshot->tool_names) id->add_capabilities(t);
  id->set_snapshot_hash(snapshot->hash);
  std::vector<normalize::NormalizedEvent> events(1);
  if (absl::Status s = normalizer_->Normalize(ev, "identity", &events[0]); !s.ok()) {
    reactor->Finish(Invalid(std::string(s.message())));
    return reactor;
  }
  const std::string event_id = events[0].event_id;
  auto info = registry_->Register(*req, *snapshot);
  if (!info.ok()) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(info.status().message())));
    return reactor;
  }
  registered_.fetch_add(1);
  resp->set_agent_id(req->agent_id());
  resp->set_snapshot_hash(snapshot->hash);
  resp->set_identity_event_id(event_id);
  LogInfo("agents: registered", {{"agent_id", req->agent_id()},
                                 {"snapshot_hash", snapshot->hash},
                                 {"tools", snapshot->tool_names.size()}});
  // Copy what the upstream needs: the request may be freed once the reactor finishes.
  auto upstream_req = std::make_shared<toolgate::v1::RegisterAgentRequest>(*req);
  upstream_req->clear_snapshot_json();
  spool_->Append(std::move(events), [this, reactor, resp, upstream_req](const absl::Status& st) {
    if (!st.ok()) {
      reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(st.code()),
                                   "identity event not stored: " + std::string(st.message())));
      return;
    }
    if (http_ == nullptr) {
      reactor->Finish(grpc::Status::OK);
      return;
    }
    RegisterUpstream(*upstream_req, [reactor, resp](bool ok) {
      resp->set_upstream_registered(ok);
      reactor->Finish(grpc::Status::OK);
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* AgentsService::Get(grpc::CallbackServerContext* ctx,
                                             const toolgate::v1::GetAgentRequest* req,
                                             toolgate::v1::AgentInfo* resp) {
  auto* reactor = ctx->DefaultReactor();
  auto info = registry_->Get(req->agent_id());
  if (!info.ok()) {
    reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(info.status().code()),
                                 std::string(info.status().message())));
    return reactor;
  }
  *resp = std::move(*info);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void AgentsService::RetryLoop() {
  pthread_setname_np(pthread_self(), "tg-agents");
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, kRetryEvery, [this] { return stopping_; })) {
    l.unlock();
    for (const auto& req : registry_->NotUpstream()) {
      auto done = std::make_shared<std::promise<void>>();
      RegisterUpstream(req, [done](bool) { done->set_value(); });
      done->get_future().wait();
    }
    l.lock();
  }
}

}  // namespace toolgate::agents
