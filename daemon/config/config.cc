#include "daemon/config/config.h"

#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace toolgate::config {
namespace {

// kList: a YAML list, kept as its flow-style text (notifier.endpoints).
enum class Kind { kString, kSize, kCount, kBool, kDuration, kEnum, kList };

// One option: its path in the YAML file, how to read it, and its documentation.
struct Option {
  const char* path;
  Kind kind;
  const char* help;
  std::vector<std::string> choices;  // kEnum only
  std::function<std::string*(Config&)> str;
  std::function<uint64_t*(Config&)> num;
  std::function<bool*(Config&)> flag;
  std::function<Millis*(Config&)> dur;
};

Option Str(const char* path, std::string Config::*m, const char* help) {
  return {path, Kind::kString, help, {}, [m](Config& c) { return &(c.*m); }, {}, {}, {}};
}
template <typename S>
Option SubStr(const char* path, S Config::*s, std::string S::*m, const char* help,
              std::vector<std::string> choices = {}) {
  return {path,
          choices.empty() ? Kind::kString : Kind::kEnum,
          help,
          choices,
          [s, m](Config& c) { return &((c.*s).*m); },
          {},
          {},
          {}};
}
template <typename S>
Option SubNum(const char* path, S Config::*s, uint64_t S::*m, Kind kind, const char* help) {
  return {path, kind, help, {}, {}, [s, m](Config& c) { return &((c.*s).*m); }, {}, {}};
}
template <typename S>
Option SubBool(const char* path, S Config::*s, bool S::*m, const char* help) {
  return {path, Kind::kBool, help, {}, {}, {}, [s, m](Config& c) { return &((c.*s).*m); }, {}};
}
template <typename S>
Option SubDur(const char* path, S Config::*s, Millis S::*m, const char* help) {
  return {path, Kind::kDuration, help, {}, {}, {}, {}, [s, m](Config& c) { return &((c.*s).*m); }};
}

const std::vector<Option>& Options() {
  static const std::vector<Option>* options = new std::vector<Option>{
      Str("listen", &Config::listen, "gRPC on TCP, HOST:PORT; empty disables TCP"),
      Str("socket", &Config::socket,
          "gRPC on a Unix socket; default $RUNTIME_DIRECTORY/toolgate.sock, "
          "/run/toolgate/toolgate.sock or $XDG_RUNTIME_DIR/toolgate/toolgate.sock; "
          "\"none\" disables"),
      Str("socket_mode", &Config::socket_mode, "permissions of the Unix socket (octal)"),
      Str("http_listen", &Config::http_listen, "/metrics and /healthz, HOST:PORT; empty disables"),
      Str("admin_key_file", &Config::admin_key_file,
          "key for the local HTTP admin endpoints (/v1/guardian/...), or TOOLGATE_ADMIN_KEY; "
          "unset = those endpoints are off"),
      Str("data_dir", &Config::data_dir,
          "spool and state; default $STATE_DIRECTORY, /var/lib/toolgate or "
          "$XDG_STATE_HOME/toolgate"),
      {"log_level",
       Kind::kEnum,
       "debug | info | warn | error",
       {"debug", "info", "warn", "error"},
       [](Config& c) { return &c.log_level; },
       {},
       {},
       {}},
      {"shutdown_timeout",
       Kind::kDuration,
       "SIGTERM: time to drain before exiting",
       {},
       {},
       {},
       {},
       [](Config& c) { return &c.shutdown_timeout; }},
      SubNum("ingest.max_argument_bytes", &Config::ingest, &IngestOptions::max_argument_bytes,
             Kind::kSize, "largest arguments_json accepted"),
      SubNum("ingest.max_request_bytes", &Config::ingest, &IngestOptions::max_request_bytes,
             Kind::kSize, "largest gRPC message accepted"),
      SubNum("ingest.max_events_per_request", &Config::ingest,
             &IngestOptions::max_events_per_request, Kind::kCount,
             "events in one Record call or stream batch"),
      SubNum("ingest.stream_window", &Config::ingest, &IngestOptions::stream_window, Kind::kCount,
             "unacknowledged batches per stream before the daemon stops reading it"),
      SubStr("hash.hmac_key_file", &Config::hash, &HashOptions::hmac_key_file,
             "key file: argumentsHash becomes HMAC-SHA256 (also TOOLGATE_HMAC_KEY)"),
      SubNum("spool.max_bytes", &Config::spool, &SpoolOptions::max_bytes, Kind::kSize,
             "unshipped bytes kept; beyond, appends get RESOURCE_EXHAUSTED"),
      SubDur("spool.retry_after", &Config::spool, &SpoolOptions::retry_after,
             "retry hint given with RESOURCE_EXHAUSTED"),
      SubNum("spool.commit_max_events", &Config::spool, &SpoolOptions::commit_max_events,
             Kind::kCount, "events in one group commit at most"),
      SubBool("spool.sync", &Config::spool, &SpoolOptions::sync,
              "fsync every commit before acknowledging (false loses acked events on power loss)"),
      SubNum("spool.retention_max_bytes", &Config::spool, &SpoolOptions::retention_max_bytes,
             Kind::kSize, "standalone: events kept locally, oldest evicted beyond"),
      SubDur("spool.retention_max_age", &Config::spool, &SpoolOptions::retention_max_age,
             "standalone: events older than this are evicted (0 = no age limit)"),
      SubNum("spool.min_free_disk", &Config::spool, &SpoolOptions::min_free_disk, Kind::kSize,
             "free disk space kept for acks and checkpoints; below it appends get "
             "RESOURCE_EXHAUSTED (0 = none)"),
      SubNum("batch.max_events", &Config::batch, &BatchOptions::max_events, Kind::kCount,
             "events per upstream batch"),
      SubNum("batch.max_bytes", &Config::batch, &BatchOptions::max_bytes, Kind::kSize,
             "bytes per upstream batch"),
      SubDur("batch.max_delay", &Config::batch, &BatchOptions::max_delay,
             "longest wait for a batch to fill"),
      SubStr("upstream.url", &Config::upstream, &UpstreamOptions::url,
             "base URL of the audit API, e.g. https://api.kaplaix.com; empty = standalone"),
      SubStr("upstream.api_key_file", &Config::upstream, &UpstreamOptions::api_key_file,
             "file holding the API key (or TOOLGATE_API_KEY); must not be world-readable"),
      SubStr("upstream.ingest_format", &Config::upstream, &UpstreamOptions::ingest_format,
             "single: one event per request | array: a batch per request", {"single", "array"}),
      SubDur("upstream.timeout", &Config::upstream, &UpstreamOptions::timeout,
             "whole request timeout"),
      SubDur("upstream.connect_timeout", &Config::upstream, &UpstreamOptions::connect_timeout,
             "connection timeout"),
      SubNum("upstream.max_in_flight", &Config::upstream, &UpstreamOptions::max_in_flight,
             Kind::kCount, "concurrent requests"),
      SubStr("upstream.compression", &Config::upstream, &UpstreamOptions::compression,
             "gzip | none (gzip applies to bodies of 1 KiB or more)", {"gzip", "none"}),
      SubStr("upstream.ca_file", &Config::upstream, &UpstreamOptions::ca_file,
             "CA bundle to verify the upstream with; default the system's"),
      SubBool("upstream.insecure_skip_verify", &Config::upstream,
              &UpstreamOptions::insecure_skip_verify,
              "do not verify TLS certificates (logs a warning; never in production)"),
      SubDur("upstream.backoff_initial", &Config::upstream, &UpstreamOptions::backoff_initial,
             "first retry delay bound (full jitter, doubling)"),
      SubDur("upstream.backoff_max", &Config::upstream, &UpstreamOptions::backoff_max,
             "largest retry delay bound"),
      SubDur("upstream.auth_failure_pause", &Config::upstream, &UpstreamOptions::auth_failure_pause,
             "pause of shipping after 401/403 (events are kept)"),
      SubStr("policy.mode", &Config::policy, &PolicyOptions::mode,
             "local: rules from policy.file | sync: rules from the upstream's GET /v1/policies | "
             "remote: every Check asks POST /v1/policies/check",
             {"local", "sync", "remote"}),
      SubStr("policy.file", &Config::policy, &PolicyOptions::file,
             "local policy file (YAML or JSON, docs/policy.md); unset = Check allows everything"),
      SubDur("policy.reload_interval", &Config::policy, &PolicyOptions::reload_interval,
             "how often the policy file is checked for changes (0 = only on SIGHUP / reload)"),
      SubBool("policy.record_checks", &Config::policy, &PolicyOptions::record_checks,
              "record every Check as an approval event in the session's chain"),
      SubDur("policy.sync_interval", &Config::policy, &PolicyOptions::sync_interval,
             "sync mode: how often the upstream's policies are fetched"),
      SubDur("policy.remote_timeout", &Config::policy, &PolicyOptions::remote_timeout,
             "remote mode: timeout of one POST /v1/policies/check"),
      SubStr(
          "policy.failure_mode", &Config::policy, &PolicyOptions::failure_mode,
          "remote mode with no verdict, sync mode with no rules yet: open (allow) | closed (deny)",
          {"open", "closed"}),
      SubDur("policy.remote_cache_ttl", &Config::policy, &PolicyOptions::remote_cache_ttl,
             "remote mode: how long an ALLOW/DENY verdict is reused for the same four fields"),
      SubNum("policy.breaker_failures", &Config::policy, &PolicyOptions::breaker_failures,
             Kind::kCount, "remote mode: consecutive failures that open the circuit breaker"),
      SubDur("policy.breaker_reset", &Config::policy, &PolicyOptions::breaker_reset,
             "remote mode: how long the breaker stays open before one probe"),
      SubDur("policy.remote_approval_timeout", &Config::policy,
             &PolicyOptions::remote_approval_timeout,
             "remote mode: how long an upstream REQUIRE_APPROVAL is held before it expires (deny)"),
      SubDur("guardian.poll_interval", &Config::guardian, &GuardianOptions::poll_interval,
             "with an upstream: how often decisions of upstream pending actions are polled"),
      {"notifier.endpoints",
       Kind::kList,
       "webhook receivers: a list of {url, events (default all), secret_file | secret_env} "
       "(docs/notifier.md); [] = no webhooks",
       {},
       [](Config& c) { return &c.notifier.endpoints; },
       {},
       {},
       {}},
      SubStr("notifier.retry_delays", &Config::notifier, &NotifierOptions::retry_delays,
             "waits before each retry of a failed webhook, comma-separated; then it is dead"),
      SubDur("notifier.timeout", &Config::notifier, &NotifierOptions::timeout,
             "one webhook attempt, connection included"),
      SubNum("notifier.queue_size", &Config::notifier, &NotifierOptions::queue_size, Kind::kCount,
             "webhook signals waiting for the notifier's thread; beyond, dropped and counted"),
      SubNum("notifier.max_in_flight", &Config::notifier, &NotifierOptions::max_in_flight,
             Kind::kCount, "webhook deliveries sent at once"),
      SubStr("notifier.inbound_secret_file", &Config::notifier,
             &NotifierOptions::inbound_secret_file,
             "secret of inbound upstream webhooks (x-kaplaix-signature), or "
             "TOOLGATE_NOTIFIER_INBOUND_SECRET; unset = POST /v1/webhooks/kaplaix answers 404"),
  };
  return *options;
}

const Option* Find(const std::string& path) {
  for (const Option& o : Options()) {
    if (path == o.path) return &o;
  }
  return nullptr;
}

std::string Trim(std::string s) {
  auto ws = [](unsigned char c) { return std::isspace(c); };
  s.erase(s.begin(), std::find_if_not(s.begin(), s.end(), ws));
  s.erase(std::find_if_not(s.rbegin(), s.rend(), ws).base(), s.end());
  return s;
}

absl::StatusOr<uint64_t> ParseCount(const std::string& text) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), ::isdigit) || text.size() > 19) {
    return absl::InvalidArgumentError("expected a non-negative integer");
  }
  return std::stoull(text);
}

