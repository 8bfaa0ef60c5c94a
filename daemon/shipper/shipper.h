// Shipper: sends spooled events to the upstream POST /v1/events with libcurl (one multi
// handle on one thread, kept-alive connections, gzip, TLS verified), and reports each
// outcome back to the spool: delivered events are acked, refused ones dead-lettered.
//
// Retries (408, 429, 5xx, transport errors) pause all sending for a backoff with full jitter
// (or Retry-After, whichever is longer) and resend the same bytes, so the upstream sees the same
// eventId. It never gives up on a retryable failure: the spool bounds what waits.
//
// Thread-safe: public methods may be called from any thread; the work runs on its own thread.
#ifndef TOOLGATE_DAEMON_SHIPPER_SHIPPER_H_
#define TOOLGATE_DAEMON_SHIPPER_SHIPPER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "daemon/common/clock.h"
#include "daemon/config/config.h"
#include "daemon/spool/spool.h"

namespace toolgate::shipper {

struct ShipperStats {
  uint64_t events_shipped = 0;
  uint64_t requests_ok = 0;
  uint64_t requests_retried = 0;
  uint64_t events_dead_lettered = 0;
  uint64_t in_flight = 0;
  std::string state;  // ok | retrying | paused | idle
  std::string last_error;
};

class Shipper {
 public:
  Shipper(config::UpstreamOptions upstream, config::BatchOptions batch, spool::Spool* spool,
          Clock* clock, std::string user_agent);
  ~Shipper();

  absl::Status Start();
  // New events are durable: look for work now.
  void Wake();
  // Sends partial batches now instead of waiting for max_delay.
  void RequestFlush();
  // Keeps shipping until the queue is empty or `deadline`, then stops. What is left stays in
  // the spool.
  void Stop(SteadyTime deadline);

  ShipperStats stats() const;

 private:
  class Loop;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

}  // namespace toolgate::shipper

#endif  // TOOLGATE_DAEMON_SHIPPER_SHIPPER_H_
