#include "daemon/notifier/notifier.h"

#include <curl/curl.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "daemon/common/crypto.h"
#include "daemon/common/log.h"
#include "daemon/common/time_util.h"
#include "daemon/notifier/delivery_policy.h"
#include "daemon/notifier/delivery_store.h"
#include "daemon/notifier/payload.h"
#include "daemon/notifier/signature.h"

namespace toolgate::notifier {
namespace {

using Signal = std::variant<toolgate::v1::Event, toolgate::v1::PendingAction>;

// Sessions that never ended are forgotten after this long.
constexpr int64_t kExecutionMaxAgeMs = 30LL * 24 * 3600 * 1000;
constexpr int64_t kPruneEveryMs = 3600LL * 1000;

int64_t ToMs(SystemTime t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

// scheme://host[:port]/… — webhook URLs often carry a token in their path or query, and logs
// leave the host.
std::string SafeUrl(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "?";
  size_t host = scheme + 3;
  const size_t end = url.find_first_of("/?#", host);
  std::string authority = url.substr(host, end == std::string::npos ? end : end - host);
  if (const size_t at = authority.rfind('@'); at != std::string::npos) {
    authority = authority.substr(at + 1);
  }
  return url.substr(0, host) + authority + (end == std::string::npos ? "" : "/…");
}

// A bounded multi-producer queue of signals. Producers never wait for the consumer: a full
// queue refuses (the caller counts the drop). The lock is held for a push or a swap only.
class SignalQueue {
 public:
  explicit SignalQueue(size_t capacity) : capacity_(capacity) {}
  // Appends what fits; returns how many did not.
  size_t Push(std::vector<Signal>* signals) {
    std::lock_guard<std::mutex> l(mu_);
    size_t dropped = 0;
    for (Signal& s : *signals) {
      if (items_.size() >= capacity_) {
        ++dropped;
        continue;
      }
      items_.push_back(std::move(s));
    }
    return dropped;
  }
  std::deque<Signal> TakeAll() {
    std::lock_guard<std::mutex> l(mu_);
    std::deque<Signal> out;
    out.swap(items_);
    return out;
  }
  size_t size() const {
    std::lock_guard<std::mutex> l(mu_);
    return items_.size();
  }

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  std::deque<Signal> items_;  // guarded by mu_
};

}  // namespace

// Everything on the notifier's thread lives here; the hooks touch only queue_, the counters
// and multi_ (curl_multi_wakeup is thread-safe).
class Notifier::Loop {
 public:
  Loop(config::NotifierOptions options, std::unique_ptr<DeliveryStore> store, Clock* clock,
       std::string user_agent)
      : opts_(std::move(options)),
        store_(std::move(store)),
        clock_(clock),
        user_agent_(std::move(user_agent)),
        queue_(opts_.queue_size) {}

  ~Loop() {
    for (auto& r : in_flight_) Release(r.get());
    if (multi_) curl_multi_cleanup(multi_);
  }

  absl::Status Init() {
    multi_ = curl_multi_init();
    if (!multi_) return absl::InternalError("notifier: curl_multi_init failed");
    for (const auto& ep : opts_.endpoint_list) endpoints_.emplace(ep.url, &ep);
    auto loaded = store_->LoadPending();
    if (!loaded.ok()) return loaded.status();
    for (Delivery& d : *loaded) pending_.emplace(d.id, std::move(d));
    pending_count_ = pending_.size();
    store_->PruneExecutions(ToMs(clock_->Now()) - kExecutionMaxAgeMs).IgnoreError();
    last_prune_ms_ = ToMs(clock_->Now());
    if (!pending_.empty()) {
      LogInfo("notifier: deliveries restored", {{"pending", pending_.size()}});
    }
    nlohmann::json urls = nlohmann::json::array();
    for (const auto& ep : opts_.endpoint_list) urls.push_back(SafeUrl(ep.url));
    LogInfo("notifier: webhooks on", {{"endpoints", urls}});
    return absl::OkStatus();
  }

