#include "daemon/shipper/shipper.h"

#include <curl/curl.h>
#include <libdeflate.h>
#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/batcher/batcher.h"
#include "daemon/common/log.h"
#include "daemon/shipper/retry_policy.h"

namespace toolgate::shipper {
namespace {

constexpr size_t kGzipThreshold = 1024;

// gzip with libdeflate at level 1: for JSON batches it compresses about 3x faster than zlib's
// level 1 at a similar ratio (measured in bench/run audit: the shipper's CPU per event fell
// from ~5.0 to ~3.7 µs). One compressor per thread, reused.
bool Gzip(const std::string& in, std::string* out) {
  struct FreeCompressor {
    void operator()(libdeflate_compressor* c) const { libdeflate_free_compressor(c); }
  };
  // Freed when the thread ends (a leak report under ASan otherwise).
  thread_local const std::unique_ptr<libdeflate_compressor, FreeCompressor> compressor(
      libdeflate_alloc_compressor(1));
  libdeflate_compressor* const c = compressor.get();
  if (c == nullptr) return false;
  out->resize(libdeflate_gzip_compress_bound(c, in.size()));
  const size_t n = libdeflate_gzip_compress(c, in.data(), in.size(), out->data(), out->size());
  if (n == 0) return false;
  out->resize(n);
  return true;
}

// The upstream's error envelope {"error": {"code", "message"}}, or what can be said instead.
void ParseError(long status, const std::string& body, std::string* code, std::string* message) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const auto& e = j["error"];
    if (e.contains("code") && e["code"].is_string()) *code = e["code"].get<std::string>();
    if (e.contains("message") && e["message"].is_string()) {
      *message = e["message"].get<std::string>();
    }
  }
  if (code->empty()) *code = "HTTP_" + std::to_string(status);
  if (message->empty()) message->assign(body.substr(0, 200));
}

int StatusForCode(const std::string& code) {
  if (code == "VALIDATION_ERROR") return 400;
  if (code == "NORMALIZATION_FAILED") return 422;
  return 0;
}

}  // namespace

// Everything on the shipper's thread lives here.
class Shipper::Loop {
 public:
  Loop(config::UpstreamOptions upstream, config::BatchOptions batch, spool::Spool* spool,
       Clock* clock, std::string user_agent)
      : up_(std::move(upstream)),
        batch_opts_(batch),
        spool_(spool),
        clock_(clock),
        user_agent_(std::move(user_agent)),
        rng_(std::random_device{}()) {}

  ~Loop() {
    for (auto& r : in_flight_) Release(r.get());
    if (multi_) curl_multi_cleanup(multi_);
    curl_slist_free_all(base_headers_);
    if (gzip_headers_) {
      gzip_headers_->next = nullptr;  // borrowed base_headers_, freed above
      curl_slist_free_all(gzip_headers_);
    }
  }