std::string ShowValue(const Option& o, Config& cfg) {
  switch (o.kind) {
    case Kind::kString:
    case Kind::kEnum:
      return "\"" + *o.str(cfg) + "\"";
    case Kind::kSize:
    case Kind::kCount:
      return std::to_string(*o.num(cfg));
    case Kind::kBool:
      return *o.flag(cfg) ? "true" : "false";
    case Kind::kDuration:
      return std::to_string(o.dur(cfg)->count()) + "ms";
    case Kind::kList:
      return *o.str(cfg);
  }
  return "";
}

// A kList option from a YAML node: a list (or null, the empty list), kept as flow-style text.
absl::Status SetList(const Option& o, const YAML::Node& node, Config* cfg) {
  if (!node.IsSequence() && !node.IsNull()) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", o.path, ": expected a list"));
  }
  if (node.IsNull() || node.size() == 0) {
    *o.str(*cfg) = "[]";
    return absl::OkStatus();
  }
  YAML::Emitter e;
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << node;
  *o.str(*cfg) = e.c_str();
  return absl::OkStatus();
}

absl::Status ApplyNode(const YAML::Node& node, const std::string& prefix, Config* cfg) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", prefix.empty() ? "the file" : prefix, ": expected a mapping"));
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    if (kv.second.IsMap()) {
      bool is_section = false;
      for (const Option& o : Options()) {
        if (std::string(o.path).rfind(path + ".", 0) == 0) is_section = true;
      }
      if (!is_section) {
        return absl::InvalidArgumentError(absl::StrCat("config: unknown key '", path, "'"));
      }
      if (absl::Status s = ApplyNode(kv.second, path, cfg); !s.ok()) return s;
      continue;
    }
    if (const Option* o = Find(path); o != nullptr && o->kind == Kind::kList) {
      if (absl::Status s = SetList(*o, kv.second, cfg); !s.ok()) return s;
      continue;
    }
    if (!kv.second.IsScalar() && !kv.second.IsNull()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: ", path, ": expected a single value, not a list"));
    }
    if (Find(path) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("config: unknown key '", path, "'"));
    }
    const std::string value = kv.second.IsNull() ? "" : kv.second.Scalar();
    if (absl::Status s = Set(path, value, cfg); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& key, const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", key, ": cannot read '", path, "': ", std::strerror(errno)));
  }
  if (st.st_mode & S_IROTH) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: ", key, ": '", path, "' is world-readable; chmod o-r it (secrets must not be)"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", key, ": cannot read '", path, "'"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string v = Trim(ss.str());
  if (v.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", key, ": '", path, "' is empty"));
  }
  return v;
}

