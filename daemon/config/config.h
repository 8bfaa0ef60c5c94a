// Config: every option of toolgated, its default, and where it can be set.
//
// Sources, later ones winning: built-in defaults < YAML file (--config / TOOLGATE_CONFIG) <
// environment (TOOLGATE_<PATH>, e.g. TOOLGATE_UPSTREAM_URL for upstream.url) < flags.
// Everything is validated once, in Load(); an error names the key and the rule.
// Secrets (API key, HMAC key) are read from files or the environment, never from flags,
// and never appear in Dump().
#ifndef TOOLGATE_DAEMON_CONFIG_CONFIG_H_
#define TOOLGATE_DAEMON_CONFIG_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace toolgate::config {

using Millis = std::chrono::milliseconds;

struct IngestOptions {
  uint64_t max_argument_bytes = 1 << 20;  // arguments_json above this → INVALID_ARGUMENT
  uint64_t max_request_bytes = 8 << 20;   // gRPC max receive message size
  uint64_t max_events_per_request = 10000;
  uint64_t stream_window = 64;  // unacknowledged batches per stream before reads pause
};

struct HashOptions {
  std::string hmac_key_file;  // when set, argumentsHash = HMAC-SHA256(key, canonical args)
  std::string hmac_key;       // read from hmac_key_file or TOOLGATE_HMAC_KEY; never printed
};

struct SpoolOptions {
  uint64_t max_bytes = 1ull << 30;                    // unshipped bytes before appends are refused
  Millis retry_after{1000};                           // hint given with RESOURCE_EXHAUSTED
  uint64_t commit_max_events = 16384;                 // events per group commit at most
  bool sync = true;                                   // fsync each commit (durable acks)
  uint64_t retention_max_bytes = 1ull << 30;          // standalone: oldest events evicted beyond
  Millis retention_max_age{30LL * 24 * 3600 * 1000};  // standalone: older events evicted
  // Free disk space (the filesystem's, plus free pages inside the spool) below which appends
  // get RESOURCE_EXHAUSTED: the rest is kept for the deletes of shipped events and for
  // checkpoints, which a completely full disk would block. 0 = only SQLITE_FULL stops appends.
  uint64_t min_free_disk = 64ull << 20;
};

struct BatchOptions {
  uint64_t max_events = 500;
  uint64_t max_bytes = 1 << 20;
  Millis max_delay{200};
};

struct UpstreamOptions {
  std::string url;                       // empty = standalone mode
  std::string api_key_file;              // or TOOLGATE_API_KEY
  std::string api_key;                   // never printed
  std::string ingest_format = "single";  // single | array
  Millis timeout{10000};
  Millis connect_timeout{5000};
  uint64_t max_in_flight = 8;
  std::string compression = "gzip";  // gzip | none (bodies of 1 KiB or more)
  std::string ca_file;
  bool insecure_skip_verify = false;
  Millis backoff_initial{500};
  Millis backoff_max{30000};
  Millis auth_failure_pause{60000};  // after a 401/403, shipping pauses this long
};

struct PolicyOptions {
  // local: rules from `file`; sync: rules from the upstream's GET /v1/policies, evaluated
  // locally; remote: every Check asks the upstream's POST /v1/policies/check.
  std::string mode = "local";
  std::string file;              // local policy (YAML/JSON); empty = no policy: Check allows
  Millis reload_interval{1000};  // how often the file is checked for changes; 0 = only SIGHUP
  bool record_checks = true;     // every Check becomes an `approval` audit event
  Millis sync_interval{60000};   // sync mode: how often GET /v1/policies is asked
  Millis remote_timeout{1000};   // remote mode: one POST /v1/policies/check at most
  std::string failure_mode = "closed";     // remote mode, no verdict: open (allow) | closed (deny)
  Millis remote_cache_ttl{5000};           // remote mode: ALLOW/DENY verdicts reused; 0 = off
  uint64_t breaker_failures = 3;           // consecutive failures that open the breaker
  Millis breaker_reset{10000};             // open this long before one probe (half-open)
  Millis remote_approval_timeout{120000};  // remote REQUIRE_APPROVAL held this long, then deny
};

