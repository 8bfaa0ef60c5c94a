#include "daemon/policy/remote_checker.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "daemon/common/log.h"

namespace toolgate::policy {
namespace {

std::string CacheKey(const toolgate::v1::Action& a) {
  // Length-prefixed, so that no two different tuples share a key.
  std::string key;
  for (const std::string* f :
       {&a.tool_type(), &a.operation(), &a.target_system(), &a.initiator_type()}) {
    key += std::to_string(f->size());
    key += ':';
    key += *f;
  }
  return key;
}

}  // namespace

absl::StatusOr<RemoteVerdict> ParseRemoteVerdict(const std::string& body) {
  auto doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object()) return absl::InvalidArgumentError("answer is not a JSON object");
  auto it = doc.find("verdict");
  if (it == doc.end() || !it->is_string()) {
    return absl::InvalidArgumentError("answer has no string \"verdict\"");
  }
  const std::string verdict = absl::AsciiStrToUpper(it->get<std::string>());
  RemoteVerdict v;
  if (verdict == "ALLOW") {
    v.decision = toolgate::v1::ALLOW;
  } else if (verdict == "DENY") {
    v.decision = toolgate::v1::DENY;
  } else if (verdict == "REQUIRE_APPROVAL") {
    v.decision = toolgate::v1::REQUIRE_APPROVAL;
  } else {
    return absl::InvalidArgumentError("unknown verdict \"" + verdict + "\"");
  }
  if (auto r = doc.find("reason"); r != doc.end() && r->is_string()) v.reason = *r;
  if (v.reason.empty()) v.reason = "upstream verdict " + verdict;
  if (auto p = doc.find("pendingActionId"); p != doc.end() && p->is_string()) {
    v.pending_action_id = *p;
  }
  return v;
}

RemoteChecker::RemoteChecker(const config::PolicyOptions& options, HttpClient* http, Clock* clock)
    : timeout_(options.remote_timeout),
      cache_ttl_(options.remote_cache_ttl),
      fail_open_(options.failure_mode == "open"),
      http_(http),
      clock_(clock),
      breaker_(static_cast<uint32_t>(options.breaker_failures), options.breaker_reset) {}

RemoteVerdict RemoteChecker::Failed(const std::string& why) {
  RemoteVerdict v;
  if (fail_open_) {
    failed_open_.fetch_add(1, std::memory_order_relaxed);
    v.decision = toolgate::v1::ALLOW;
    v.source = toolgate::v1::FAILED_OPEN;
    v.reason = "remote policy unavailable (" + why + "): failing open";
  } else {
    failed_closed_.fetch_add(1, std::memory_order_relaxed);
    v.decision = toolgate::v1::DENY;
    v.source = toolgate::v1::FAILED_CLOSED;
    v.reason = "remote policy unavailable (" + why + "): failing closed";
  }
  return v;
}

void RemoteChecker::Check(const toolgate::v1::Action& action,
                          std::function<void(RemoteVerdict)> done) {
  std::string key = CacheKey(action);
  if (cache_ttl_.count() > 0) {
    std::lock_guard<std::mutex> l(cache_mu_);
    auto it = cache_.find(key);
    if (it != cache_.end() && it->second.expires > clock_->Steady()) {
      cache_hits_.fetch_add(1, std::memory_order_relaxed);
      RemoteVerdict v = it->second.verdict;
      v.source = toolgate::v1::REMOTE_CACHE;
      done(std::move(v));
      return;
    }
  }
  if (!breaker_.Allow(clock_->Steady())) {
    done(Failed("circuit breaker open"));
    return;
  }
  requests_.fetch_add(1, std::memory_order_relaxed);
  nlohmann::json body = {{"toolType", action.tool_type()},
                         {"operation", action.operation()},
                         {"targetSystem", action.target_system()},
                         {"initiatorType", action.initiator_type()}};
  http_->Send("POST", "/v1/policies/check", body.dump(), timeout_,
              [this, key = std::move(key), done = std::move(done)](HttpResponse r) {
                absl::StatusOr<RemoteVerdict> v =
                    r.ok() ? ParseRemoteVerdict(r.body)
                           : absl::StatusOr<RemoteVerdict>(absl::UnavailableError(r.Describe()));
                if (!v.ok()) {
                  failures_.fetch_add(1, std::memory_order_relaxed);
                  const auto before = breaker_.state();
                  breaker_.OnFailure(clock_->Steady());
                  if (before != CircuitBreaker::State::kOpen &&
                      breaker_.state() == CircuitBreaker::State::kOpen) {
                    LogWarn("remote policy: circuit breaker open",
                            {{"error", std::string(v.status().message())}});
                  }
                  done(Failed(std::string(v.status().message())));
                  return;
                }
                if (breaker_.state() != CircuitBreaker::State::kClosed) {
                  LogInfo("remote policy: circuit breaker closed", {});
                }
                breaker_.OnSuccess();
                if (cache_ttl_.count() > 0 && v->decision != toolgate::v1::REQUIRE_APPROVAL) {
                  std::lock_guard<std::mutex> l(cache_mu_);
                  const SteadyTime now = clock_->Steady();
                  if (cache_.size() >= kMaxCacheEntries) {
                    for (auto it = cache_.begin(); it != cache_.end();) {
                      it = it->second.expires <= now ? cache_.erase(it) : std::next(it);
                    }
                    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
                  }
                  cache_[key] = Cached{*v, now + cache_ttl_};
                }
                done(std::move(*v));
              });
}

RemoteStats RemoteChecker::stats() const {
  RemoteStats s;
  s.requests = requests_.load();
  s.failures = failures_.load();
  s.cache_hits = cache_hits_.load();
  s.failed_open = failed_open_.load();
  s.failed_closed = failed_closed_.load();
  s.breaker_opened = breaker_.times_opened();
  return s;
}

}  // namespace toolgate::policy