std::string Get(const std::map<std::string, std::string>& env, const char* name) {
  auto it = env.find(name);
  return it == env.end() ? "" : it->second;
}

bool ValidHostPort(const std::string& s) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  const std::string port = s.substr(colon + 1);
  auto n = ParseCount(port);
  return n.ok() && *n <= 65535;
}

// notifier.*: the endpoint list parsed and its secrets read, the retry schedule parsed.
absl::Status ValidateNotifier(NotifierOptions* n, const std::map<std::string, std::string>& env) {
  auto bad = [](const std::string& key, const std::string& rule) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", key, ": ", rule));
  };
  static const char* const kEvents[] = {"agent_execution_started", "agent_execution_ended",
                                        "agent_execution_failed", "agent_execution_handoff"};
  n->endpoint_list.clear();
  YAML::Node root;
  try {
    root = YAML::Load(n->endpoints);
  } catch (const YAML::Exception& e) {
    return bad("notifier.endpoints", "not valid YAML: " + e.msg);
  }
  if (!root.IsNull() && !root.IsSequence()) return bad("notifier.endpoints", "expected a list");
  for (size_t i = 0; root.IsSequence() && i < root.size(); ++i) {
    const std::string key = absl::StrCat("notifier.endpoints[", i, "]");
    const YAML::Node node = root[i];
    if (!node.IsMap()) {
      return bad(key, "expected a mapping with url, events, secret_file or secret_env");
    }
    WebhookEndpoint ep;
    try {
      for (const auto& kv : node) {
        const std::string k = kv.first.as<std::string>();
        const YAML::Node& v = kv.second;
        if (k == "events") {
          if (v.IsScalar()) {
            ep.events.push_back(v.as<std::string>());
          } else if (v.IsSequence()) {
            for (const auto& e : v) ep.events.push_back(e.as<std::string>());
          } else {
            return bad(key + ".events", "expected a list of event names");
          }
          continue;
        }
        if (!v.IsScalar()) return bad(key + "." + k, "expected a single value");
        if (k == "url") {
          ep.url = Trim(v.as<std::string>());
        } else if (k == "secret_file") {
          ep.secret_file = v.as<std::string>();
        } else if (k == "secret_env") {
          ep.secret_env = v.as<std::string>();
        } else if (k == "secret") {
          return bad(key + ".secret",
                     "secrets are not accepted in the configuration; use secret_file or "
                     "secret_env");
        } else {
          return bad(key, "unknown key '" + k + "' (url, events, secret_file, secret_env)");
        }
      }
    } catch (const YAML::Exception& e) {
      return bad(key, e.msg);
    }
    if (ep.url.rfind("http://", 0) != 0 && ep.url.rfind("https://", 0) != 0) {
      return bad(key + ".url", "must start with http:// or https://, got '" + ep.url + "'");
    }
    for (const std::string& e : ep.events) {
      if (std::find(std::begin(kEvents), std::end(kEvents), e) == std::end(kEvents)) {
        return bad(key + ".events", "unknown event '" + e +
                                        "' (agent_execution_started, agent_execution_ended, "
                                        "agent_execution_failed, agent_execution_handoff)");
      }
    }
    if (!ep.secret_file.empty()) {
      auto secret = ReadSecretFile(key + ".secret_file", ep.secret_file);
      if (!secret.ok()) return secret.status();
      ep.secret = *secret;
    } else if (!ep.secret_env.empty()) {
      ep.secret = Get(env, ep.secret_env.c_str());
      if (ep.secret.empty()) {
        return bad(key + ".secret_env",
                   "the environment variable " + ep.secret_env + " is unset or empty");
      }
    } else {
      ep.secret = Get(env, "TOOLGATE_NOTIFIER_SECRET");
      if (ep.secret.empty()) {
        return bad(key,
                   "a webhook needs a signing secret: secret_file, secret_env or "
                   "TOOLGATE_NOTIFIER_SECRET");
      }
    }
    n->endpoint_list.push_back(std::move(ep));
  }
  n->retry_schedule.clear();
  std::stringstream delays(n->retry_delays);
  for (std::string part; std::getline(delays, part, ',');) {
    if (Trim(part).empty()) continue;
    auto d = ParseDuration(part);
    if (!d.ok() || d->count() <= 0) {
      return bad("notifier.retry_delays",
                 "expected positive durations separated by commas, such as 10s,40s,90s (got '" +
                     n->retry_delays + "')");
    }
    n->retry_schedule.push_back(*d);
  }
  if (n->retry_schedule.size() > 20) return bad("notifier.retry_delays", "at most 20 retries");
  if (n->timeout.count() <= 0) return bad("notifier.timeout", "must be > 0");
  if (n->queue_size == 0) return bad("notifier.queue_size", "must be > 0");
  if (n->max_in_flight == 0 || n->max_in_flight > 256) {
    return bad("notifier.max_in_flight", "must be between 1 and 256");
  }
  if (!n->inbound_secret_file.empty()) {
    auto secret = ReadSecretFile("notifier.inbound_secret_file", n->inbound_secret_file);
    if (!secret.ok()) return secret.status();
    n->inbound_secret = *secret;
  } else {
    n->inbound_secret = Get(env, "TOOLGATE_NOTIFIER_INBOUND_SECRET");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Millis> ParseDuration(const std::string& raw) {
  const std::string text = Trim(raw);
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i > 15) {
    return absl::InvalidArgumentError("expected a duration such as 250ms, 10s, 5m, 1h or 2d");
  }
  const uint64_t n = std::stoull(text.substr(0, i));
  const std::string unit = text.substr(i);
  uint64_t mult;
  if (unit.empty() || unit == "ms") {
    mult = 1;
  } else if (unit == "s") {
    mult = 1000;
  } else if (unit == "m") {
    mult = 60'000;
  } else if (unit == "h") {
    mult = 3'600'000;
  } else if (unit == "d") {
    mult = 86'400'000;
  } else {
    return absl::InvalidArgumentError("unknown duration unit '" + unit + "' (ms, s, m, h, d)");
  }
  return Millis(static_cast<int64_t>(n * mult));
}

