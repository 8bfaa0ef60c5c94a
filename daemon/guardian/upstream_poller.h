// UpstreamPoller: decisions on pending actions that the upstream created (remote policy mode,
// where POST /v1/policies/check answered REQUIRE_APPROVAL with a pendingActionId).
//
// Every poll_interval, while such actions are pending locally, it asks
// GET /v1/guardian/pending-actions?status=approved|rejected|expired and applies what it finds to
// the local pending action with that upstream_id: approved → approved, rejected → rejected,
// expired upstream → rejected with that reason (an upstream expiry is never an approval). The
// approver is recorded as "upstream:<approverId>". The waiting agent is woken as with any
// other decision.
//
// The other way round, a decision made here (CLI, local HTTP endpoint, inbound webhook) on such
// an action is forwarded to POST /v1/guardian/pending-actions/:id/decide, so the upstream's
// view agrees; a failed forward is logged and counted, the local decision stands.
//
// Thread-safe; one thread ("tg-guardian-poll").
#ifndef TOOLGATE_DAEMON_GUARDIAN_UPSTREAM_POLLER_H_
#define TOOLGATE_DAEMON_GUARDIAN_UPSTREAM_POLLER_H_

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/common/http_client.h"
#include "daemon/guardian/guardian.h"

namespace toolgate::guardian {

// One decision read from the upstream's list.
struct UpstreamDecision {
  std::string upstream_id;
  std::string status;  // approved | rejected | expired
  std::string approver_id;
  std::string reason;
};

// Parses one page of GET /v1/guardian/pending-actions ({"data": [...]} or an array); entries
// without an id or a known status are skipped. Pure, for tests.
std::vector<UpstreamDecision> ParseUpstreamDecisions(const std::string& body,
                                                     std::string* next_cursor);

class UpstreamPoller {
 public:
  UpstreamPoller(Guardian* guardian, HttpClient* http, std::chrono::milliseconds interval,
                 std::chrono::milliseconds request_timeout);
  ~UpstreamPoller();

  void Start();
  void Stop();

  uint64_t polls() const { return polls_.load(); }
  uint64_t applied() const { return applied_.load(); }
  uint64_t errors() const { return errors_.load(); }

 private:
  void Loop();
  void PollOnce();
  void Forward(const PendingAction& a);

  Guardian* const guardian_;
  HttpClient* const http_;
  const std::chrono::milliseconds interval_;
  const std::chrono::milliseconds timeout_;
  uint64_t listener_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
  std::atomic<uint64_t> polls_{0}, applied_{0}, errors_{0};
};

}  // namespace toolgate::guardian

#endif  // TOOLGATE_DAEMON_GUARDIAN_UPSTREAM_POLLER_H_