  void Push(std::vector<Signal> signals) {
    if (signals.empty()) return;
    const size_t n = signals.size();
    const size_t dropped = queue_.Push(&signals);
    pending_count_ += n - dropped;
    if (dropped > 0) {
      const uint64_t total = dropped_ += dropped;
      // A log line per drop would flood exactly when something is wrong: the first, then one
      // per hundred.
      if (total == dropped || (total - dropped) / 100 != total / 100) {
        LogWarn("notifier: queue full, webhook signals dropped",
                {{"dropped_total", total}, {"queue_size", opts_.queue_size}});
      }
    }
    if (multi_) curl_multi_wakeup(multi_);
  }

  void RequestStop(SteadyTime deadline) {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
      stop_deadline_ = deadline;
    }
    curl_multi_wakeup(multi_);
  }

  NotifierStats stats() const {
    NotifierStats s;
    s.delivered = delivered_;
    s.retried = retried_;
    s.failed = failed_;
    s.pending = pending_count_;
    s.dropped = dropped_;
    s.store_errors = store_errors_;
    return s;
  }

  void Run() {
    pthread_setname_np(pthread_self(), "tg-notifier");
    for (;;) {
      bool stopping;
      SteadyTime deadline;
      {
        std::lock_guard<std::mutex> l(mu_);
        stopping = stopping_;
        deadline = stop_deadline_;
      }
      if (stopping) {
        // Queued signals become stored deliveries (sent at the next start); in-flight ones get
        // until the deadline.
        Drain();
        if (in_flight_.empty() || clock_->Steady() >= deadline) break;
      }
      Turn(std::chrono::milliseconds(stopping ? 20 : 1000));
    }
    if (!in_flight_.empty()) {
      LogWarn("notifier: stopping with deliveries in flight; they are sent again at the next start",
              {{"in_flight", in_flight_.size()}});
    }
  }

  // One turn: signals → stored deliveries; due deliveries → requests; answers → outcomes; then
  // wait for the network, a wake-up, or the next due time.
  void Turn(std::chrono::milliseconds max_wait) {
    Drain();
    const int64_t next_due = StartDue();
    int running = 0;
    curl_multi_perform(multi_, &running);
    Collect();
    int64_t wait_ms = max_wait.count();
    if (next_due > 0) wait_ms = std::min<int64_t>(wait_ms, next_due - ToMs(clock_->Now()));
    wait_ms = std::clamp<int64_t>(wait_ms, 0, max_wait.count());
    curl_multi_poll(multi_, nullptr, 0, static_cast<int>(wait_ms), nullptr);
    curl_multi_perform(multi_, &running);
    Collect();
  }

 private:
  struct Request {
    Delivery d;
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    std::string response;
  };

  static size_t OnBody(char* p, size_t size, size_t n, void* ud) {
    auto* r = static_cast<Request*>(ud);
    if (r->response.size() < 512) r->response.append(p, std::min<size_t>(size * n, 512));
    return size * n;
  }

  // Signals → deliveries, stored before their first attempt.
  void Drain() {
    std::deque<Signal> signals = queue_.TakeAll();
    if (signals.empty()) return;
    const int64_t now = ToMs(clock_->Now());
    std::vector<Delivery> created;
    for (const Signal& s : signals) {
      std::optional<ExecutionInfo> info;
      if (const auto* ev = std::get_if<toolgate::v1::Event>(&s)) {
        info = FromEvent(*ev);
      } else {
        info = FromPendingAction(std::get<toolgate::v1::PendingAction>(s));
      }
      if (!info) continue;
      const std::string body = BuildPayload(*info);
      const char* event = WebhookEventName(info->event);
      for (const auto& ep : opts_.endpoint_list) {
        if (!ep.events.empty() &&
            std::find(ep.events.begin(), ep.events.end(), event) == ep.events.end()) {
          continue;
        }
        Delivery d;
        d.idempotency_key = NewUuid();
        d.url = ep.url;
        d.event = event;
        d.body = body;
        d.next_ms = now;
        d.created_ms = now;
        created.push_back(std::move(d));
      }
    }
    if (absl::Status st = store_->Insert(&created); !st.ok()) {
      // Still sent from memory; only a restart before delivery would lose them.
      ++store_errors_;
      LogError("notifier: cannot store deliveries; sending them anyway",
               {{"count", created.size()}, {"error", std::string(st.message())}});
      for (Delivery& d : created) d.id = --memory_only_ids_;
    }
    // pending_count_ counted each signal when queued; now it counts deliveries.
    pending_count_ += created.size();
    pending_count_ -= signals.size();
    for (Delivery& d : created) {
      const int64_t id = d.id;
      pending_.emplace(id, std::move(d));
    }
    if (now - last_prune_ms_ > kPruneEveryMs) {
      last_prune_ms_ = now;
      store_->PruneExecutions(now - kExecutionMaxAgeMs).IgnoreError();
    }
  }