  absl::Status Init() {
    auto reader = spool_->NewReader();
    if (!reader.ok()) return reader.status();
    reader_ = std::move(*reader);
    batcher_ = std::make_unique<batcher::Batcher>(batch_opts_, reader_.get(), clock_);
    multi_ = curl_multi_init();
    if (!multi_) return absl::InternalError("curl_multi_init failed");
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(up_.max_in_flight));
    url_ = up_.url + "/v1/events";
    base_headers_ = curl_slist_append(base_headers_, "Content-Type: application/json");
    base_headers_ = curl_slist_append(base_headers_, "Expect:");
    base_headers_ =
        curl_slist_append(base_headers_, ("Authorization: Bearer " + up_.api_key).c_str());
    base_headers_ = curl_slist_append(base_headers_, ("x-kaplaix-sdk: " + user_agent_).c_str());
    // A gzipped request sends one more header: a single node chained in front of the shared list.
    gzip_headers_ = curl_slist_append(nullptr, "Content-Encoding: gzip");
    gzip_headers_->next = base_headers_;
    if (up_.insecure_skip_verify) {
      LogWarn("TLS verification of the upstream is OFF (upstream.insecure_skip_verify)",
              {{"url", up_.url}});
    }
    return absl::OkStatus();
  }

  void Wake() {
    if (multi_) curl_multi_wakeup(multi_);
  }
  void RequestFlush() {
    flush_ = true;
    Wake();
  }
  void Stop(SteadyTime deadline) {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_deadline_ = deadline;
      stopping_ = true;
    }
    flush_ = true;
    Wake();
  }

  ShipperStats stats() const {
    std::lock_guard<std::mutex> l(mu_);
    ShipperStats s = stats_;
    s.in_flight = in_flight_count_.load();
    return s;
  }

  void Run() {
    pthread_setname_np(pthread_self(), "tg-shipper");
    for (;;) {
      bool stopping;
      SteadyTime deadline;
      {
        std::lock_guard<std::mutex> l(mu_);
        stopping = stopping_;
        deadline = stop_deadline_;
      }
      const SteadyTime now = clock_->Steady();
      if (stopping) {
        const bool idle = in_flight_.empty() && retry_.empty() && ready_.empty() &&
                          !batcher_->pending() && spool_->stats().queue_depth == 0;
        if (idle || now >= deadline) {
          if (!idle) {
            LogWarn("shutdown deadline reached; unshipped events stay in the spool",
                    {{"queue_depth", spool_->stats().queue_depth}});
          }
          break;
        }
      }
      SteadyTime wake = now + std::chrono::milliseconds(stopping ? 20 : 250);
      if (now >= pause_until_) {
        FillInFlight(stopping || flush_.exchange(false), &wake);
      } else {
        wake = std::min(wake, pause_until_);
      }
      int running = 0;
      curl_multi_perform(multi_, &running);
      Collect();
      const auto wait =
          std::chrono::duration_cast<std::chrono::milliseconds>(wake - clock_->Steady());
      int ms = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 250));
      curl_multi_poll(multi_, nullptr, 0, ms, nullptr);
    }
  }

 private:
  struct Request {
    std::vector<spool::StoredEvent> events;
    std::string body;
    bool gzipped = false;
    int attempts = 0;
    CURL* easy = nullptr;
    std::string response;
    std::string retry_after;
    // libcurl's own words for a transport failure: names the certificate problem or the host
    // that did not resolve, where curl_easy_strerror only gives the error class.
    char error[CURL_ERROR_SIZE] = {};
  };

  static size_t OnBody(char* p, size_t size, size_t n, void* ud) {
    auto* r = static_cast<Request*>(ud);
    if (r->response.size() < (1 << 20)) r->response.append(p, size * n);
    return size * n;
  }
  static size_t OnHeader(char* p, size_t size, size_t n, void* ud) {
    auto* r = static_cast<Request*>(ud);
    std::string_view line(p, size * n);
    constexpr std::string_view kName = "retry-after:";
    if (line.size() > kName.size()) {
      std::string lower(line.substr(0, kName.size()));
      for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (lower == kName) r->retry_after = std::string(line.substr(kName.size()));
    }
    return size * n;
  }

  std::unique_ptr<Request> Make(std::vector<spool::StoredEvent> events) {
    auto r = std::make_unique<Request>();
    r->events = std::move(events);
    std::string json;
    if (up_.ingest_format == "array") {
      size_t total = 2;
      for (const auto& e : r->events) total += e.body.size() + 1;
      json.reserve(total);
      json.push_back('[');
      for (size_t i = 0; i < r->events.size(); ++i) {
        if (i) json.push_back(',');
        json += r->events[i].body;
      }
      json.push_back(']');
    } else {
      json = r->events.front().body;
    }
    if (up_.compression == "gzip" && json.size() >= kGzipThreshold && Gzip(json, &r->body)) {
      r->gzipped = true;
    } else {
      r->body = std::move(json);
    }
    return r;
  }

  void StartRequest(std::unique_ptr<Request> r) {
    CURL* e = curl_easy_init();
    r->easy = e;
    r->response.clear();
    r->retry_after.clear();
    r->error[0] = '\0';
    ++r->attempts;
    curl_easy_setopt(e, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r->body.size()));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->gzipped ? gzip_headers_ : base_headers_);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Loop::OnBody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r.get());
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Loop::OnHeader);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r.get());
    curl_easy_setopt(e, CURLOPT_PRIVATE, r.get());
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(up_.timeout.count()));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(up_.connect_timeout.count()));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_USERAGENT, user_agent_.c_str());
    if (!up_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, up_.ca_file.c_str());
    if (up_.insecure_skip_verify) {
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_multi_add_handle(multi_, e);
    in_flight_.push_back(std::move(r));
    in_flight_count_ = in_flight_.size();
  }

  void Release(Request* r) {
    if (r->easy) {
      curl_multi_remove_handle(multi_, r->easy);
      curl_easy_cleanup(r->easy);
      r->easy = nullptr;
    }
  }

  void FillInFlight(bool flush, SteadyTime* wake) {
    while (in_flight_.size() < up_.max_in_flight && !retry_.empty()) {
      StartRequest(std::move(retry_.front()));
      retry_.pop_front();
    }
    std::vector<spool::StoredEvent> batch;
    while (in_flight_.size() < up_.max_in_flight) {
      if (up_.ingest_format == "single") {
        if (ready_.empty()) {
          // Single events go out at once; the batch only sizes the read from the spool.
          absl::Status s = batcher_->Next(true, &batch, wake);
          SetAsideDamaged();
          if (!s.ok()) {
            LogError("shipper: reading the spool failed", {{"error", std::string(s.message())}});
            return;
          }
          if (batch.empty()) return;
          for (auto& e : batch) ready_.push_back(std::move(e));
        }
        std::vector<spool::StoredEvent> one;
        one.push_back(std::move(ready_.front()));
        ready_.pop_front();
        StartRequest(Make(std::move(one)));
      } else {
        absl::Status s = batcher_->Next(flush, &batch, wake);
        SetAsideDamaged();
        if (!s.ok()) {
          LogError("shipper: reading the spool failed", {{"error", std::string(s.message())}});
          return;
        }
        if (batch.empty()) return;
        StartRequest(Make(std::move(batch)));
        batch.clear();
      }
    }
  }

  // Chunks the reader could not split are set aside (kept in damaged_chunks), loudly, so
  // that what follows them still ships.
  void SetAsideDamaged() {
    std::vector<spool::DamagedChunk> damaged = reader_->TakeDamaged();
    if (damaged.empty()) return;
    for (const auto& d : damaged) {
      LogError("shipper: a stored chunk is damaged and cannot be read; set aside, not shipped",
               {{"chunk", d.seq}, {"events", d.events}, {"kept_in", "damaged_chunks"}});
    }
    spool_->SetAside(std::move(damaged));
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
      in_flight_count_ = in_flight_.size();
      Release(r.get());
      Handle(std::move(r), code, status);
    }
  }

  void Handle(std::unique_ptr<Request> r, CURLcode code, long status) {
    const ShipAction action = Classify(code == CURLE_OK ? status : 0, code != CURLE_OK);
    switch (action) {
      case ShipAction::kOk: {
        std::vector<spool::EventRef> acked;
        std::vector<spool::DeadLetterInfo> dead;
        if (up_.ingest_format == "array") {
          // 2xx with per-item rejects: those events are dead-lettered alone.
          auto j = nlohmann::json::parse(r->response, nullptr, false);
          std::vector<bool> rejected(r->events.size(), false);
          if (j.is_object() && j.contains("rejected") && j["rejected"].is_array()) {
            for (const auto& item : j["rejected"]) {
              if (!item.is_object() || !item.contains("index") ||
                  !item["index"].is_number_unsigned()) {
                continue;
              }
              const size_t i = item["index"].get<size_t>();
              if (i >= r->events.size() || rejected[i]) continue;
              rejected[i] = true;
              std::string c, m;
              ParseError(status, item.dump(), &c, &m);
              dead.push_back({r->events[i].ref(), r->events[i].body, StatusForCode(c), c, m});
            }
          }
          for (size_t i = 0; i < r->events.size(); ++i) {
            if (!rejected[i]) acked.push_back(r->events[i].ref());
          }
        } else {
          for (const auto& e : r->events) acked.push_back(e.ref());
        }
        failures_ = 0;
        {
          std::lock_guard<std::mutex> l(mu_);
          stats_.events_shipped += acked.size();
          stats_.events_dead_lettered += dead.size();
          ++stats_.requests_ok;
          stats_.state = "ok";
        }
        if (!dead.empty()) {
          LogWarn("upstream rejected events of a batch; dead-lettered",
                  {{"count", dead.size()},
                   {"code", dead.front().code},
                   {"message", dead.front().message}});
          spool_->DeadLetter(std::move(dead));
        }
        spool_->Ack(std::move(acked));
        break;
      }
      case ShipAction::kRetry:
      case ShipAction::kAuthPause: {
        std::string error;
        if (code != CURLE_OK) {
          error = absl::StrCat("transport: ",
                               r->error[0] != '\0' ? r->error : curl_easy_strerror(code));
        } else {
          std::string c, m;
          ParseError(status, r->response, &c, &m);
          error = absl::StrCat("HTTP ", status, " ", c, ": ", m);
        }
        ++failures_;
        auto delay = BackoffDelay(failures_, up_.backoff_initial, up_.backoff_max,
                                  std::uniform_real_distribution<double>(0, 1)(rng_));
        if (auto ra = ParseRetryAfter(r->retry_after, clock_->Now()); ra && *ra > delay) {
          delay = std::min<std::chrono::milliseconds>(*ra, std::chrono::hours(1));
        }
        const bool auth = action == ShipAction::kAuthPause;
        if (auth) delay = std::max(delay, up_.auth_failure_pause);
        pause_until_ = std::max(pause_until_, clock_->Steady() + delay);
        {
          std::lock_guard<std::mutex> l(mu_);
          ++stats_.requests_retried;
          stats_.state = auth ? "paused" : "retrying";
          stats_.last_error = error;
        }
        if (auth) {
          LogError("upstream refused the API key: shipping paused, events kept",
                   {{"status", status},
                    {"error", error},
                    {"pause_ms", static_cast<int64_t>(delay.count())}});
        } else if (failures_ == 1 || failures_ % 20 == 0) {
          LogWarn("upstream request failed; will retry",
                  {{"error", error},
                   {"failures", failures_},
                   {"retry_in_ms", static_cast<int64_t>(delay.count())}});
        }
        retry_.push_back(std::move(r));
        break;
      }
      case ShipAction::kDeadLetter: {
        std::string c, m;
        ParseError(status, r->response, &c, &m);
        std::vector<spool::DeadLetterInfo> dead;
        for (const auto& e : r->events) {
          dead.push_back({e.ref(), e.body, static_cast<int>(status), c, m});
        }
        {
          std::lock_guard<std::mutex> l(mu_);
          stats_.events_dead_lettered += dead.size();
          stats_.last_error = absl::StrCat("HTTP ", status, " ", c, ": ", m);
        }
        LogWarn("upstream refused events; dead-lettered",
                {{"status", status}, {"code", c}, {"message", m}, {"count", dead.size()}});
        spool_->DeadLetter(std::move(dead));
        break;
      }
    }
  }

  const config::UpstreamOptions up_;
  const config::BatchOptions batch_opts_;
  spool::Spool* const spool_;
  Clock* const clock_;
  const std::string user_agent_;
  std::mt19937_64 rng_;
  std::string url_;
  CURLM* multi_ = nullptr;
  curl_slist* base_headers_ = nullptr;
  curl_slist* gzip_headers_ = nullptr;
  std::unique_ptr<spool::Reader> reader_;
  std::unique_ptr<batcher::Batcher> batcher_;
  std::vector<std::unique_ptr<Request>> in_flight_;
  std::deque<std::unique_ptr<Request>> retry_;
  std::deque<spool::StoredEvent> ready_;
  SteadyTime pause_until_{};
  int failures_ = 0;
  std::atomic<bool> flush_{false};
  std::atomic<size_t> in_flight_count_{0};

  mutable std::mutex mu_;
  bool stopping_ = false;       // guarded by mu_
  SteadyTime stop_deadline_{};  // guarded by mu_
  ShipperStats stats_;          // guarded by mu_
};

Shipper::Shipper(config::UpstreamOptions upstream, config::BatchOptions batch, spool::Spool* spool,
                 Clock* clock, std::string user_agent)
    : loop_(std::make_unique<Loop>(std::move(upstream), batch, spool, clock,
                                   std::move(user_agent))) {}

Shipper::~Shipper() {
  if (thread_.joinable()) {
    loop_->Stop(SteadyTime{});
    thread_.join();
  }
}

absl::Status Shipper::Start() {
  if (absl::Status s = loop_->Init(); !s.ok()) return s;
  thread_ = std::thread([this] { loop_->Run(); });
  return absl::OkStatus();
}

void Shipper::Wake() { loop_->Wake(); }
void Shipper::RequestFlush() { loop_->RequestFlush(); }

void Shipper::Stop(SteadyTime deadline) {
  loop_->Stop(deadline);
  if (thread_.joinable()) thread_.join();
}

ShipperStats Shipper::stats() const { return loop_->stats(); }

}  // namespace toolgate::shipper