absl::StatusOr<uint64_t> ParseSize(const std::string& raw) {
  const std::string text = Trim(raw);
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i > 15) {
    return absl::InvalidArgumentError("expected a size such as 1048576, 64KiB, 16MiB or 1GiB");
  }
  const uint64_t n = std::stoull(text.substr(0, i));
  const std::string unit = text.substr(i);
  if (unit.empty() || unit == "B") return n;
  if (unit == "KiB") return n << 10;
  if (unit == "MiB") return n << 20;
  if (unit == "GiB") return n << 30;
  return absl::InvalidArgumentError("unknown size unit '" + unit + "' (B, KiB, MiB, GiB)");
}

absl::Status Set(const std::string& path, const std::string& value, Config* cfg) {
  const Option* o = Find(path);
  if (o == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("config: unknown key '", path, "'"));
  }
  auto bad = [&](const std::string& rule) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", path, ": ", rule, " (got '", value, "')"));
  };
  switch (o->kind) {
    case Kind::kString:
      *o->str(*cfg) = value;
      break;
    case Kind::kEnum:
      if (std::find(o->choices.begin(), o->choices.end(), value) == o->choices.end()) {
        std::string all;
        for (const auto& c : o->choices) all += (all.empty() ? "" : " | ") + c;
        return bad("must be one of " + all);
      }
      *o->str(*cfg) = value;
      break;
    case Kind::kCount: {
      auto n = ParseCount(Trim(value));
      if (!n.ok()) return bad(std::string(n.status().message()));
      *o->num(*cfg) = *n;
      break;
    }
    case Kind::kSize: {
      auto n = ParseSize(value);
      if (!n.ok()) return bad(std::string(n.status().message()));
      *o->num(*cfg) = *n;
      break;
    }
    case Kind::kBool:
      if (value == "true" || value == "yes" || value == "1") {
        *o->flag(*cfg) = true;
      } else if (value == "false" || value == "no" || value == "0") {
        *o->flag(*cfg) = false;
      } else {
        return bad("expected true or false");
      }
      break;
    case Kind::kDuration: {
      auto d = ParseDuration(value);
      if (!d.ok()) return bad(std::string(d.status().message()));
      *o->dur(*cfg) = *d;
      break;
    }
    case Kind::kList: {
      YAML::Node node;
      try {
        node = YAML::Load(value);
        return SetList(*o, node, cfg);
      } catch (const YAML::Exception& e) {
        return bad("expected a YAML list such as [{url: https://..., secret_file: /path}]: " +
                   e.msg);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyYaml(const std::string& yaml_text, Config* cfg) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: not valid YAML: line ", e.mark.line + 1,
                                                   ", column ", e.mark.column + 1, ": ", e.msg));
  }
  if (root.IsNull()) return absl::OkStatus();
  try {
    return ApplyNode(root, "", cfg);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: line ", e.mark.line + 1, ": ", e.msg));
  }
}