  std::string TimestampOf(const toolgate::v1::Event& ev) const {
    return ev.source_timestamp().empty() ? FormatRfc3339(clock_->Now()) : ev.source_timestamp();
  }

  std::string NameOf(const std::string& agent_id) { return store_->AgentName(agent_id); }

  void Check(const absl::Status& s, const char* what) {
    if (s.ok()) return;
    ++store_errors_;
    LogError("notifier: store write failed", {{"what", what}, {"error", std::string(s.message())}});
  }

  // session_start → started; session_end → ended / failed; identity → the agent's name.
  std::optional<ExecutionInfo> FromEvent(const toolgate::v1::Event& ev) {
    enum { kNone, kStart, kEnd, kIdentity } kind = kNone;
    bool failed = false;
    std::string error_message, error_type, agent_name;
    switch (ev.kind_case()) {
      case toolgate::v1::Event::kSessionStart:
        kind = kStart;
        break;
      case toolgate::v1::Event::kSessionEnd:
        kind = kEnd;
        failed = ev.session_end().outcome() == toolgate::v1::SessionEnd::FAILED;
        error_message = ev.session_end().error_message();
        error_type = ev.session_end().error_type();
        break;
      case toolgate::v1::Event::kIdentity:
        kind = kIdentity;
        agent_name = ev.identity().agent_name();
        break;
      case toolgate::v1::Event::kGeneric: {
        // Same meaning, free-form payload (already checked to be a JSON object by ingest).
        const std::string& c = ev.generic().category();
        auto p = nlohmann::json::parse(
            ev.generic().payload_json().empty() ? "{}" : ev.generic().payload_json(), nullptr,
            false);
        if (!p.is_object()) return std::nullopt;
        auto str = [](const nlohmann::json& o, const char* k) {
          return o.is_object() && o.contains(k) && o[k].is_string() ? o[k].get<std::string>()
                                                                    : std::string();
        };
        if (c == "session_start") {
          kind = kStart;
        } else if (c == "session_end") {
          kind = kEnd;
          failed = str(p, "outcome") == "failed";
          if (p.contains("error")) {
            error_message = str(p["error"], "message");
            error_type = str(p["error"], "type");
          }
        } else if (c == "identity") {
          kind = kIdentity;
          agent_name = str(p, "agentName");
        }
        break;
      }
      default:
        break;
    }
    const std::string& agent = ev.agent_id();
    const std::string& session = ev.session_id();
    const int64_t now = ToMs(clock_->Now());
    ExecutionInfo info;
    info.session_id = session;
    info.agent_id = agent;
    switch (kind) {
      case kNone:
        return std::nullopt;
      case kIdentity:
        if (!agent_name.empty()) Check(store_->SetAgentName(agent, agent_name), "agent name");
        return std::nullopt;
      case kStart:
        info.event = WebhookEvent::kStarted;
        info.started_at = TimestampOf(ev);
        Check(store_->RememberStart(agent, session, info.started_at, now), "session start");
        break;
      case kEnd:
        info.event = failed ? WebhookEvent::kFailed : WebhookEvent::kEnded;
        info.started_at = store_->StartedAt(agent, session);
        info.ended_at = TimestampOf(ev);
        info.error_message = error_message;
        info.error_type = error_type;
        Check(store_->ForgetExecution(agent, session), "session end");
        break;
    }
    info.agent_name = NameOf(agent);
    return info;
  }

