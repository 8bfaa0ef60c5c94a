// Daemon: builds the pipeline from a Config and runs it. The one place where stages meet.
//
//   ingest (gRPC) → normalize → [spool writer: chain → SQLite group commit] → batcher →
//   shipper (libcurl) → upstream.      Admin, health and reflection on the same server;
//   /metrics and /healthz on a loopback HTTP port.
//
// Thread-compatible: Start, Run and Shutdown are called from the main thread.
#ifndef TOOLGATE_DAEMON_APP_DAEMON_H_
#define TOOLGATE_DAEMON_APP_DAEMON_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "daemon/config/config.h"

namespace toolgate::app {

inline constexpr char kVersion[] = "0.1.0";

class Daemon {
 public:
  explicit Daemon(config::Config config);
  ~Daemon();

  // Opens the store, starts the shipper and the servers. Errors are fatal at start-up.
  absl::Status Start();
  // Blocks until SIGTERM or SIGINT (SIGHUP reloads policies), then shuts down: stops taking
  // requests, drains in-flight work within shutdown_timeout, leaves the rest in the spool.
  // The calling thread must have blocked those signals before any thread was created.
  void Run();
  void Shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace toolgate::app

#endif  // TOOLGATE_DAEMON_APP_DAEMON_H_