std::string DefaultSocketPath(const std::map<std::string, std::string>& env) {
  if (std::string d = Get(env, "RUNTIME_DIRECTORY"); !d.empty()) {
    return d.substr(0, d.find(':')) + "/toolgate.sock";
  }
  if (::geteuid() == 0 || ::access("/run/toolgate", W_OK) == 0) {
    return "/run/toolgate/toolgate.sock";
  }
  if (std::string d = Get(env, "XDG_RUNTIME_DIR"); !d.empty()) {
    return d + "/toolgate/toolgate.sock";
  }
  return "/tmp/toolgate-" + std::to_string(::getuid()) + "/toolgate.sock";
}

std::string DefaultDataDir(const std::map<std::string, std::string>& env) {
  if (std::string d = Get(env, "STATE_DIRECTORY"); !d.empty()) return d.substr(0, d.find(':'));
  if (::geteuid() == 0 || ::access("/var/lib/toolgate", W_OK) == 0) return "/var/lib/toolgate";
  if (std::string d = Get(env, "XDG_STATE_HOME"); !d.empty()) return d + "/toolgate";
  if (std::string h = Get(env, "HOME"); !h.empty()) return h + "/.local/state/toolgate";
  return "/tmp/toolgate-" + std::to_string(::getuid()) + "/state";
}

