// toolgated: parses flags, loads the configuration, runs the daemon, maps the result to an
// exit code (0 clean stop, 1 runtime failure, 2 bad flags or configuration).
#include <curl/curl.h>
#include <signal.h>

#include <cstdio>
#include <map>
#include <string>

#include "absl/synchronization/mutex.h"
#include "daemon/app/daemon.h"
#include "daemon/common/log.h"
#include "daemon/config/config.h"

extern char** environ;

// jemalloc's tuning, read at start-up: two arenas are enough for a daemon whose hot threads are
// few, and returning dirty pages within 0.4 s keeps the resident set small under a burst
// (bench/run audit: peak RSS 1–3 MiB lower than with 1 s, CPU per event no higher; 0.1 s
// saved more memory but cost 6–16 % more CPU per event; docs/performance.md).
extern "C" const char* malloc_conf;
const char* malloc_conf = "narenas:2,dirty_decay_ms:400,muzzy_decay_ms:0";

int main(int argc, char** argv) {
  using namespace toolgate;
  // Debian builds Abseil without NDEBUG, so every absl::Mutex (gRPC's locks) keeps a global
  // lock-order graph for deadlock detection (measured: 2.4 % of the daemon's samples under
  // Check load). That is a debugging aid for Abseil's users, not something a daemon runs with.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  auto flags = config::ParseFlags(argc, argv);
  if (!flags.ok()) {
    std::fprintf(stderr, "toolgated: %s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->help) {
    std::fputs(config::FlagsHelp().c_str(), stdout);
    return 0;
  }
  if (flags->version) {
    std::printf("toolgated %s\n", app::kVersion);
    return 0;
  }
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  auto cfg = config::Load(*flags, env);
  if (!cfg.ok()) {
    std::fprintf(stderr, "toolgated: %s\n", std::string(cfg.status().message()).c_str());
    return 2;
  }
  if (flags->print_config) {
    std::fputs(config::Dump(*cfg).c_str(), stdout);
    return 0;
  }
  LogLevel level;
  if (ParseLogLevel(cfg->log_level, &level)) SetLogLevel(level);

  // Signals are taken by Daemon::Run with sigwait; block them before any thread starts.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);

  app::Daemon daemon(*std::move(cfg));
  if (absl::Status s = daemon.Start(); !s.ok()) {
    LogError("cannot start", {{"error", std::string(s.message())}});
    // A policy that does not compile is a configuration error, like the rest of the config.
    return absl::IsInvalidArgument(s) ? 2 : 1;
  }
  daemon.Run();
  return 0;
}
