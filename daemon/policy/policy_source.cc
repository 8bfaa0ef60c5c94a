#include "daemon/policy/policy_source.h"

#include <pthread.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "daemon/common/crypto.h"
#include "daemon/common/log.h"

namespace toolgate::policy {

PolicySource::PolicySource(config::PolicyOptions options) : options_(std::move(options)) {}

PolicySource::~PolicySource() { Stop(); }

PolicySource::FileStamp PolicySource::Stamp() const {
  struct stat st {};
  if (::stat(options_.file.c_str(), &st) != 0) return {};
  return {static_cast<long long>(st.st_size),
          static_cast<long long>(st.st_mtim.tv_sec) * 1'000'000'000LL + st.st_mtim.tv_nsec,
          static_cast<long long>(st.st_ino)};
}

absl::Status PolicySource::Load() {
  if (options_.file.empty()) return absl::OkStatus();
  ReloadResult r = Reload();
  if (!r.error.empty()) return absl::InvalidArgumentError("policy.file: " + r.error);
  return absl::OkStatus();
}

ReloadResult PolicySource::Reload() {
  if (reloader_) return reloader_();
  if (options_.file.empty()) {
    ReloadResult result;
    result.error = "no policy file configured (policy.file)";
    return result;
  }
  const FileStamp stamp = Stamp();
  std::ifstream in(options_.file, std::ios::binary);
  std::stringstream ss;
  if (in) ss << in.rdbuf();
  {
    std::lock_guard<std::mutex> l(mu_);
    stamp_ = stamp;
  }
  const std::string text = ss.str();
  return Apply(in ? &text : nullptr, options_.file, "cannot read " + options_.file);
}

ReloadResult PolicySource::SetText(const std::string& text, const std::string& source_name) {
  return Apply(&text, source_name, "");
}

void PolicySource::SetReloader(std::function<ReloadResult()> reloader) {
  reloader_ = std::move(reloader);
}

ReloadResult PolicySource::Apply(const std::string* text, const std::string& source_name,
                                 const std::string& read_error) {
  ReloadResult result;
  std::lock_guard<std::mutex> l(mu_);
  auto current = std::atomic_load(&current_);
  if (text == nullptr) {
    result.error = read_error;
  } else {
    const std::string hash = Sha256Hex(*text);
    if (current && hash == last_text_hash_) {
      result.revision = current->revision();
      last_error_.clear();
      return result;  // touched, not changed
    }
    auto compiled = CompilePolicy(*text, source_name);
    if (compiled.ok()) {
      std::atomic_store(&current_, *compiled);
      last_text_hash_ = hash;
      last_error_.clear();
      reloads_.fetch_add(1);
      result.changed = true;
      result.revision = (*compiled)->revision();
      LogInfo(
          "policy loaded",
          {{"source", source_name}, {"revision", result.revision}, {"rules", (*compiled)->size()}});
      return result;
    }
    result.error = std::string(compiled.status().message());
  }
  reload_failures_.fetch_add(1);
  last_error_ = result.error;
  result.revision = current ? current->revision() : "";
  LogError("policy not reloaded; the last good policy stays in force",
           {{"source", source_name}, {"error", result.error}, {"revision", result.revision}});
  return result;
}

void PolicySource::StartWatching() {
  if (options_.file.empty() || options_.reload_interval.count() <= 0) return;
  watcher_ = std::thread([this] { WatchLoop(); });
}

void PolicySource::WatchLoop() {
  pthread_setname_np(pthread_self(), "tg-policy");
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, options_.reload_interval, [this] { return stopping_; })) {
    const FileStamp seen = stamp_;
    l.unlock();
    if (!(Stamp() == seen)) Reload();
    l.lock();
  }
}

void PolicySource::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

std::string PolicySource::revision() const {
  auto current = Current();
  return current ? current->revision() : "";
}

std::string PolicySource::last_error() const {
  std::lock_guard<std::mutex> l(mu_);
  return last_error_;
}

}  // namespace toolgate::policy