absl::Status Validate(Config* cfg, const std::map<std::string, std::string>& env) {
  auto bad = [](const std::string& key, const std::string& rule) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", key, ": ", rule));
  };
  if (!cfg->listen.empty() && !ValidHostPort(cfg->listen)) {
    return bad("listen", "expected HOST:PORT, got '" + cfg->listen + "'");
  }
  if (!cfg->http_listen.empty() && !ValidHostPort(cfg->http_listen)) {
    return bad("http_listen", "expected HOST:PORT, got '" + cfg->http_listen + "'");
  }
  if (cfg->socket.empty()) cfg->socket = DefaultSocketPath(env);
  if (cfg->socket == "none") cfg->socket.clear();
  if (cfg->listen.empty() && cfg->socket.empty()) {
    return bad("listen", "gRPC needs a TCP address or a Unix socket; both are disabled");
  }
  if (cfg->socket_mode.empty() || cfg->socket_mode.size() > 4 ||
      cfg->socket_mode.find_first_not_of("01234567") != std::string::npos) {
    return bad("socket_mode", "expected octal permissions such as 0660");
  }
  if (cfg->data_dir.empty()) cfg->data_dir = DefaultDataDir(env);
  if (cfg->ingest.max_argument_bytes == 0) return bad("ingest.max_argument_bytes", "must be > 0");
  if (cfg->ingest.max_request_bytes < 1024) {
    return bad("ingest.max_request_bytes", "must be at least 1KiB");
  }
  if (cfg->ingest.max_events_per_request == 0) {
    return bad("ingest.max_events_per_request", "must be > 0");
  }
  if (cfg->ingest.stream_window == 0) return bad("ingest.stream_window", "must be > 0");
  if (cfg->spool.max_bytes < (1 << 16)) return bad("spool.max_bytes", "must be at least 64KiB");
  if (cfg->spool.commit_max_events == 0) return bad("spool.commit_max_events", "must be > 0");
  if (cfg->batch.max_events == 0) return bad("batch.max_events", "must be > 0");
  if (cfg->batch.max_bytes < 1024) return bad("batch.max_bytes", "must be at least 1KiB");
  if (cfg->upstream.max_in_flight == 0 || cfg->upstream.max_in_flight > 256) {
    return bad("upstream.max_in_flight", "must be between 1 and 256");
  }
  if (cfg->upstream.backoff_initial.count() <= 0 ||
      cfg->upstream.backoff_max < cfg->upstream.backoff_initial) {
    return bad("upstream.backoff_max", "must be >= upstream.backoff_initial > 0");
  }
  if (cfg->upstream.timeout.count() <= 0) return bad("upstream.timeout", "must be > 0");

  // Secrets: from their file when one is named, else from the environment.
  if (!cfg->admin_key_file.empty()) {
    auto key = ReadSecretFile("admin_key_file", cfg->admin_key_file);
    if (!key.ok()) return key.status();
    cfg->admin_key = *key;
  } else {
    cfg->admin_key = Get(env, "TOOLGATE_ADMIN_KEY");
  }
  if (!cfg->hash.hmac_key_file.empty()) {
    auto key = ReadSecretFile("hash.hmac_key_file", cfg->hash.hmac_key_file);
    if (!key.ok()) return key.status();
    cfg->hash.hmac_key = *key;
  } else {
    cfg->hash.hmac_key = Get(env, "TOOLGATE_HMAC_KEY");
  }
  if (!cfg->upstream.url.empty()) {
    const std::string& u = cfg->upstream.url;
    if (u.rfind("http://", 0) != 0 && u.rfind("https://", 0) != 0) {
      return bad("upstream.url", "must start with http:// or https://, got '" + u + "'");
    }
    while (cfg->upstream.url.size() > 8 && cfg->upstream.url.back() == '/') {
      cfg->upstream.url.pop_back();
    }
    if (!cfg->upstream.api_key_file.empty()) {
      auto key = ReadSecretFile("upstream.api_key_file", cfg->upstream.api_key_file);
      if (!key.ok()) return key.status();
      cfg->upstream.api_key = *key;
    } else {
      cfg->upstream.api_key = Get(env, "TOOLGATE_API_KEY");
    }
    if (cfg->upstream.api_key.empty()) {
      return bad("upstream.api_key_file",
                 "an upstream needs an API key: set upstream.api_key_file or TOOLGATE_API_KEY");
    }
    if (cfg->upstream.api_key.find_first_of("\r\n") != std::string::npos) {
      return bad("upstream.api_key_file", "the key must be a single line");
    }
  }
  if (!cfg->upstream.ca_file.empty() && ::access(cfg->upstream.ca_file.c_str(), R_OK) != 0) {
    return bad("upstream.ca_file", "cannot read '" + cfg->upstream.ca_file + "'");
  }
  if (absl::Status s = ValidateNotifier(&cfg->notifier, env); !s.ok()) return s;
  if (cfg->policy.mode != "local") {
    if (cfg->upstream.url.empty()) {
      return bad("policy.mode", cfg->policy.mode + " needs an upstream (upstream.url)");
    }
    if (!cfg->policy.file.empty()) {
      return bad("policy.file",
                 "only with policy.mode local (the rules come from the upstream in " +
                     cfg->policy.mode + " mode)");
    }
  }
  if (cfg->policy.sync_interval.count() < 1000) {
    return bad("policy.sync_interval", "must be at least 1s");
  }
  if (cfg->policy.remote_timeout.count() <= 0) return bad("policy.remote_timeout", "must be > 0");
  if (cfg->policy.breaker_failures == 0) return bad("policy.breaker_failures", "must be > 0");
  if (cfg->policy.breaker_reset.count() <= 0) return bad("policy.breaker_reset", "must be > 0");
  if (cfg->policy.remote_approval_timeout.count() <= 0) {
    return bad("policy.remote_approval_timeout", "must be > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<Flags> ParseFlags(int argc, const char* const* argv) {
  // Flags that map to an option path. Secrets have no flag, on purpose.
  static const std::map<std::string, std::string> kFlagPaths = {
      {"--listen", "listen"},
      {"--socket", "socket"},
      {"--http-listen", "http_listen"},
      {"--data-dir", "data_dir"},
      {"--upstream-url", "upstream.url"},
      {"--api-key-file", "upstream.api_key_file"},
      {"--log-level", "log_level"},
  };
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto take = [&]() -> absl::StatusOr<std::string> {
      if (has_value) return value;
      if (i + 1 >= argc) return absl::InvalidArgumentError(arg + ": needs a value");
      return std::string(argv[++i]);
    };
    if (arg == "--help" || arg == "-h") {
      flags.help = true;
    } else if (arg == "--version") {
      flags.version = true;
    } else if (arg == "--print-config") {
      flags.print_config = true;
    } else if (arg == "--config") {
      auto v = take();
      if (!v.ok()) return v.status();
      flags.config_file = *v;
    } else if (arg == "--set") {
      auto v = take();
      if (!v.ok()) return v.status();
      const size_t eq = v->find('=');
      if (eq == std::string::npos) return absl::InvalidArgumentError("--set: expected KEY=VALUE");
      flags.values[v->substr(0, eq)] = v->substr(eq + 1);
    } else if (arg == "--api-key" || arg == "--hmac-key") {
      return absl::InvalidArgumentError(
          arg +
          ": secrets are not accepted on the command line (they show in ps); use "
          "--api-key-file or TOOLGATE_API_KEY");
    } else if (auto it = kFlagPaths.find(arg); it != kFlagPaths.end()) {
      auto v = take();
      if (!v.ok()) return v.status();
      flags.values[it->second] = *v;
    } else {
      return absl::InvalidArgumentError("unknown flag '" + arg + "' (see --help)");
    }
  }
  return flags;
}

