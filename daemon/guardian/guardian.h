// Guardian: actions that need a human, held pending until someone decides or time runs out.
//
// Pending actions live in their own SQLite file (guardian.db, WAL, synchronous=NORMAL: they
// survive daemon restarts and crashes; a power loss may lose the newest ones, which then read as
// unknown, never as approved). A decision comes from Decide (the CLI, through the Guardian
// gRPC service) or from the expiry timer, which applies the rule's on_timeout (deny by default)
// and records the action as EXPIRED — an expired action is never reported as approved. Every
// decision is handed to the audit sink (an `approval` event in the action's session chain) and
// pushed at once to every waiter of that action.
//
// Thread-safe. Waiter callbacks run on the deciding thread (a gRPC thread or the expiry timer)
// and must not block.
#ifndef TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_H_
#define TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_H_

#include <sqlite3.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/common/clock.h"
#include "toolgate/v1/guardian.pb.h"

namespace toolgate::guardian {

// The stored form is the public one: toolgate.v1.PendingAction (its action has no arguments).
using PendingAction = toolgate::v1::PendingAction;

// "pending", "approved", "rejected" or "expired", as logs and the HTTP API spell them.
const char* StatusWord(toolgate::v1::PendingStatus s);

class Guardian {
 public:
  using Waiter = std::function<void(const PendingAction&)>;
  using AuditSink = std::function<void(const PendingAction&)>;
  // Told of every new pending action (status PENDING) and of every decision, after it is
  // stored, on the creating or deciding thread: must not block (enqueue and return).
  using Listener = std::function<void(const PendingAction&)>;

  static absl::StatusOr<std::unique_ptr<Guardian>> Open(const std::string& path, Clock* clock,
                                                        AuditSink audit);
  ~Guardian();

  // Holds `action` pending until decided or until `timeout` passes (then `on_timeout`).
  // `upstream_id`: the upstream's id of the same pending action (remote policy mode), whose
  // decision the upstream poller applies; empty for a local one.
  absl::StatusOr<PendingAction> Create(const toolgate::v1::Action& action,
                                       const std::string& arguments_hash,
                                       const std::string& rule_id, const std::string& reason,
                                       std::chrono::milliseconds timeout,
                                       toolgate::v1::Decision on_timeout,
                                       const std::string& upstream_id = "");

  // Adds a listener (see Listener); returns a token for RemoveListener.
  uint64_t AddListener(Listener listener);
  void RemoveListener(uint64_t token);

  // Approves or rejects. NOT_FOUND for an unknown id; FAILED_PRECONDITION when already decided
  // (the message says how and by whom).
  absl::StatusOr<PendingAction> Decide(const std::string& id, bool approve,
                                       const std::string& reason, const std::string& approver);

  absl::StatusOr<PendingAction> Get(const std::string& id);
  // The action the upstream knows as `upstream_id` (remote policy mode), pending or decided
  // (a pending one first, then the newest); NOT_FOUND when there is none. One indexed lookup.
  absl::StatusOr<PendingAction> GetByUpstreamId(const std::string& upstream_id);
  // Actions with `status` (PENDING when unspecified), newest first.
  absl::StatusOr<std::vector<PendingAction>> List(toolgate::v1::PendingStatus status, size_t limit);

  // Calls `waiter` once with the final state: at once when `id` is decided already, else when
  // it is. Returns a token for CancelWait, or NOT_FOUND.
  absl::StatusOr<uint64_t> Wait(const std::string& id, Waiter waiter);
  void CancelWait(uint64_t token);

  size_t pending() const;
  void Close();

 private:
  Guardian(sqlite3* db, Clock* clock, AuditSink audit);
  absl::Status Init();
  absl::Status AddUpstreamIdColumn();          // in Init: the indexed column of upstream ids
  absl::Status Store(const PendingAction& a);  // requires mu_
  absl::StatusOr<PendingAction> Load(const std::string& id);  // requires mu_
  // The body of the first row of `sql` (which selects body) with ?1 = `id`; requires mu_.
  absl::StatusOr<PendingAction> LoadOne(const char* sql, const std::string& id);
  // Marks `a` decided, stores it, and collects its waiters. Requires mu_.
  absl::Status Finalize(PendingAction* a, std::vector<Waiter>* to_call);
  void ExpiryLoop();
  void Notify(const PendingAction& a);

  sqlite3* const db_;
  Clock* const clock_;
  const AuditSink audit_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<int64_t, std::string> expiries_;  // expires_ms → id, pending only; mu_
  std::map<std::string, std::map<uint64_t, Waiter>> waiters_;  // id → token → waiter; mu_
  std::map<uint64_t, std::string> token_ids_;                  // token → id; mu_
  uint64_t next_token_ = 1;                                    // mu_
  bool closing_ = false;                                       // mu_
  std::thread expiry_;

  std::mutex listeners_mu_;
  std::map<uint64_t, std::shared_ptr<Listener>> listeners_;  // guarded by listeners_mu_
  uint64_t next_listener_ = 1;                               // guarded by listeners_mu_
};

}  // namespace toolgate::guardian

#endif  // TOOLGATE_DAEMON_GUARDIAN_GUARDIAN_H_
