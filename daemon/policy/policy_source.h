// PolicySource: the current compiled policy, and its hot reload from a local file.
//
// The rule set in force is an immutable shared_ptr swapped atomically: a Check holds the set it
// started with, so a reload never changes a decision half-way. A reload happens when the file
// changes (polled every reload_interval: size, mtime, inode — which also catches the symlink
// swap of a Kubernetes ConfigMap), on SIGHUP, and on Admin.ReloadPolicies. A file that does not
// compile keeps the last good set in force; the error is logged, counted and kept for Status.
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_POLICY_POLICY_SOURCE_H_
#define TOOLGATE_DAEMON_POLICY_POLICY_SOURCE_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "daemon/config/config.h"
#include "daemon/policy/policy.h"

namespace toolgate::policy {

struct ReloadResult {
  std::string revision;  // in force after the reload
  bool changed = false;
  std::string error;  // why the file was not taken; empty on success
};

class PolicySource {
 public:
  explicit PolicySource(config::PolicyOptions options);
  ~PolicySource();

  // Loads the file at start-up: an error here is a configuration error (fatal).
  absl::Status Load();
  // Starts the polling thread (when a file and an interval are configured).
  void StartWatching();
  void Stop();

  // Re-reads the file now (or, when a reloader is set, asks it: sync mode).
  ReloadResult Reload();

  // Compiles `text` (from `source_name`, e.g. "upstream") and puts it in force; on an error the
  // last good set stays in force, as with a file. Used by the upstream policy sync.
  ReloadResult SetText(const std::string& text, const std::string& source_name);
  // Replaces what Reload() does (SIGHUP, Admin.ReloadPolicies): the sync's "fetch now".
  void SetReloader(std::function<ReloadResult()> reloader);

  // The set in force; nullptr when no policy file is configured.
  std::shared_ptr<const RuleSet> Current() const { return std::atomic_load(&current_); }
  std::string revision() const;
  std::string last_error() const;
  uint64_t reloads() const { return reloads_.load(); }
  uint64_t reload_failures() const { return reload_failures_.load(); }

 private:
  struct FileStamp {
    long long size = -1, mtime_ns = -1, inode = -1;
    bool operator==(const FileStamp& o) const {
      return size == o.size && mtime_ns == o.mtime_ns && inode == o.inode;
    }
  };
  FileStamp Stamp() const;
  void WatchLoop();
  ReloadResult Apply(const std::string* text, const std::string& source_name,
                     const std::string& read_error);

  const config::PolicyOptions options_;
  std::shared_ptr<const RuleSet> current_;  // atomic_load / atomic_store only
  std::atomic<uint64_t> reloads_{0}, reload_failures_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string last_error_;      // guarded by mu_
  std::string last_text_hash_;  // guarded by mu_; unchanged content is not recompiled
  FileStamp stamp_;             // guarded by mu_
  bool stopping_ = false;       // guarded by mu_
  std::thread watcher_;
  std::function<ReloadResult()> reloader_;  // set before use, never changed after
};

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_POLICY_SOURCE_H_
