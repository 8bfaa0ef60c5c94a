// Notifier: agent execution webhooks (kaplaix-api.md, "Webhook signatures"), signed, retried
// and durable.
//
// Signals come in through two cheap hooks: OnEvents (the session_start, session_end and
// identity events of a request, once they are durable; called on the spool's writer thread)
// and OnPendingAction (the guardian created an action that waits for a human; called on the
// creating thread). Both only append to a bounded queue and wake the notifier's thread
// (`tg-notifier`); a full queue drops the signal and counts it (`dropped`), it never blocks.
//
// On its thread the notifier turns each signal into one delivery per subscribed endpoint
// (session_start → agent_execution_started, session_end completed → _ended, failed → _failed,
// a pending action → _handoff), stores the deliveries in notifier.db before the first attempt,
// and sends them with libcurl (one multi handle, up to max_in_flight at once, `timeout` each):
//   POST <url>  Content-Type: application/json
//               X-Webhook-Event: <event>
//               X-Webhook-Signature: <hex HMAC-SHA256(endpoint secret, body)>
//               X-Idempotency-Key: <uuid, one per delivery, the same on every retry>
// A 2xx removes the delivery; anything else is retried after each delay of `retry_schedule`
// (10 s, 40 s, 90 s), then the delivery is dead: logged, counted, kept aside. Deliveries still
// pending at a restart are sent again. Between a signal's enqueue and its store (normally well
// under a millisecond) a crash loses it; deliveries are not ordered between themselves.
//
// Thread-safe: the hooks and stats() may be called from any thread; everything else runs on the
// notifier's thread (or on the caller's, in tests, through RunOnce).
#ifndef TOOLGATE_DAEMON_NOTIFIER_NOTIFIER_H_
#define TOOLGATE_DAEMON_NOTIFIER_NOTIFIER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/common/clock.h"
#include "daemon/config/config.h"
#include "toolgate/v1/events.pb.h"
#include "toolgate/v1/guardian.pb.h"

namespace toolgate::notifier {

struct NotifierStats {
  uint64_t delivered = 0;     // deliveries answered 2xx
  uint64_t retried = 0;       // failed attempts that will be tried again
  uint64_t failed = 0;        // deliveries given up after the last retry (dead)
  uint64_t pending = 0;       // stored or queued, not yet delivered nor dead
  uint64_t dropped = 0;       // signals lost because the queue was full
  uint64_t store_errors = 0;  // notifier.db writes that failed (the delivery is still tried)
};

class Notifier {
 public:
  // Opens (or creates) the store at `db_path` and loads the deliveries left pending by an
  // earlier run. `options.endpoint_list` and `options.retry_schedule` must be filled (config's
  // Validate does).
  static absl::StatusOr<std::unique_ptr<Notifier>> Open(config::NotifierOptions options,
                                                        const std::string& db_path, Clock* clock,
                                                        std::string user_agent);
  ~Notifier();

  // Starts the `tg-notifier` thread.
  void Start();
  // Stores what is queued, gives in-flight deliveries until `deadline`, and stops the thread.
  // Whatever is not delivered stays in notifier.db for the next start.
  void Stop(SteadyTime deadline);

  // Hooks: O(1) appends, never block. Events of other kinds are ignored.
  void OnEvents(std::vector<toolgate::v1::Event> events);
  void OnPendingAction(const toolgate::v1::PendingAction& action);

  // One turn of the loop on the calling thread, waiting at most `max_wait` for the network:
  // for tests that drive time with a FakeClock (never together with Start).
  void RunOnce(std::chrono::milliseconds max_wait);

  NotifierStats stats() const;

  class Loop;

 private:
  explicit Notifier(std::unique_ptr<Loop> loop);
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

}  // namespace toolgate::notifier

#endif  // TOOLGATE_DAEMON_NOTIFIER_NOTIFIER_H_
