// DeliveryStore: the notifier's durable state in its own SQLite file (notifier.db, WAL,
// synchronous=FULL: a delivery is on disk before its first attempt, so a restart or a crash
// sends it again, with the same idempotency key).
//
// Tables: deliveries (pending and dead webhooks, body as sent, attempts, next attempt time),
// executions (when each session started, for the started_at of later webhooks) and agents
// (names learnt from identity events). Secrets are never stored: a body is signed when sent.
//
// Not thread-safe: used only by the notifier's thread.
#ifndef TOOLGATE_DAEMON_NOTIFIER_DELIVERY_STORE_H_
#define TOOLGATE_DAEMON_NOTIFIER_DELIVERY_STORE_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace toolgate::notifier {

struct Delivery {
  int64_t id = 0;               // assigned by Insert
  std::string idempotency_key;  // X-Idempotency-Key: one per delivery, the same on every retry
  std::string url;              // the endpoint it goes to
  std::string event;            // X-Webhook-Event
  std::string body;             // the exact bytes sent (and signed)
  int attempts = 0;             // made so far
  int64_t next_ms = 0;          // next attempt, Unix milliseconds
  int64_t created_ms = 0;
  std::string last_error;
};

class DeliveryStore {
 public:
  // Dead deliveries kept for inspection; older ones are deleted.
  static constexpr int kMaxDeadKept = 1000;

  static absl::StatusOr<std::unique_ptr<DeliveryStore>> Open(const std::string& path);
  ~DeliveryStore();

  // Stores `deliveries` in one transaction and sets their ids.
  absl::Status Insert(std::vector<Delivery>* deliveries);
  // After a failed attempt that will be retried.
  absl::Status Reschedule(const Delivery& d);
  // After a 2xx.
  absl::Status Remove(int64_t id);
  // After the last failed attempt: kept aside (the newest kMaxDeadKept).
  absl::Status MarkDead(const Delivery& d);
  // Every delivery still to be sent, oldest first.
  absl::StatusOr<std::vector<Delivery>> LoadPending();
  int64_t DeadCount();

  // Session memory: when a session started, and agents' names. Rows of sessions that never
  // ended are dropped after `max_age_ms` (PruneExecutions).
  absl::Status RememberStart(const std::string& agent_id, const std::string& session_id,
                             const std::string& started_at, int64_t now_ms);
  std::string StartedAt(const std::string& agent_id, const std::string& session_id);
  absl::Status ForgetExecution(const std::string& agent_id, const std::string& session_id);
  absl::Status PruneExecutions(int64_t older_than_ms);
  absl::Status SetAgentName(const std::string& agent_id, const std::string& name);
  std::string AgentName(const std::string& agent_id);

 private:
  explicit DeliveryStore(sqlite3* db) : db_(db) {}
  absl::Status Init();
  absl::Status Exec(const char* what, const char* sql);
  std::string Error(const char* what) const;

  sqlite3* const db_;
};

}  // namespace toolgate::notifier

#endif  // TOOLGATE_DAEMON_NOTIFIER_DELIVERY_STORE_H_
