#include "daemon/policy/policy_sync.h"

#include <pthread.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "daemon/common/crypto.h"
#include "daemon/common/log.h"

namespace toolgate::policy {
namespace {

constexpr int kMaxPages = 100;

int Strictness(const std::string& effect) {
  if (effect == "deny") return 2;
  if (effect == "require_approval") return 1;
  return 0;
}

bool Inactive(const nlohmann::json& p) {
  if (auto a = p.find("archived"); a != p.end() && a->is_boolean() && a->get<bool>()) return true;
  if (auto s = p.find("status"); s != p.end() && s->is_string()) {
    const std::string st = *s;
    return st == "archived" || st == "inactive" || st == "disabled";
  }
  return false;
}

bool WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return false;
    out << text;
    out.flush();
    if (!out) return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  return !ec;
}

}  // namespace

absl::StatusOr<std::string> UpstreamPoliciesToDocument(const std::vector<std::string>& pages) {
  nlohmann::json rules = nlohmann::json::array();
  std::string default_effect = "allow";
  size_t index = 0;
  for (const std::string& page : pages) {
    auto doc = nlohmann::json::parse(page, nullptr, /*allow_exceptions=*/false);
    const nlohmann::json* list = &doc;
    if (doc.is_object() && doc.contains("data")) list = &doc["data"];
    if (!list->is_array()) {
      return absl::InvalidArgumentError(
          "GET /v1/policies: expected {\"data\": [...]} or an array of policies");
    }
    for (const auto& p : *list) {
      const std::string name = p.is_object() && p.contains("id") && p["id"].is_string()
                                   ? "policy '" + p["id"].get<std::string>() + "'"
                                   : "policy #" + std::to_string(index);
      ++index;
      if (!p.is_object()) return absl::InvalidArgumentError(name + ": not an object");
      if (Inactive(p)) continue;
      auto r = p.find("rules");
      if (r == p.end() || !r->is_array()) {
        return absl::InvalidArgumentError(name + ": rules: expected an array of toolgate rules");
      }
      for (const auto& rule : *r) rules.push_back(rule);
      if (auto d = p.find("default"); d != p.end()) {
        if (!d->is_string() || (*d != "allow" && *d != "deny" && *d != "require_approval")) {
          return absl::InvalidArgumentError(name +
                                            ": default: expected allow, deny or "
                                            "require_approval");
        }
        if (Strictness(*d) > Strictness(default_effect)) default_effect = *d;
      }
    }
  }
  nlohmann::json out = {{"version", 1}, {"default", default_effect}, {"rules", rules}};
  // The revision names the content, so every daemon with the same rules reports the same one.
  const std::string body = out.dump();
  out["revision"] = "upstream:" + Sha256Hex(body).substr(0, 12);
  return out.dump(2);
}

PolicySync::PolicySync(config::PolicyOptions options, std::string data_dir, PolicySource* source,
                       HttpClient* http, std::chrono::milliseconds request_timeout)
    : options_(std::move(options)),
      cache_path_((std::filesystem::path(data_dir) / "policy.upstream.json").string()),
      source_(source),
      http_(http),
      timeout_(request_timeout) {}

PolicySync::~PolicySync() { Stop(); }

void PolicySync::Start() {
  std::ifstream in(cache_path_, std::ios::binary);
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    ReloadResult r = source_->SetText(ss.str(), cache_path_);
    if (r.error.empty()) {
      LogInfo("policy: last synced rules loaded; syncing with the upstream",
              {{"revision", r.revision}});
    }
  }
  source_->SetReloader([this] { return SyncNow(); });
  thread_ = std::thread([this] { Loop(); });
}

void PolicySync::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::string> PolicySync::Fetch() {
  std::vector<std::string> pages;
  std::string cursor;
  for (int i = 0; i < kMaxPages; ++i) {
    std::string path = "/v1/policies?limit=100";
    if (!cursor.empty()) path += "&cursor=" + cursor;
    HttpResponse r = http_->SendAndWait("GET", path, "", timeout_);
    if (!r.ok()) return absl::UnavailableError("GET /v1/policies: " + r.Describe());
    auto doc = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    pages.push_back(std::move(r.body));
    cursor.clear();
    if (doc.is_object()) {
      auto next = doc.find("nextCursor");
      if (next != doc.end() && next->is_string()) cursor = *next;
    }
    if (cursor.empty()) return UpstreamPoliciesToDocument(pages);
    // Cursors are opaque; keep them URL-safe.
    for (char c : cursor) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' &&
          c != '=') {
        return absl::InvalidArgumentError("GET /v1/policies: nextCursor is not URL-safe");
      }
    }
  }
  return absl::InvalidArgumentError("GET /v1/policies: more than 100 pages");
}

ReloadResult PolicySync::SyncOnce() {
  std::lock_guard<std::mutex> l(sync_mu_);
  syncs_.fetch_add(1);
  auto doc = Fetch();
  ReloadResult result;
  if (!doc.ok()) {
    failures_.fetch_add(1);
    result.error = std::string(doc.status().message());
    result.revision = source_->revision();
    LogWarn("policy sync failed; the last good rules stay in force",
            {{"error", result.error}, {"revision", result.revision}});
    return result;
  }
  result = source_->SetText(*doc, "upstream");
  if (!result.error.empty()) {
    failures_.fetch_add(1);
    return result;
  }
  if (result.changed && !WriteFileAtomically(cache_path_, *doc)) {
    LogWarn("policy sync: cannot save the synced rules", {{"path", cache_path_}});
  }
  return result;
}

ReloadResult PolicySync::SyncNow() { return SyncOnce(); }

void PolicySync::Loop() {
  pthread_setname_np(pthread_self(), "tg-policy-sync");
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    l.unlock();
    SyncOnce();
    l.lock();
    cv_.wait_for(l, options_.sync_interval, [this] { return stopping_; });
  }
}

}  // namespace toolgate::policy
