// PolicySync: the rules of the upstream (policy.mode: sync), fetched periodically with
// GET /v1/policies and evaluated locally, so that a Check costs no network round trip.
//
// The upstream's policy objects are turned into one toolgate policy document
// (UpstreamPoliciesToDocument): the `rules` of every active policy (status not archived /
// inactive / disabled), in the order listed, and the strictest `default` among them (deny >
// require_approval > allow; allow when none says). The document is compiled like a file; one that
// does not compile keeps the last good rules in force. The last good document is kept in
// DATA_DIR/policy.upstream.json and loaded at start-up, so a daemon that starts while the
// upstream is down still enforces the rules it had.
//
// Thread-safe; one thread ("tg-policy-sync").
#ifndef TOOLGATE_DAEMON_POLICY_POLICY_SYNC_H_
#define TOOLGATE_DAEMON_POLICY_POLICY_SYNC_H_

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "daemon/common/http_client.h"
#include "daemon/config/config.h"
#include "daemon/policy/policy_source.h"

namespace toolgate::policy {

// Builds a toolgate policy document (JSON text) from the pages of GET /v1/policies (each
// `{"data": [...]}` or a bare array). InvalidArgument naming the policy and the problem.
absl::StatusOr<std::string> UpstreamPoliciesToDocument(const std::vector<std::string>& pages);

class PolicySync {
 public:
  PolicySync(config::PolicyOptions options, std::string data_dir, PolicySource* source,
             HttpClient* http, std::chrono::milliseconds request_timeout);
  ~PolicySync();

  // Loads the cached document (if any), then starts the periodic sync (first fetch at once).
  void Start();
  void Stop();

  // Fetches now and waits for the result (Admin.ReloadPolicies, SIGHUP).
  ReloadResult SyncNow();

  uint64_t syncs() const { return syncs_.load(); }
  uint64_t failures() const { return failures_.load(); }

 private:
  void Loop();
  absl::StatusOr<std::string> Fetch();
  ReloadResult SyncOnce();

  const config::PolicyOptions options_;
  const std::string cache_path_;
  PolicySource* const source_;
  HttpClient* const http_;
  const std::chrono::milliseconds timeout_;
  std::mutex sync_mu_;  // one sync at a time (the loop's or SyncNow's)
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
  std::atomic<uint64_t> syncs_{0}, failures_{0};
};

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_POLICY_SYNC_H_