std::string FlagsHelp() {
  return R"(Usage: toolgated [flags]

toolgate's daemon: audits and gates the tool calls of AI agents.
With no flags and no configuration it runs standalone on a local SQLite store.

Flags:
  --config FILE         YAML configuration (or TOOLGATE_CONFIG)
  --listen HOST:PORT    gRPC on TCP (default 127.0.0.1:7470; "" disables)
  --socket PATH         gRPC on a Unix socket (default under $RUNTIME_DIRECTORY,
                        /run/toolgate or $XDG_RUNTIME_DIR; "none" disables)
  --http-listen HOST:PORT  /metrics and /healthz (default 127.0.0.1:7471; "" disables)
  --data-dir DIR        spool and state (default $STATE_DIRECTORY, /var/lib/toolgate
                        or $XDG_STATE_HOME/toolgate)
  --upstream-url URL    ship events to this audit API (else standalone)
  --api-key-file FILE   the upstream API key (or TOOLGATE_API_KEY)
  --log-level LEVEL     debug | info | warn | error
  --set KEY=VALUE       any option of the configuration reference
  --print-config        print the effective configuration (secrets redacted) and exit
  --version             print the version and exit
  --help                this text

Every option can also be set as TOOLGATE_<KEY> in the environment, the key upper-cased
with dots as underscores (upstream.max_in_flight → TOOLGATE_UPSTREAM_MAX_IN_FLIGHT).
Precedence: flags > environment > file > defaults.

Configuration reference:
)" + Reference();
}