struct GuardianOptions {
  // With an upstream: how often decisions of upstream-created pending actions are polled
  // (GET /v1/guardian/pending-actions); 0 = never.
  Millis poll_interval{3000};
};

// One receiver of agent execution webhooks (docs/notifier.md).
struct WebhookEndpoint {
  std::string url;                  // http:// or https://
  std::vector<std::string> events;  // agent_execution_started|_ended|_failed|_handoff; empty = all
  std::string secret_file;          // signing secret; else the variable named by secret_env,
  std::string secret_env;           // else TOOLGATE_NOTIFIER_SECRET
  std::string secret;               // never printed
};

struct NotifierOptions {
  // Outbound webhooks: a YAML list of {url, events, secret_file | secret_env}; "[]" = off.
  std::string endpoints = "[]";
  std::vector<WebhookEndpoint> endpoint_list;  // `endpoints` parsed, secrets read (Validate)
  std::string retry_delays = "10s,40s,90s";    // waits before each retry of a failed delivery
  std::vector<Millis> retry_schedule{Millis(10000), Millis(40000), Millis(90000)};  // parsed
  Millis timeout{5000};         // one delivery attempt, connection included
  uint64_t queue_size = 10000;  // signals waiting for the notifier's thread; beyond, dropped
  uint64_t max_in_flight = 8;   // deliveries sent at once
  // Inbound upstream webhooks (POST /v1/webhooks/kaplaix, x-kaplaix-signature): the channel's
  // secret, or TOOLGATE_NOTIFIER_INBOUND_SECRET; unset = that endpoint answers 404.
  std::string inbound_secret_file;
  std::string inbound_secret;  // never printed
};

struct Config {
  std::string listen = "127.0.0.1:7470";
  std::string socket;  // default: see DefaultSocketPath()
  std::string socket_mode = "0660";
  std::string http_listen = "127.0.0.1:7471";
  std::string admin_key_file;  // local HTTP admin endpoints; or TOOLGATE_ADMIN_KEY
  std::string admin_key;       // never printed
  std::string data_dir;        // default: see DefaultDataDir()
  std::string log_level = "info";
  Millis shutdown_timeout{10000};
  IngestOptions ingest;
  HashOptions hash;
  SpoolOptions spool;
  BatchOptions batch;
  UpstreamOptions upstream;
  PolicyOptions policy;
  GuardianOptions guardian;
  NotifierOptions notifier;
  std::string config_file;  // where the file came from, if any

  bool standalone() const { return upstream.url.empty(); }
};

// Parsed command line of toolgated.
struct Flags {
  bool help = false;
  bool version = false;
  bool print_config = false;
  std::string config_file;
  std::map<std::string, std::string> values;  // option path → value
};

absl::StatusOr<Flags> ParseFlags(int argc, const char* const* argv);
std::string FlagsHelp();

// Defaults, config file, environment, flags; then validation and secret files.
absl::StatusOr<Config> Load(const Flags& flags, const std::map<std::string, std::string>& env);

// Loads YAML text over `cfg` (for tests and for Load).
absl::Status ApplyYaml(const std::string& yaml_text, Config* cfg);
// Sets one option by path ("upstream.url") from its text form.
absl::Status Set(const std::string& path, const std::string& value, Config* cfg);
// Checks cross-field rules and reads secret files.
absl::Status Validate(Config* cfg, const std::map<std::string, std::string>& env);

// The effective configuration as YAML, secrets redacted; and the documented reference.
std::string Dump(const Config& cfg);
std::string Reference();
// Every option's path, in reference order ("listen", …, "upstream.url", …).
std::vector<std::string> OptionPaths();

std::string DefaultSocketPath(const std::map<std::string, std::string>& env);
std::string DefaultDataDir(const std::map<std::string, std::string>& env);

// "10s", "250ms", "5m", "1h", "2d" or a bare number of milliseconds.
absl::StatusOr<Millis> ParseDuration(const std::string& text);
// "1048576", "64KiB", "16MiB", "1GiB".
absl::StatusOr<uint64_t> ParseSize(const std::string& text);

}  // namespace toolgate::config

#endif  // TOOLGATE_DAEMON_CONFIG_CONFIG_H_
