#include "daemon/guardian/upstream_poller.h"

#include <pthread.h>

#include <cctype>
#include <nlohmann/json.hpp>
#include <set>

#include "daemon/common/log.h"

namespace toolgate::guardian {
namespace {

std::string StringField(const nlohmann::json& o, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    auto it = o.find(n);
    if (it != o.end() && it->is_string()) return *it;
  }
  return "";
}

bool UrlSafe(const std::string& s) {
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' &&
        c != '=') {
      return false;
    }
  }
  return true;
}

}  // namespace

std::vector<UpstreamDecision> ParseUpstreamDecisions(const std::string& body,
                                                     std::string* next_cursor) {
  std::vector<UpstreamDecision> out;
  next_cursor->clear();
  auto doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  const nlohmann::json* list = &doc;
  if (doc.is_object()) {
    *next_cursor = StringField(doc, {"nextCursor"});
    if (doc.contains("data")) list = &doc["data"];
  }
  if (!list->is_array()) return out;
  for (const auto& item : *list) {
    if (!item.is_object()) continue;
    UpstreamDecision d;
    d.upstream_id = StringField(item, {"id"});
    d.status = StringField(item, {"status"});
    if (d.upstream_id.empty() ||
        (d.status != "approved" && d.status != "rejected" && d.status != "expired")) {
      continue;
    }
    d.approver_id = StringField(item, {"approverId", "decidedBy", "approver"});
    d.reason = StringField(item, {"decisionReason", "decision_reason", "comment"});
    out.push_back(std::move(d));
  }
  return out;
}

UpstreamPoller::UpstreamPoller(Guardian* guardian, HttpClient* http,
                               std::chrono::milliseconds interval,
                               std::chrono::milliseconds request_timeout)
    : guardian_(guardian), http_(http), interval_(interval), timeout_(request_timeout) {}

UpstreamPoller::~UpstreamPoller() { Stop(); }

void UpstreamPoller::Start() {
  listener_ = guardian_->AddListener([this](const PendingAction& a) {
    if (!a.upstream_id().empty() && a.status() != toolgate::v1::PENDING) Forward(a);
  });
  if (interval_.count() > 0) thread_ = std::thread([this] { Loop(); });
}

void UpstreamPoller::Stop() {
  if (listener_ != 0) {
    guardian_->RemoveListener(listener_);
    listener_ = 0;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void UpstreamPoller::Forward(const PendingAction& a) {
  // Decisions that came from the upstream, and expiries (the upstream has its own), stay here.
  if (a.approver_id().rfind("upstream:", 0) == 0 || a.status() == toolgate::v1::EXPIRED) return;
  nlohmann::json body = {
      {"decision", a.status() == toolgate::v1::APPROVED ? "approved" : "rejected"},
      {"reason", a.decision_reason()},
      {"approverId", a.approver_id()}};
  if (!UrlSafe(a.upstream_id())) return;
  http_->Send(
      "POST", "/v1/guardian/pending-actions/" + a.upstream_id() + "/decide", body.dump(), timeout_,
      [this, id = a.id(), upstream = a.upstream_id()](HttpResponse r) {
        if (r.ok()) {
          LogInfo("guardian: decision forwarded upstream", {{"id", id}, {"upstream_id", upstream}});
        } else {
          errors_.fetch_add(1);
          LogWarn("guardian: decision not forwarded upstream (the local decision stands)",
                  {{"id", id}, {"upstream_id", upstream}, {"error", r.Describe()}});
        }
      });
}

void UpstreamPoller::PollOnce() {
  // The local actions waiting on the upstream, by upstream id.
  auto pending = guardian_->List(toolgate::v1::PENDING, 100000);
  if (!pending.ok()) return;
  std::map<std::string, std::string> by_upstream;  // upstream id → local id
  for (const auto& a : *pending) {
    if (!a.upstream_id().empty()) by_upstream[a.upstream_id()] = a.id();
  }
  if (by_upstream.empty()) return;
  polls_.fetch_add(1);
  for (const char* status : {"approved", "rejected", "expired"}) {
    std::string cursor;
    for (int page = 0; page < 20 && !by_upstream.empty(); ++page) {
      std::string path =
          std::string("/v1/guardian/pending-actions?status=") + status + "&limit=100";
      if (!cursor.empty()) path += "&cursor=" + cursor;
      HttpResponse r = http_->SendAndWait("GET", path, "", timeout_);
      if (!r.ok()) {
        errors_.fetch_add(1);
        LogWarn("guardian: cannot poll the upstream's decisions", {{"error", r.Describe()}});
        return;
      }
      for (const UpstreamDecision& d : ParseUpstreamDecisions(r.body, &cursor)) {
        auto it = by_upstream.find(d.upstream_id);
        if (it == by_upstream.end()) continue;
        const bool approve = d.status == "approved";
        std::string reason = d.reason;
        if (d.status == "expired") {
          reason = "expired upstream" + (reason.empty() ? "" : ": " + reason);
        }
        auto decided = guardian_->Decide(
            it->second, approve, reason,
            "upstream:" + (d.approver_id.empty() ? std::string("unknown") : d.approver_id));
        if (decided.ok()) applied_.fetch_add(1);
        by_upstream.erase(it);
      }
      if (cursor.empty() || !UrlSafe(cursor)) break;
    }
  }
}

void UpstreamPoller::Loop() {
  pthread_setname_np(pthread_self(), "tg-guardian-poll");
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    if (cv_.wait_for(l, interval_, [this] { return stopping_; })) break;
    l.unlock();
    PollOnce();
    l.lock();
  }
}

}  // namespace toolgate::guardian
