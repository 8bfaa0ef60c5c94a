#include "daemon/app/daemon.h"

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>
#include <httplib.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#ifdef TOOLGATE_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "daemon/agents/agents_service.h"
#include "daemon/agents/registry.h"
#include "daemon/app/admin_service.h"
#include "daemon/common/clock.h"
#include "daemon/common/crypto.h"
#include "daemon/common/dir_lock.h"
#include "daemon/common/http_client.h"
#include "daemon/common/log.h"
#include "daemon/guardian/guardian.h"
#include "daemon/guardian/guardian_service.h"
#include "daemon/guardian/upstream_poller.h"
#include "daemon/ingest/events_service.h"
#include "daemon/normalize/normalizer.h"
#include "daemon/notifier/inbound.h"
#include "daemon/notifier/notifier.h"
#include "daemon/policy/policy_service.h"
#include "daemon/policy/policy_source.h"
#include "daemon/policy/policy_sync.h"
#include "daemon/policy/remote_checker.h"
#include "daemon/shipper/shipper.h"
#include "daemon/spool/recovery.h"
#include "daemon/spool/spool.h"

namespace toolgate::app {
namespace {

// Counts the gRPC calls in progress (an interceptor lives as long as its call), so that
// shutdown can tell "calls still running" from "idle client connections": gRPC's Shutdown
// waits for both until its deadline, since a client may keep a connection open after GOAWAY.
class CallCounter final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo*) override {
    return new Counted(&in_flight_);
  }
  uint64_t in_flight() const { return in_flight_.load(std::memory_order_acquire); }

 private:
  class Counted final : public grpc::experimental::Interceptor {
   public:
    explicit Counted(std::atomic<uint64_t>* n) : n_(n) { n_->fetch_add(1); }
    ~Counted() override { n_->fetch_sub(1, std::memory_order_release); }
    void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
      methods->Proceed();
    }

   private:
    std::atomic<uint64_t>* const n_;
  };
  std::atomic<uint64_t> in_flight_{0};
};

namespace fs = std::filesystem;

void Notify(const char* state) {
#ifdef TOOLGATE_HAVE_SYSTEMD
  sd_notify(0, state);
#else
  (void)state;
#endif
}

prometheus::MetricFamily Family(const std::string& name, const std::string& help,
                                prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

// Redacts user:password@ from a URL for logs.
std::string SafeUrl(const std::string& url) {
  const size_t scheme = url.find("://");
  const size_t at = url.find('@');
  if (scheme == std::string::npos || at == std::string::npos) return url;
  return url.substr(0, scheme + 3) + "***@" + url.substr(at + 1);
}

}  // namespace

struct Daemon::Impl {
  config::Config cfg;
  std::unique_ptr<DirLock> data_dir_lock;  // declared before the rest: released after them
  Clock* clock = Clock::Real();
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::unique_ptr<normalize::Normalizer> normalizer;
  std::unique_ptr<spool::Spool> spool;
  std::unique_ptr<shipper::Shipper> shipper;
  // Before events and guardian, whose hooks point at it: destroyed after them.
  std::unique_ptr<notifier::Notifier> notifier;                 // with notifier.endpoints
  std::unique_ptr<notifier::InboundWebhooks> inbound_webhooks;  // with an inbound secret
  std::unique_ptr<ingest::EventsService> events;
  std::unique_ptr<AdminService> admin;
  std::unique_ptr<policy::PolicySource> policies;
  std::unique_ptr<guardian::Guardian> guardian;
  std::unique_ptr<guardian::GuardianService> guardian_service;
  std::unique_ptr<policy::PolicyService> policy_service;
  std::unique_ptr<HttpClient> upstream_api;  // with an upstream: everything but /v1/events
  std::unique_ptr<policy::RemoteChecker> remote_policy;       // policy.mode remote
  std::unique_ptr<policy::PolicySync> policy_sync;            // policy.mode sync
  std::unique_ptr<guardian::UpstreamPoller> guardian_poller;  // with an upstream
  std::unique_ptr<agents::AgentRegistry> agent_registry;
  std::unique_ptr<agents::AgentsService> agents_service;
  std::unique_ptr<grpc::Server> server;
  CallCounter* calls = nullptr;  // owned by the server
  std::unique_ptr<httplib::Server> http;
  std::thread http_thread;
  std::thread watchdog_thread;
  std::mutex watchdog_mu;
  std::condition_variable watchdog_cv;
  bool watchdog_stop = false;  // guarded by watchdog_mu
  std::vector<std::string> listening;
  bool shut_down = false;
  uint64_t guardian_corrupt_moved = 0;  // 1 when guardian.db was moved aside at start-up