  // A new pending action → handoff. Decisions (the guardian tells of those too) are not ours.
  std::optional<ExecutionInfo> FromPendingAction(const toolgate::v1::PendingAction& a) {
    if (a.status() != toolgate::v1::PENDING) return std::nullopt;
    ExecutionInfo info;
    info.event = WebhookEvent::kHandoff;
    info.session_id = a.action().session_id();
    info.agent_id = a.action().agent_id();
    info.agent_name = NameOf(info.agent_id);
    info.started_at = store_->StartedAt(info.agent_id, info.session_id);
    info.node_name = a.action().tool_name();
    info.handoff_at = a.created_at();
    info.handoff_reason = a.reason();
    info.pending_action_id = a.id();
    return info;
  }

  // Starts every due delivery that fits; returns the earliest next_ms of those left (0: none).
  int64_t StartDue() {
    const int64_t now = ToMs(clock_->Now());
    int64_t next = 0;
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.next_ms > now || in_flight_.size() >= opts_.max_in_flight) {
        const int64_t due = std::max(it->second.next_ms, now + 1);
        next = next == 0 ? due : std::min(next, due);
        ++it;
        continue;
      }
      Delivery d = std::move(it->second);
      it = pending_.erase(it);
      Start(std::move(d));
    }
    return next;
  }

  void Start(Delivery d) {
    auto ep = endpoints_.find(d.url);
    if (ep == endpoints_.end()) {
      // Its endpoint left the configuration: there is no secret to sign with any more.
      d.last_error = "endpoint no longer configured";
      Dead(d);
      return;
    }
    auto r = std::make_unique<Request>();
    r->d = std::move(d);
    ++r->d.attempts;
    CURL* e = curl_easy_init();
    r->easy = e;
    r->headers = curl_slist_append(r->headers, "Content-Type: application/json");
    r->headers = curl_slist_append(r->headers, "Expect:");
    r->headers = curl_slist_append(r->headers, ("X-Webhook-Event: " + r->d.event).c_str());
    r->headers = curl_slist_append(
        r->headers,
        ("X-Webhook-Signature: " + WebhookSignature(ep->second->secret, r->d.body)).c_str());
    r->headers =
        curl_slist_append(r->headers, ("X-Idempotency-Key: " + r->d.idempotency_key).c_str());
    curl_easy_setopt(e, CURLOPT_URL, r->d.url.c_str());
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->d.body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r->d.body.size()));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Loop::OnBody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r.get());
    curl_easy_setopt(e, CURLOPT_PRIVATE, r.get());
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(opts_.timeout.count()));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.timeout.count()));
    curl_easy_setopt(e, CURLOPT_USERAGENT, user_agent_.c_str());
    curl_multi_add_handle(multi_, e);
    in_flight_.push_back(std::move(r));
  }

  void Release(Request* r) {
    if (r->easy) {
      curl_multi_remove_handle(multi_, r->easy);
      curl_easy_cleanup(r->easy);
      r->easy = nullptr;
    }
    curl_slist_free_all(r->headers);
    r->headers = nullptr;
  }

  void Collect() {
    CURLMsg* msg;
    int left = 0;
    while ((msg = curl_multi_info_read(multi_, &left)) != nullptr) {
      if (msg->msg != CURLMSG_DONE) continue;
      Request* raw = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &raw);
      const CURLcode code = msg->data.result;
      long status = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
      auto it = std::find_if(in_flight_.begin(), in_flight_.end(),
                             [raw](const auto& p) { return p.get() == raw; });
      std::unique_ptr<Request> r = std::move(*it);
      in_flight_.erase(it);
      Release(r.get());
      Outcome(std::move(r), code, status);
    }
  }

  void Outcome(std::unique_ptr<Request> r, CURLcode code, long status) {
    Delivery& d = r->d;
    const bool transport_error = code != CURLE_OK;
    const DeliveryDecision decision = DecideDelivery(transport_error ? 0 : status, transport_error,
                                                     d.attempts, opts_.retry_schedule);
    switch (decision.outcome) {
      case DeliveryOutcome::kDelivered:
        if (d.id > 0) Check(store_->Remove(d.id), "remove delivered");
        ++delivered_;
        --pending_count_;
        LogDebug("notifier: delivered", {{"event", d.event},
                                         {"url", SafeUrl(d.url)},
                                         {"status", status},
                                         {"attempts", d.attempts},
                                         {"idempotency_key", d.idempotency_key}});
        return;
      case DeliveryOutcome::kRetry:
      case DeliveryOutcome::kDead:
        break;
    }
    d.last_error = transport_error ? absl::StrCat("transport: ", curl_easy_strerror(code))
                                   : absl::StrCat("HTTP ", status);
    if (decision.outcome == DeliveryOutcome::kDead) {
      Dead(d);
      return;
    }
    d.next_ms = ToMs(clock_->Now()) + decision.delay.count();
    if (d.id > 0) Check(store_->Reschedule(d), "reschedule");
    ++retried_;
    LogWarn("notifier: delivery failed; will retry",
            {{"event", d.event},
             {"url", SafeUrl(d.url)},
             {"error", d.last_error},
             {"attempts", d.attempts},
             {"retry_in_ms", static_cast<int64_t>(decision.delay.count())},
             {"idempotency_key", d.idempotency_key}});
    const int64_t id = d.id;
    pending_.emplace(id, std::move(d));
  }

  void Dead(const Delivery& d) {
    if (d.id > 0) Check(store_->MarkDead(d), "mark dead");
    ++failed_;
    --pending_count_;
    LogError("notifier: delivery failed for good (dead)", {{"event", d.event},
                                                           {"url", SafeUrl(d.url)},
                                                           {"error", d.last_error},
                                                           {"attempts", d.attempts},
                                                           {"idempotency_key", d.idempotency_key}});
  }

  const config::NotifierOptions opts_;
  const std::unique_ptr<DeliveryStore> store_;
  Clock* const clock_;
  const std::string user_agent_;
  SignalQueue queue_;
  CURLM* multi_ = nullptr;
  std::map<std::string, const config::WebhookEndpoint*> endpoints_;  // by url
  std::map<int64_t, Delivery> pending_;              // waiting for their time, by id
  std::vector<std::unique_ptr<Request>> in_flight_;  // loop thread only
  int64_t memory_only_ids_ = 0;                      // negative ids: not in the store
  int64_t last_prune_ms_ = 0;

  std::atomic<uint64_t> delivered_{0}, retried_{0}, failed_{0}, dropped_{0}, store_errors_{0};
  std::atomic<int64_t> pending_count_{0};

  std::mutex mu_;
  bool stopping_ = false;       // guarded by mu_
  SteadyTime stop_deadline_{};  // guarded by mu_
};