std::vector<std::string> OptionPaths() {
  std::vector<std::string> out;
  for (const Option& o : Options()) out.push_back(o.path);
  return out;
}

std::string Reference() {
  Config defaults;
  std::string out;
  for (const Option& o : Options()) {
    out += absl::StrCat("  ", o.path, " = ", ShowValue(o, defaults), "\n      ", o.help, "\n");
  }
  return out;
}

std::string Dump(const Config& cfg_in) {
  Config cfg = cfg_in;
  std::string out;
  std::string section;
  for (const Option& o : Options()) {
    std::string path = o.path;
    const size_t dot = path.find('.');
    if (dot == std::string::npos) {
      out += path + ": " + ShowValue(o, cfg) + "\n";
      continue;
    }
    if (path.substr(0, dot) != section) {
      section = path.substr(0, dot);
      out += section + ":\n";
    }
    out += "  " + path.substr(dot + 1) + ": " + ShowValue(o, cfg) + "\n";
  }
  out += "# upstream api key: " + std::string(cfg.upstream.api_key.empty() ? "unset" : "set") +
         "; hmac key: " + (cfg.hash.hmac_key.empty() ? "unset" : "set") +
         "; admin key: " + (cfg.admin_key.empty() ? "unset" : "set") +
         "; webhook secrets: " + std::to_string(cfg.notifier.endpoint_list.size()) + " set" +
         "; inbound webhook secret: " + (cfg.notifier.inbound_secret.empty() ? "unset" : "set") +
         "\n";
  return out;
}

absl::StatusOr<Config> Load(const Flags& flags, const std::map<std::string, std::string>& env) {
  Config cfg;
  std::string file = flags.config_file.empty() ? Get(env, "TOOLGATE_CONFIG") : flags.config_file;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: cannot read config file '", file, "': ", std::strerror(errno)));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    if (absl::Status s = ApplyYaml(ss.str(), &cfg); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", s.message()));
    }
    cfg.config_file = file;
  }
  for (const Option& o : Options()) {
    std::string name = "TOOLGATE_" + std::string(o.path);
    for (char& c : name) c = c == '.' ? '_' : static_cast<char>(std::toupper(c));
    if (auto it = env.find(name); it != env.end()) {
      if (absl::Status s = Set(o.path, it->second, &cfg); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
      }
    }
  }
  for (const auto& [path, value] : flags.values) {
    if (absl::Status s = Set(path, value, &cfg); !s.ok()) return s;
  }
  if (absl::Status s = Validate(&cfg, env); !s.ok()) return s;
  return cfg;
}

}  // namespace toolgate::config