  void FillStatus(toolgate::v1::StatusResponse* r) {
    const spool::Stats s = spool->stats();
    const ingest::IngestStats in = events->stats();
    r->set_version(kVersion);
    r->set_mode(cfg.standalone() ? "standalone" : "upstream");
    r->set_queue_depth(s.queue_depth);
    r->set_spool_bytes(s.stored_bytes);
    r->set_spool_max_bytes(cfg.standalone() ? cfg.spool.retention_max_bytes : cfg.spool.max_bytes);
    r->set_stored_events(s.stored_events);
    r->set_dead_letters(s.dead_letters);
    r->set_events_received(in.events_received);
    r->set_data_dir(cfg.data_dir);
    for (const auto& l : listening) r->add_listen(l);
    r->set_uptime_s(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started)
            .count()));
    r->set_policy_revision(policies->revision());
    if (shipper) {
      const shipper::ShipperStats sh = shipper->stats();
      r->set_events_shipped(sh.events_shipped);
      r->set_upstream_url(SafeUrl(cfg.upstream.url));
      r->set_upstream_state(sh.state.empty() ? "idle" : sh.state);
      r->set_upstream_last_error(sh.last_error);
    } else {
      r->set_upstream_state("unconfigured");
    }
    r->set_spool_failed(s.failed);
    r->set_pending_approvals(guardian->pending());
    if (remote_policy) {
      r->set_breaker_state(
          std::string(policy::CircuitBreaker::Name(remote_policy->breaker_state())));
    }
  }

  std::string Metrics() {
    using prometheus::MetricType;
    const spool::Stats s = spool->stats();
    const ingest::IngestStats in = events->stats();
    std::vector<prometheus::MetricFamily> f = {
        Family("toolgate_events_received_total", "Events acknowledged to agents (durable).",
               MetricType::Counter, in.events_received),
        Family("toolgate_events_invalid_total", "Events in requests refused as invalid.",
               MetricType::Counter, in.events_invalid),
        Family("toolgate_requests_refused_full_total",
               "Requests refused with RESOURCE_EXHAUSTED because the spool was full.",
               MetricType::Counter, in.requests_refused_full),
        Family("toolgate_streams_open", "Open event streams.", MetricType::Gauge, in.streams_open),
        Family("toolgate_spool_events", "Events in the local store.", MetricType::Gauge,
               s.stored_events),
        Family("toolgate_spool_bytes", "Bytes of events in the local store.", MetricType::Gauge,
               s.stored_bytes),
        Family("toolgate_queue_depth", "Events waiting to be shipped.", MetricType::Gauge,
               s.queue_depth),
        Family("toolgate_dead_letters", "Events refused by the upstream, kept aside.",
               MetricType::Gauge, s.dead_letters),
        Family("toolgate_spool_commits_total", "Group commits.", MetricType::Counter, s.commits),
        Family("toolgate_events_deduplicated_total",
               "Resent events recognised by eventId and acknowledged without being stored again.",
               MetricType::Counter, s.deduplicated),
        Family("toolgate_spool_damaged_events_total",
               "Events of damaged stored chunks set aside unread (kept in damaged_chunks).",
               MetricType::Counter, s.damaged_events),
        Family("toolgate_spool_evicted_total", "Events evicted by standalone retention.",
               MetricType::Counter, s.evicted),
        Family("toolgate_spool_failed", "1 when the store failed and refuses writes.",
               MetricType::Gauge, s.failed ? 1 : 0),
        Family("toolgate_spool_disk_full",
               "1 while appends are refused for a full disk (below spool.min_free_disk).",
               MetricType::Gauge, s.disk_full ? 1 : 0),
        Family("toolgate_spool_corrupt_moved_total",
               "Unreadable spool files moved aside at start-up (the spool started empty).",
               MetricType::Counter, s.corrupt_moved),
        Family("toolgate_guardian_corrupt_moved_total",
               "Unreadable guardian.db files moved aside at start-up.", MetricType::Counter,
               guardian_corrupt_moved),
    };
    const policy::CheckStats cs = policy_service->stats();
    f.push_back(Family("toolgate_checks_allow_total", "Check answers ALLOW.", MetricType::Counter,
                       cs.allow));
    f.push_back(
        Family("toolgate_checks_deny_total", "Check answers DENY.", MetricType::Counter, cs.deny));
    f.push_back(Family("toolgate_checks_require_approval_total", "Check answers REQUIRE_APPROVAL.",
                       MetricType::Counter, cs.require_approval));
    f.push_back(Family("toolgate_checks_invalid_total", "Check requests refused as invalid.",
                       MetricType::Counter, cs.invalid));
    f.push_back(Family("toolgate_check_audit_failures_total",
                       "Checks answered but not recorded in the audit chain.", MetricType::Counter,
                       cs.audit_failures));
    f.push_back(Family("toolgate_guardian_pending", "Actions waiting for a human decision.",
                       MetricType::Gauge, guardian->pending()));
    f.push_back(Family("toolgate_agents_registered", "Agents registered with this daemon.",
                       MetricType::Gauge, agent_registry->size()));
    f.push_back(Family("toolgate_agents_upstream_failures_total",
                       "Failed upstream registrations (POST /v1/agents), retried.",
                       MetricType::Counter, agents_service->upstream_failures()));
    if (remote_policy) {
      const policy::RemoteStats rs = remote_policy->stats();
      f.push_back(Family("toolgate_remote_policy_requests_total",
                         "POST /v1/policies/check requests sent.", MetricType::Counter,
                         rs.requests));
      f.push_back(Family("toolgate_remote_policy_failures_total",
                         "Remote checks that got no verdict (error, timeout, bad answer).",
                         MetricType::Counter, rs.failures));
      f.push_back(Family("toolgate_remote_policy_cache_hits_total",
                         "Checks answered from the remote verdict cache.", MetricType::Counter,
                         rs.cache_hits));
      f.push_back(Family("toolgate_checks_failed_open_total",
                         "Checks answered ALLOW by failure_mode open.", MetricType::Counter,
                         rs.failed_open));
      f.push_back(Family("toolgate_checks_failed_closed_total",
                         "Checks answered DENY by failure_mode closed.", MetricType::Counter,
                         rs.failed_closed));
      f.push_back(Family(
          "toolgate_remote_policy_breaker_open",
          "1 while the remote policy circuit breaker is open or half-open.", MetricType::Gauge,
          remote_policy->breaker_state() == policy::CircuitBreaker::State::kClosed ? 0 : 1));
      f.push_back(Family("toolgate_remote_policy_breaker_opened_total",
                         "Times the remote policy circuit breaker opened.", MetricType::Counter,
                         rs.breaker_opened));
    }
    if (policy_sync) {
      f.push_back(Family("toolgate_policy_syncs_total", "Fetches of the upstream's policies.",
                         MetricType::Counter, policy_sync->syncs()));
      f.push_back(Family("toolgate_policy_sync_failures_total",
                         "Policy syncs that failed (the last good rules stayed in force).",
                         MetricType::Counter, policy_sync->failures()));
    }
    if (guardian_poller) {
      f.push_back(Family("toolgate_guardian_upstream_decisions_total",
                         "Decisions of upstream pending actions applied locally.",
                         MetricType::Counter, guardian_poller->applied()));
      f.push_back(Family("toolgate_guardian_upstream_errors_total",
                         "Failed polls of, or forwards to, the upstream's guardian.",
                         MetricType::Counter, guardian_poller->errors()));
    }
    f.push_back(Family("toolgate_policy_reloads_total", "Policy files taken.", MetricType::Counter,
                       policies->reloads()));
    f.push_back(Family("toolgate_policy_reload_failures_total",
                       "Policy files refused (the last good policy stayed in force).",
                       MetricType::Counter, policies->reload_failures()));
    if (shipper) {
      const shipper::ShipperStats sh = shipper->stats();
      f.push_back(Family("toolgate_events_shipped_total", "Events accepted by the upstream.",
                         MetricType::Counter, sh.events_shipped));
      f.push_back(Family("toolgate_events_dead_lettered_total", "Events dead-lettered since start.",
                         MetricType::Counter, sh.events_dead_lettered));
      f.push_back(Family("toolgate_upstream_requests_ok_total", "Upstream requests answered 2xx.",
                         MetricType::Counter, sh.requests_ok));
      f.push_back(Family("toolgate_upstream_requests_retried_total",
                         "Upstream requests that failed and will be retried.", MetricType::Counter,
                         sh.requests_retried));
      f.push_back(Family("toolgate_upstream_in_flight", "Upstream requests in flight.",
                         MetricType::Gauge, sh.in_flight));
      f.push_back(Family("toolgate_upstream_up", "1 unless the last upstream request failed.",
                         MetricType::Gauge, sh.state == "ok" || sh.state.empty() ? 1 : 0));
    }
    if (notifier) {
      const notifier::NotifierStats ns = notifier->stats();
      f.push_back(Family("toolgate_webhooks_delivered_total", "Webhook deliveries answered 2xx.",
                         MetricType::Counter, ns.delivered));
      f.push_back(Family("toolgate_webhooks_retried_total",
                         "Webhook attempts that failed and will be retried.", MetricType::Counter,
                         ns.retried));
      f.push_back(Family("toolgate_webhooks_failed_total",
                         "Webhook deliveries given up after the last retry.", MetricType::Counter,
                         ns.failed));
      f.push_back(Family("toolgate_webhooks_pending", "Webhook deliveries not yet delivered.",
                         MetricType::Gauge, ns.pending));
      f.push_back(Family("toolgate_webhooks_dropped_total",
                         "Webhook signals dropped because the notifier's queue was full.",
                         MetricType::Counter, ns.dropped));
      f.push_back(Family("toolgate_webhooks_store_errors_total",
                         "Failed writes to notifier.db (deliveries then live in memory only).",
                         MetricType::Counter, ns.store_errors));
    }
    if (inbound_webhooks) {
      const notifier::InboundStats is = inbound_webhooks->stats();
      f.push_back(Family("toolgate_inbound_webhooks_accepted_total",
                         "Inbound webhooks with a valid signature.", MetricType::Counter,
                         is.accepted));
      f.push_back(Family("toolgate_inbound_webhooks_rejected_total",
                         "Inbound webhooks refused (bad, stale or missing signature; too large).",
                         MetricType::Counter, is.rejected));
      f.push_back(Family("toolgate_inbound_webhooks_decisions_total",
                         "Guardian decisions applied from inbound webhooks.", MetricType::Counter,
                         is.decisions));
    }
    return prometheus::TextSerializer().Serialize(f);
  }

  // The guardian on the local HTTP port, in the upstream's shapes (kaplaix-api.md), for UIs and
  // scripts that speak HTTP: GET /v1/guardian/pending-actions, POST .../:id/decide. Off unless
  // an admin key is configured; every request must carry it as a Bearer token.
  void AddGuardianRoutes() {
    auto error = [](httplib::Response& res, int status, const char* code, const std::string& m) {
      res.status = status;
      res.set_content(nlohmann::json({{"error", {{"code", code}, {"message", m}}}}).dump(),
                      "application/json");
    };
    auto authorized = [this, error](const httplib::Request& req, httplib::Response& res) {
      if (cfg.admin_key.empty()) {
        error(res, 404, "NOT_FOUND", "the guardian HTTP endpoints are off (set admin_key_file)");
        return false;
      }
      const std::string header = req.get_header_value("Authorization");
      const std::string expected = "Bearer " + cfg.admin_key;
      if (!ConstantTimeEquals(header, expected)) {
        error(res, 401, "AUTHENTICATION_FAILED", "missing or wrong admin key");
        return false;
      }
      return true;
    };
    auto to_json = [](const guardian::PendingAction& a) {
      std::string text;
      (void)google::protobuf::util::MessageToJsonString(a, &text);
      auto j = nlohmann::json::parse(text, nullptr, false);
      for (const char* k : {"status", "onTimeout"}) {
        if (j.contains(k) && j[k].is_string()) {
          std::string v = j[k].get<std::string>();
          for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          j[k] = v;
        }
      }
      return j;
    };
    http->Get("/v1/guardian/pending-actions", [=](const httplib::Request& req,
                                                  httplib::Response& res) {
      if (!authorized(req, res)) return;
      toolgate::v1::PendingStatus status = toolgate::v1::PENDING;
      if (req.has_param("status")) {
        std::string v = req.get_param_value("status");
        for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        if (!toolgate::v1::PendingStatus_Parse(v, &status) ||
            status == toolgate::v1::PENDING_STATUS_UNSPECIFIED) {
          return error(res, 400, "VALIDATION_ERROR",
                       "status: must be pending, approved, rejected or expired");
        }
      }
      size_t limit = 20;
      if (req.has_param("limit")) {
        limit = std::strtoul(req.get_param_value("limit").c_str(), nullptr, 10);
        if (limit == 0 || limit > 100) {
          return error(res, 400, "VALIDATION_ERROR", "limit: must be between 1 and 100");
        }
      }
      auto list = guardian->List(status, limit);
      if (!list.ok())
        return error(res, 500, "INTERNAL_ERROR", std::string(list.status().message()));
      nlohmann::json out = {{"pendingActions", nlohmann::json::array()}, {"nextCursor", nullptr}};
      for (const auto& a : *list) out["pendingActions"].push_back(to_json(a));
      res.set_content(out.dump(), "application/json");
    });
    http->Post(R"(/v1/guardian/pending-actions/([^/]+)/decide)", [=](const httplib::Request& req,
                                                                     httplib::Response& res) {
      if (!authorized(req, res)) return;
      auto body = nlohmann::json::parse(req.body, nullptr, false);
      if (!body.is_object()) {
        return error(res, 400, "VALIDATION_ERROR", "body: must be a JSON object");
      }
      const std::string decision = body.value("decision", "");
      const std::string reason = body.value("reason", "");
      const std::string approver = body.value("approverId", "");
      if (decision != "approved" && decision != "rejected") {
        return error(res, 400, "VALIDATION_ERROR",
                     "decision: must be \"approved\" or \"rejected\"");
      }
      if (approver.empty()) {
        return error(res, 400, "VALIDATION_ERROR", "approverId: required");
      }
      if (decision == "rejected" && reason.empty()) {
        return error(res, 400, "VALIDATION_ERROR", "reason: required to reject");
      }
      auto decided = guardian->Decide(req.matches[1], decision == "approved", reason, approver);
      if (!decided.ok()) {
        const std::string m(decided.status().message());
        if (absl::IsNotFound(decided.status())) return error(res, 404, "NOT_FOUND", m);
        if (absl::IsFailedPrecondition(decided.status())) {
          return error(res, 409, "CONFLICT", m);
        }
        return error(res, 500, "INTERNAL_ERROR", m);
      }
      res.set_content(nlohmann::json({{"pendingAction", to_json(*decided)}}).dump(),
                      "application/json");
    });
  }

  // Webhooks from the upstream, signed with x-kaplaix-signature (daemon/notifier/inbound.h).
  void AddWebhookRoutes() {
    http->Post("/v1/webhooks/kaplaix", [this](const httplib::Request& req, httplib::Response& res) {
      if (!inbound_webhooks) {
        res.status = 404;
        res.set_content(nlohmann::json({{"error",
                                         {{"code", "NOT_FOUND"},
                                          {"message",
                                           "inbound webhooks are off (set "
                                           "notifier.inbound_secret_file)"}}}})
                            .dump(),
                        "application/json");
        return;
      }
      const notifier::InboundResponse r =
          inbound_webhooks->Handle(req.get_header_value("x-kaplaix-signature"), req.body);
      res.status = r.status;
      res.set_content(r.body, "application/json");
    });
  }

  absl::Status StartHttp() {
    if (cfg.http_listen.empty()) return absl::OkStatus();
    http = std::make_unique<httplib::Server>();
    http->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(Metrics(), "text/plain; version=0.0.4");
    });
    http->Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
      if (spool->stats().failed) {
        res.status = 503;
        res.set_content("spool failed\n", "text/plain");
      } else {
        res.set_content("ok\n", "text/plain");
      }
    });
    AddGuardianRoutes();
    AddWebhookRoutes();
    const size_t colon = cfg.http_listen.rfind(':');
    std::string host = cfg.http_listen.substr(0, colon);
    if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    const int port = std::stoi(cfg.http_listen.substr(colon + 1));
    int bound = port;
    if (port == 0) {
      bound = http->bind_to_any_port(host.c_str());
    } else if (!http->bind_to_port(host.c_str(), port)) {
      bound = -1;
    }
    if (bound <= 0) {
      return absl::UnavailableError(
          absl::StrCat("http_listen: cannot listen on ", cfg.http_listen));
    }
    listening.push_back(absl::StrCat("http://", host, ":", bound));
    http_thread = std::thread([this] { http->listen_after_bind(); });
    return absl::OkStatus();
  }
};