absl::StatusOr<std::unique_ptr<Notifier>> Notifier::Open(config::NotifierOptions options,
                                                         const std::string& db_path, Clock* clock,
                                                         std::string user_agent) {
  auto store = DeliveryStore::Open(db_path);
  if (!store.ok()) return store.status();
  auto loop =
      std::make_unique<Loop>(std::move(options), std::move(*store), clock, std::move(user_agent));
  if (absl::Status s = loop->Init(); !s.ok()) return s;
  return std::unique_ptr<Notifier>(new Notifier(std::move(loop)));
}

Notifier::Notifier(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

Notifier::~Notifier() { Stop(SteadyTime{}); }

void Notifier::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { loop_->Run(); });
}

void Notifier::Stop(SteadyTime deadline) {
  if (!thread_.joinable()) return;
  loop_->RequestStop(deadline);
  thread_.join();
}

void Notifier::OnEvents(std::vector<toolgate::v1::Event> events) {
  std::vector<Signal> signals;
  signals.reserve(events.size());
  for (auto& e : events) signals.emplace_back(std::move(e));
  loop_->Push(std::move(signals));
}

void Notifier::OnPendingAction(const toolgate::v1::PendingAction& action) {
  if (action.status() != toolgate::v1::PENDING) return;
  std::vector<Signal> signals;
  signals.emplace_back(action);
  loop_->Push(std::move(signals));
}

void Notifier::RunOnce(std::chrono::milliseconds max_wait) { loop_->Turn(max_wait); }

NotifierStats Notifier::stats() const { return loop_->stats(); }

}  // namespace toolgate::notifier