Daemon::Daemon(config::Config config) : impl_(std::make_unique<Impl>()) {
  impl_->cfg = std::move(config);
}

Daemon::~Daemon() { Shutdown(); }

absl::Status Daemon::Start() {
  Impl& d = *impl_;
  const config::Config& cfg = d.cfg;
  std::error_code ec;
  fs::create_directories(cfg.data_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("data_dir: cannot create '", cfg.data_dir, "': ", ec.message()));
  }
  // The daemon's alone (as systemd's StateDirectoryMode=0700): the socket's group may talk to
  // the daemon, not list or read its stores.
  ::chmod(cfg.data_dir.c_str(), 0700);
  auto lock = DirLock::Acquire(cfg.data_dir);
  if (!lock.ok()) return lock.status();
  d.data_dir_lock = std::move(*lock);

  d.policies = std::make_unique<policy::PolicySource>(cfg.policy);
  if (absl::Status s = d.policies->Load(); !s.ok()) return s;

  d.normalizer = std::make_unique<normalize::Normalizer>(
      normalize::NormalizerOptions{cfg.ingest.max_argument_bytes, cfg.hash.hmac_key}, d.clock);
  spool::SpoolOptions so;
  so.path = (fs::path(cfg.data_dir) / "spool.db").string();
  so.standalone = cfg.standalone();
  so.limits = cfg.spool;
  auto spool = spool::Spool::Open(so, d.clock);
  if (!spool.ok()) return spool.status();
  d.spool = std::move(*spool);

  if (!cfg.standalone()) {
    d.shipper = std::make_unique<shipper::Shipper>(cfg.upstream, cfg.batch, d.spool.get(), d.clock,
                                                   absl::StrCat("toolgate/", kVersion));
    if (absl::Status s = d.shipper->Start(); !s.ok()) return s;
    d.spool->SetCommitListener([sh = d.shipper.get()] { sh->Wake(); });
  }

  d.events = std::make_unique<ingest::EventsService>(cfg.ingest, d.normalizer.get(), d.spool.get(),
                                                     cfg.spool.retry_after);
  // Every guardian decision (approved, rejected, expired) is an approval event in the chain.
  auto record_decision = [&d](const guardian::PendingAction& a) {
    toolgate::v1::Event ev;
    ev.set_agent_id(a.action().agent_id());
    ev.set_session_id(a.action().session_id());
    auto* ap = ev.mutable_approval();
    ap->set_approver_id(a.approver_id());
    ap->set_scope(a.action().tool_name());
    ap->set_decision(a.status() == toolgate::v1::APPROVED   ? "approved"
                     : a.status() == toolgate::v1::REJECTED ? "rejected"
                                                            : "expired");
    ap->set_reason(a.decision_reason());
    ap->set_pending_action_id(a.id());
    std::vector<normalize::NormalizedEvent> events(1);
    if (absl::Status s = d.normalizer->Normalize(ev, "decision", &events[0]); !s.ok()) {
      LogError("decision not recorded", {{"id", a.id()}, {"error", std::string(s.message())}});
      return;
    }
    d.spool->Append(std::move(events), [id = a.id()](const absl::Status& st) {
      if (!st.ok()) {
        LogError("decision not recorded in the audit chain",
                 {{"id", id}, {"error", std::string(st.message())}});
      }
    });
  };
  const std::string guardian_path = (fs::path(cfg.data_dir) / "guardian.db").string();
  auto guardian_moved = spool::MoveAsideIfUnreadable(guardian_path, d.clock->Now());
  if (!guardian_moved.ok()) return guardian_moved.status();
  d.guardian_corrupt_moved = guardian_moved->files.empty() ? 0 : 1;
  auto guardian = guardian::Guardian::Open(guardian_path, d.clock, record_decision);
  if (!guardian.ok()) return guardian.status();
  d.guardian = std::move(*guardian);
  d.guardian_service = std::make_unique<guardian::GuardianService>(d.guardian.get());
  d.policy_service = std::make_unique<policy::PolicyService>(
      cfg.policy, cfg.ingest.max_argument_bytes, d.policies.get(), d.normalizer.get(),
      d.spool.get(), d.guardian.get(), d.clock);
  if (!cfg.standalone()) {
    HttpClientOptions ho;
    ho.base_url = cfg.upstream.url;
    ho.api_key = cfg.upstream.api_key;
    ho.user_agent = absl::StrCat("toolgate/", kVersion);
    ho.ca_file = cfg.upstream.ca_file;
    ho.insecure_skip_verify = cfg.upstream.insecure_skip_verify;
    ho.connect_timeout = cfg.upstream.connect_timeout;
    auto http_client = HttpClient::Create(ho);
    if (!http_client.ok()) return http_client.status();
    d.upstream_api = std::move(*http_client);
    if (cfg.policy.mode == "remote") {
      d.remote_policy =
          std::make_unique<policy::RemoteChecker>(cfg.policy, d.upstream_api.get(), d.clock);
      d.policy_service->UseRemote(d.remote_policy.get());
    } else if (cfg.policy.mode == "sync") {
      d.policy_sync = std::make_unique<policy::PolicySync>(
          cfg.policy, cfg.data_dir, d.policies.get(), d.upstream_api.get(), cfg.upstream.timeout);
    }
    // Always made with an upstream: besides polling (not with poll_interval 0), it forwards the
    // decisions made here on the upstream's pending actions.
    d.guardian_poller = std::make_unique<guardian::UpstreamPoller>(
        d.guardian.get(), d.upstream_api.get(), cfg.guardian.poll_interval, cfg.upstream.timeout);
  }
  if (!cfg.notifier.endpoint_list.empty()) {
    auto n =
        notifier::Notifier::Open(cfg.notifier, (fs::path(cfg.data_dir) / "notifier.db").string(),
                                 d.clock, absl::StrCat("toolgate/", kVersion));
    if (!n.ok()) return n.status();
    d.notifier = std::move(*n);
    d.events->SetLifecycleObserver(
        [n = d.notifier.get()](std::vector<toolgate::v1::Event> e) { n->OnEvents(std::move(e)); });
    d.guardian->AddListener(
        [n = d.notifier.get()](const guardian::PendingAction& a) { n->OnPendingAction(a); });
    d.notifier->Start();
  }
  if (!cfg.notifier.inbound_secret.empty()) {
    d.inbound_webhooks = std::make_unique<notifier::InboundWebhooks>(cfg.notifier.inbound_secret,
                                                                     d.clock, d.guardian.get());
  }
  auto registry =
      agents::AgentRegistry::Open((fs::path(cfg.data_dir) / "agents.db").string(), d.clock);
  if (!registry.ok()) return registry.status();
  d.agent_registry = std::move(*registry);
  d.agents_service = std::make_unique<agents::AgentsService>(
      d.agent_registry.get(), d.normalizer.get(), d.spool.get(), d.upstream_api.get(),
      cfg.ingest.max_argument_bytes, cfg.upstream.timeout);
  d.policy_service->SetToolsOf(
      [reg = d.agent_registry.get()](const std::string& agent_id)
          -> std::shared_ptr<const policy::ToolLookup> { return reg->Tools(agent_id); });
  d.admin = std::make_unique<AdminService>(
      d.spool.get(), [&d](toolgate::v1::StatusResponse* r) { d.FillStatus(r); },
      [&d] {
        if (d.shipper) d.shipper->RequestFlush();
      },
      [&d] { return d.policies->Reload(); });
  // Live tails (Admin.Tail): the spool hands each commit's events over while one is open.
  d.spool->SetTap([a = d.admin.get()](std::vector<spool::CommittedEvent> events) {
    a->OnCommitted(std::move(events));
  });

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.ingest.max_request_bytes));
  int tcp_port = 0;
  if (!cfg.listen.empty()) {
    builder.AddListeningPort(cfg.listen, grpc::InsecureServerCredentials(), &tcp_port);
  }
  if (!cfg.socket.empty()) {
    fs::create_directories(fs::path(cfg.socket).parent_path(), ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat("socket: cannot create the directory of '",
                                                 cfg.socket, "': ", ec.message()));
    }
    fs::remove(cfg.socket, ec);  // a stale socket from an earlier run
    builder.AddListeningPort("unix:" + cfg.socket, grpc::InsecureServerCredentials());
  }
  builder.RegisterService(d.events.get());
  builder.RegisterService(d.admin.get());
  builder.RegisterService(d.policy_service.get());
  builder.RegisterService(d.guardian_service.get());
  builder.RegisterService(d.agents_service.get());
  {
    auto counter = std::make_unique<CallCounter>();
    d.calls = counter.get();
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(std::move(counter));
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  d.server = builder.BuildAndStart();
  if (!d.server || (!cfg.listen.empty() && tcp_port == 0)) {
    return absl::UnavailableError(absl::StrCat(
        "listen: cannot start gRPC on ", cfg.listen.empty() ? "" : cfg.listen,
        cfg.socket.empty() ? "" : " / unix:" + cfg.socket, " (address in use or not permitted?)"));
  }
  if (!cfg.listen.empty()) {
    d.listening.push_back(cfg.listen.substr(0, cfg.listen.rfind(':')) + ":" +
                          std::to_string(tcp_port));
  }
  if (!cfg.socket.empty()) {
    ::chmod(cfg.socket.c_str(), static_cast<mode_t>(std::stoul(cfg.socket_mode, nullptr, 8)));
    d.listening.push_back("unix:" + cfg.socket);
  }
  d.server->GetHealthCheckService()->SetServingStatus(true);
  // A failed store cannot take events: tell the health service (probes, load balancers).
  d.spool->SetFailureListener([&d] {
    if (d.server) d.server->GetHealthCheckService()->SetServingStatus(false);
  });
  d.policies->StartWatching();
  if (d.policy_sync) d.policy_sync->Start();
  if (d.guardian_poller) d.guardian_poller->Start();
  d.agents_service->Start();
  if (absl::Status s = d.StartHttp(); !s.ok()) return s;

  nlohmann::json fields = {{"version", kVersion},
                           {"mode", cfg.standalone() ? "standalone" : "upstream"},
                           {"listen", d.listening},
                           {"data_dir", cfg.data_dir},
                           {"spool", so.path}};
  fields["policy_mode"] = cfg.policy.mode;
  if (!cfg.standalone()) {
    fields["upstream"] = SafeUrl(cfg.upstream.url);
    fields["ingest_format"] = cfg.upstream.ingest_format;
  }
  if (!cfg.listen.empty()) fields["grpc"] = d.listening.front();
  if (d.http) fields["http"] = d.listening.back();
  LogInfo("toolgated started", fields);
  Notify("READY=1");
#ifdef TOOLGATE_HAVE_SYSTEMD
  // systemd's watchdog: ping at half the interval while the store is healthy, so a wedged or
  // failed daemon is restarted by WatchdogSec=.
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    d.watchdog_thread = std::thread([&d, usec] {
      std::unique_lock<std::mutex> l(d.watchdog_mu);
      while (!d.watchdog_cv.wait_for(l, std::chrono::microseconds(usec / 2),
                                     [&d] { return d.watchdog_stop; })) {
        if (!d.spool->stats().failed) sd_notify(0, "WATCHDOG=1");
      }
    });
    LogInfo("systemd watchdog enabled", {{"interval_ms", usec / 1000}});
  }
#endif
  return absl::OkStatus();
}

void Daemon::Run() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) {
      LogInfo("SIGHUP: reloading the policy");
      impl_->policies->Reload();
      continue;
    }
    LogInfo("shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    break;
  }
  Shutdown();
}

void Daemon::Shutdown() {
  Impl& d = *impl_;
  if (d.shut_down) return;
  d.shut_down = true;
  Notify("STOPPING=1");
  {
    std::lock_guard<std::mutex> l(d.watchdog_mu);
    d.watchdog_stop = true;
  }
  d.watchdog_cv.notify_all();
  if (d.watchdog_thread.joinable()) d.watchdog_thread.join();
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + d.cfg.shutdown_timeout;
  if (d.server) {
    // Streams never end by themselves (tails, idle event streams, waits, watches): end them
    // first, or Shutdown would wait for its deadline. Event streams end once what they read
    // is acknowledged; waits and watches end at once (their state is durable).
    if (d.admin) {
      d.admin->StopTails();
      d.admin->StopFlushes();
    }
    if (d.events) d.events->StopStreams();
    if (d.policy_service) d.policy_service->EndWaits();
    if (d.guardian_service) d.guardian_service->StopWatches();
    // Stop taking calls; in-flight ones finish as their commits land. Once none is left, what
    // still holds gRPC's Shutdown is idle client connections: they are closed then, instead
    // of at Shutdown's deadline.
    std::atomic<bool> stopped{false};
    std::thread stopper([&] {
      d.server->Shutdown(std::chrono::system_clock::now() + d.cfg.shutdown_timeout / 2);
      stopped = true;
    });
    const auto calls_deadline = start + d.cfg.shutdown_timeout / 2;
    // Shutdown starts by refusing new calls: give it that moment before counting.
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    while (!stopped && d.calls->in_flight() > 0 &&
           std::chrono::steady_clock::now() < calls_deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!stopped) grpc_server_cancel_all_calls(d.server->c_server());
    stopper.join();
    d.server->Wait();
  }
  if (d.policies) d.policies->Stop();
  if (d.policy_sync) d.policy_sync->Stop();
  if (d.guardian_poller) d.guardian_poller->Stop();
  if (d.agents_service) d.agents_service->Stop();
  if (d.upstream_api) d.upstream_api->Stop();
  if (d.guardian) d.guardian->Close();
  if (d.shipper) d.shipper->Stop(deadline);
  if (d.spool) d.spool->Close();
  if (d.notifier) d.notifier->Stop(deadline);  // after the spool's last commits told it
  if (d.http) {
    d.http->stop();
    if (d.http_thread.joinable()) d.http_thread.join();
  }
  if (d.spool) {
    const spool::Stats s = d.spool->stats();
    LogInfo("stopped", {{"queue_depth", s.queue_depth},
                        {"stored_events", s.stored_events},
                        {"drain_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - start)
                                         .count()}});
  }
}

}  // namespace toolgate::app
