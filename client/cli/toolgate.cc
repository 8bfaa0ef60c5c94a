// toolgate: the command-line client of toolgated.
//
// Every command and subcommand answers --help (usage on stdout, exit 0); an unknown command,
// flag or a wrong number of arguments prints the usage on stderr and exits 2. The commands are
// one table (kCommands): `toolgate --help` and each command's help are generated from it.
//
// Exit codes: 0 success; 1 the command ran and found a problem (a chain that does not verify,
// a failed store, a policy that does not compile, an error answer from the daemon); 2 usage
// error; 3 the daemon could not be reached.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon/chain/verifier.h"
#include "daemon/policy/policy.h"
#include "daemon/policy/rate_state.h"
#include "toolgate/v1/admin.grpc.pb.h"
#include "toolgate/v1/events.grpc.pb.h"
#include "toolgate/v1/guardian.grpc.pb.h"

namespace {

using namespace toolgate::v1;

constexpr int kOk = 0, kProblem = 1, kUsage = 2, kUnreachable = 3;

constexpr char kExitCodes[] =
    "Exit codes:\n"
    "  0  success\n"
    "  1  the command ran and found a problem: an error answer from the daemon, a\n"
    "     failed store (status), a chain that does not verify (verify), a policy that\n"
    "     does not compile (policy lint|test|reload), a flush that timed out\n"
    "  2  usage error: unknown command or flag, missing or extra arguments, an\n"
    "     unreadable input file\n"
    "  3  the daemon could not be reached (or went away, e.g. during tail)\n";

struct Cli {
  std::string address;
  bool json = false;
};

// A command's parsed arguments: the flags that take a value, then the positional arguments.
struct Args {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positional;
  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::string Get(const std::string& name) const {
    auto it = flags.find(name);
    return it == flags.end() ? std::string() : it->second;
  }
};

struct Command {
  const char* name;                // "status", or "group verb" ("dead-letters list")
  const char* synopsis;            // what follows the name in a usage line
  const char* summary;             // one line, for `toolgate --help`
  const char* details;             // flags, arguments and exit codes, for `toolgate NAME --help`
  std::vector<std::string> flags;  // flags taking a value (the global ones are always allowed)
  size_t min_args, max_args;       // positional arguments
  int (*run)(const Cli&, const Args&);
};

// ------------------------------------------------------------------ helpers

// The daemon's default socket places (config::DefaultSocketPath) in the same order, but probed
// for an existing socket we may write to: a member of the socket's group is not root and
// cannot create files in /run/toolgate, yet can connect.
std::string DefaultAddress() {
  if (const char* a = std::getenv("TOOLGATE_ADDRESS"); a && *a) return a;
  std::vector<std::string> candidates;
  if (const char* r = std::getenv("RUNTIME_DIRECTORY"); r && *r) {
    const std::string dirs(r);  // systemd: several directories are joined with ':'
    candidates.push_back(dirs.substr(0, dirs.find(':')) + "/toolgate.sock");
  }
  candidates.push_back("/run/toolgate/toolgate.sock");
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) {
    candidates.push_back(std::string(x) + "/toolgate/toolgate.sock");
  }
  candidates.push_back("/tmp/toolgate-" + std::to_string(getuid()) + "/toolgate.sock");
  for (const auto& c : candidates) {
    if (access(c.c_str(), W_OK) == 0) return "unix:" + c;
  }
  return "127.0.0.1:7470";
}

std::shared_ptr<grpc::Channel> Connect(const Cli& cli) {
  return grpc::CreateChannel(cli.address, grpc::InsecureChannelCredentials());
}

int RpcFailed(const grpc::Status& s, const Cli& cli) {
  // The daemon's own UNAVAILABLE answers about its store ("spool: …", "spool failed earlier and
  // refuses writes: …") are problems it reports (1). Any other UNAVAILABLE — nothing listening,
  // a connection lost mid-call, "… shutting down" — means the daemon is not there to answer
  // (3). The text decides, not the channel's state, which gRPC updates on its own schedule.
  const std::string& m = s.error_message();
  const bool unreachable =
      s.error_code() == grpc::StatusCode::UNAVAILABLE &&
      !(m.rfind("spool", 0) == 0 && m.find("shutting down") == std::string::npos);
  std::fprintf(stderr, "toolgate: %s: %s\n",
               unreachable ? ("cannot reach toolgated at " + cli.address).c_str() : "error",
               s.error_message().c_str());
  return unreachable ? kUnreachable : kProblem;
}

std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 10) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return ctx;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// Parses a non-negative decimal number; prints why not and returns false.
bool ParseCount(const std::string& command, const std::string& flag, const std::string& text,
                uint64_t max, uint64_t* out) {
  if (!text.empty() && text.size() <= 19 &&
      text.find_first_not_of("0123456789") == std::string::npos) {
    *out = std::stoull(text);
    if (*out <= max) return true;
  }
  std::fprintf(stderr, "toolgate %s: %s must be a number from 0 to %llu, not '%s'\n",
               command.c_str(), flag.c_str(), static_cast<unsigned long long>(max), text.c_str());
  return false;
}

std::string ReadFile(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ------------------------------------------------------------------ commands

int Status(const Cli& cli, const Args&) {
  auto stub = Admin::NewStub(Connect(cli));
  StatusResponse r;
  auto ctx = Ctx();
  if (auto s = stub->Status(ctx.get(), StatusRequest(), &r); !s.ok()) return RpcFailed(s, cli);
  // A failed store is a problem the caller (a health check, a script) must see in the exit code.
  const int rc = r.spool_failed() ? kProblem : kOk;
  if (cli.json) {
    std::cout << ToJson(r) << "\n";
    return rc;
  }
  std::string listen;
  for (const auto& l : r.listen()) listen += (listen.empty() ? "" : ", ") + l;
  std::printf("toolgated %s  mode: %s  uptime: %llus\n", r.version().c_str(), r.mode().c_str(),
              static_cast<unsigned long long>(r.uptime_s()));
  std::printf("  listen:          %s\n", listen.c_str());
  std::printf("  data dir:        %s\n", r.data_dir().c_str());
  std::printf("  stored events:   %llu (%llu bytes of %llu)\n",
              static_cast<unsigned long long>(r.stored_events()),
              static_cast<unsigned long long>(r.spool_bytes()),
              static_cast<unsigned long long>(r.spool_max_bytes()));
  std::printf("  queue depth:     %llu\n", static_cast<unsigned long long>(r.queue_depth()));
  std::printf("  dead letters:    %llu\n", static_cast<unsigned long long>(r.dead_letters()));
  std::printf("  received:        %llu   shipped: %llu\n",
              static_cast<unsigned long long>(r.events_received()),
              static_cast<unsigned long long>(r.events_shipped()));
  std::printf("  upstream:        %s%s%s\n", r.upstream_state().c_str(),
              r.upstream_url().empty() ? "" : " ", r.upstream_url().c_str());
  if (!r.upstream_last_error().empty()) {
    std::printf("  last error:      %s\n", r.upstream_last_error().c_str());
  }
  std::printf("  pending approvals: %llu   policy revision: %s\n",
              static_cast<unsigned long long>(r.pending_approvals()),
              r.policy_revision().empty() ? "(none)" : r.policy_revision().c_str());
  if (!r.breaker_state().empty()) {  // remote policy mode only
    std::printf("  remote policy breaker: %s\n", r.breaker_state().c_str());
  }
  if (r.spool_failed()) {
    std::printf("  SPOOL FAILED: the store refuses writes; see the daemon's log and restart it\n");
  }
  return rc;
}

int Send(const Cli& cli, const Args& args) {
  Event ev;
  if (args.Has("--json")) {
    auto st = google::protobuf::util::JsonStringToMessage(args.Get("--json"), &ev);
    if (!st.ok()) {
      std::fprintf(stderr, "toolgate send: --json: %s\n", st.ToString().c_str());
      return kUsage;
    }
  }
  if (args.Has("--agent")) ev.set_agent_id(args.Get("--agent"));
  if (args.Has("--session")) ev.set_session_id(args.Get("--session"));
  if (args.Has("--tool")) ev.mutable_tool_call()->set_tool_name(args.Get("--tool"));
  if (args.Has("--args")) ev.mutable_tool_call()->set_arguments_json(args.Get("--args"));
  if (args.Has("--status")) ev.mutable_tool_call()->set_response_status(args.Get("--status"));
  auto stub = Events::NewStub(Connect(cli));
  RecordRequest req;
  *req.add_events() = ev;
  RecordResponse resp;
  auto ctx = Ctx();
  if (auto s = stub->Record(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  if (cli.json) {
    std::cout << ToJson(resp) << "\n";
  } else {
    std::cout << resp.event_ids(0) << "\n";
  }
  return kOk;
}

// One readable line for an event envelope: time, agent, session, category, and what happened.
std::string TailLine(const std::string& event_json) {
  const auto j = nlohmann::json::parse(event_json, nullptr, false);
  if (!j.is_object()) return event_json;
  auto str = [](const nlohmann::json& o, const char* key) {
    auto it = o.find(key);
    return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  auto pad = [](std::string s, size_t width) {
    if (s.size() < width) s.append(width - s.size(), ' ');
    return s;
  };
  const std::string category = str(j, "category");
  const nlohmann::json payload =
      j.contains("payload") && j["payload"].is_object() ? j["payload"] : nlohmann::json::object();
  std::string what;
  auto add = [&what](const std::string& part) {
    if (!part.empty()) what += (what.empty() ? "" : " ") + part;
  };
  if (category == "tool_api") {
    add(str(payload, "toolName"));
    add(str(payload, "responseStatus"));
  } else if (category == "identity") {
    add(str(payload, "agentName"));
    add(str(payload, "version"));
  } else if (category == "reasoning") {
    add(str(payload, "summary"));
  } else if (category == "data_movement") {
    add(str(payload, "operation"));
    if (payload.contains("objectIds")) add(payload["objectIds"].dump());
  } else if (category == "approval") {
    add(str(payload, "decision"));
    add(str(payload, "scope"));
    const std::string approver = str(payload, "approverId");
    if (!approver.empty()) add("by " + approver);
    const std::string reason = str(payload, "reason");
    if (!reason.empty()) add("(" + reason + ")");
  } else if (category == "session_end") {
    add(str(payload, "outcome"));
    if (payload.contains("error") && payload["error"].is_object()) {
      add(str(payload["error"], "message"));
    }
  } else if (category != "session_start") {
    add(payload.dump());
  }
  std::string line = str(j, "sourceTimestamp") + "  " + pad(str(j, "agentId"), 16) + " " +
                     pad(str(j, "sessionId"), 20) + " " + pad(category, 14) + " " + what;
  line.erase(line.find_last_not_of(' ') + 1);
  return line;
}

// What ends a tail besides the daemon: Ctrl-C or SIGTERM (a waiting thread cancels the call)
// and a closed stdout. Static: the signal thread outlives the call.
struct TailStop {
  std::mutex mu;
  grpc::ClientContext* ctx = nullptr;  // the running call; guarded by mu
  bool stopped = false;                // a signal or a closed pipe ended it; guarded by mu
  void Stop() {
    std::lock_guard<std::mutex> l(mu);
    stopped = true;
    if (ctx != nullptr) ctx->TryCancel();
  }
};
TailStop tail_stop;

int Tail(const Cli& cli, const Args& args) {
  // Blocked here, before gRPC starts its threads (they inherit the mask), and taken by sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a closed stdout is seen as a write error instead
  std::thread([signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    tail_stop.Stop();
  }).detach();

  TailRequest req;
  req.set_session_id(args.Get("--session"));
  req.set_agent_id(args.Get("--agent"));
  auto stub = Admin::NewStub(Connect(cli));
  grpc::ClientContext ctx;  // no deadline: until stopped
  {
    std::lock_guard<std::mutex> l(tail_stop.mu);
    if (tail_stop.stopped) return kOk;
    tail_stop.ctx = &ctx;
  }
  auto reader = stub->Tail(&ctx, req);
  // The daemon sends its metadata (AdminService::kTailReadyKey) once the tail is registered:
  // from here on, every committed event reaches us. Said on stderr, so that a script (or a
  // test) can wait for it.
  reader->WaitForInitialMetadata();
  if (ctx.GetServerInitialMetadata().count("toolgate-tail-ready") > 0) {
    std::fprintf(stderr,
                 "toolgate tail: following events as they are committed (Ctrl-C to stop)\n");
  }
  StoredEvent ev;
  while (reader->Read(&ev)) {
    const std::string line = (cli.json ? ev.event_json() : TailLine(ev.event_json())) + "\n";
    if (std::fwrite(line.data(), 1, line.size(), stdout) != line.size() ||
        std::fflush(stdout) != 0) {
      tail_stop.Stop();  // stdout closed (`| head`): end quietly
      break;
    }
  }
  const grpc::Status status = reader->Finish();
  bool stopped;
  {
    std::lock_guard<std::mutex> l(tail_stop.mu);
    tail_stop.ctx = nullptr;
    stopped = tail_stop.stopped;
  }
  if (stopped || status.ok()) return kOk;
  return RpcFailed(status, cli);
}

int DeadLettersList(const Cli& cli, const Args& args) {
  ListDeadLettersRequest req;
  uint64_t limit = 1000;
  if (args.Has("--limit") &&
      !ParseCount("dead-letters list", "--limit", args.Get("--limit"), 10000, &limit)) {
    return kUsage;
  }
  req.set_limit(static_cast<uint32_t>(limit));
  auto stub = Admin::NewStub(Connect(cli));
  auto ctx = Ctx();
  ListDeadLettersResponse resp;
  if (auto s = stub->ListDeadLetters(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  if (cli.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  std::printf("%-6s %-36s %-6s %-22s %s\n", "ID", "EVENT", "HTTP", "CODE", "MESSAGE");
  for (const auto& d : resp.dead_letters()) {
    std::printf("%-6llu %-36s %-6d %-22s %s\n", static_cast<unsigned long long>(d.id()),
                d.event_id().c_str(), d.http_status(), d.code().c_str(), d.message().c_str());
  }
  std::printf("%llu dead letter(s)\n", static_cast<unsigned long long>(resp.total()));
  return kOk;
}

// Dead-letter ids from the positional arguments; none = all.
bool DeadLetterIds(const char* verb, const Args& args, std::vector<uint64_t>* ids) {
  for (const auto& a : args.positional) {
    uint64_t id = 0;
    if (!ParseCount(std::string("dead-letters ") + verb, "ID", a, UINT64_MAX >> 1, &id)) {
      return false;
    }
    ids->push_back(id);
  }
  return true;
}

int DeadLettersRetry(const Cli& cli, const Args& args) {
  RetryDeadLettersRequest req;
  std::vector<uint64_t> ids;
  if (!DeadLetterIds("retry", args, &ids)) return kUsage;
  for (auto id : ids) req.add_ids(id);
  auto stub = Admin::NewStub(Connect(cli));
  auto ctx = Ctx();
  RetryDeadLettersResponse resp;
  if (auto s = stub->RetryDeadLetters(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  std::cout << (cli.json ? ToJson(resp) : std::to_string(resp.requeued()) + " requeued") << "\n";
  return kOk;
}

int DeadLettersPurge(const Cli& cli, const Args& args) {
  PurgeDeadLettersRequest req;
  std::vector<uint64_t> ids;
  if (!DeadLetterIds("purge", args, &ids)) return kUsage;
  for (auto id : ids) req.add_ids(id);
  auto stub = Admin::NewStub(Connect(cli));
  auto ctx = Ctx();
  PurgeDeadLettersResponse resp;
  if (auto s = stub->PurgeDeadLetters(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  std::cout << (cli.json ? ToJson(resp) : std::to_string(resp.purged()) + " purged") << "\n";
  return kOk;
}

int Sessions(const Cli& cli, const Args& args) {
  ListSessionsRequest req;
  req.set_agent_id(args.Get("--agent"));
  uint64_t limit = 100;
  if (args.Has("--limit") &&
      !ParseCount("sessions", "--limit", args.Get("--limit"), 10000, &limit)) {
    return kUsage;
  }
  req.set_limit(static_cast<uint32_t>(limit));
  auto stub = Admin::NewStub(Connect(cli));
  auto ctx = Ctx();
  ListSessionsResponse resp;
  if (auto s = stub->ListSessions(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  if (cli.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  std::printf("%-30s %-20s %8s  %s\n", "SESSION", "AGENT", "EVENTS", "LAST EVENT");
  for (const auto& s : resp.sessions()) {
    std::printf("%-30s %-20s %8llu  %s\n", s.session_id().c_str(), s.agent_id().c_str(),
                static_cast<unsigned long long>(s.events()), s.last_event_at().c_str());
  }
  return kOk;
}

int Export(const Cli& cli, const Args& args) {
  auto stub = Admin::NewStub(Connect(cli));
  ExportSessionRequest req;
  req.set_session_id(args.positional[0]);
  auto ctx = Ctx(300);
  auto reader = stub->ExportSession(ctx.get(), req);
  StoredEvent ev;
  while (reader->Read(&ev)) std::cout << ev.event_json() << "\n";
  if (auto s = reader->Finish(); !s.ok()) return RpcFailed(s, cli);
  return kOk;
}

int Flush(const Cli& cli, const Args& args) {
  FlushRequest req;
  uint64_t timeout_ms = 0;
  if (args.Has("--timeout-ms") &&
      !ParseCount("flush", "--timeout-ms", args.Get("--timeout-ms"), 86400000, &timeout_ms)) {
    return kUsage;
  }
  req.set_timeout_ms(static_cast<uint32_t>(timeout_ms));
  auto stub = Admin::NewStub(Connect(cli));
  auto ctx = Ctx(static_cast<int>(req.timeout_ms() / 1000) + 15);
  FlushResponse resp;
  if (auto s = stub->Flush(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  if (cli.json) {
    std::cout << ToJson(resp) << "\n";
  } else {
    std::printf("%s; %llu event(s) still queued\n", resp.complete() ? "flushed" : "timed out",
                static_cast<unsigned long long>(resp.queue_depth()));
  }
  return resp.complete() ? kOk : kProblem;
}

int Verify(const Cli& cli, const Args& args) {
  const std::string& path = args.positional[0];
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path);
    if (!file) {
      std::fprintf(stderr, "toolgate verify: cannot read '%s'\n", path.c_str());
      return kUsage;
    }
    in = &file;
  }
  toolgate::chain::Verifier verifier;
  std::string line;
  while (std::getline(*in, line)) verifier.Add(line);
  const auto report = verifier.Finish();
  if (cli.json) {
    nlohmann::json j = {{"ok", report.ok()},
                        {"events", report.events},
                        {"sessions", report.sessions},
                        {"duplicates", report.duplicates},
                        {"partial_sessions", report.partial_sessions},
                        {"problems", nlohmann::json::array()}};
    for (const auto& p : report.problems) {
      j["problems"].push_back({{"line", p.line},
                               {"session_id", p.session_id},
                               {"event_id", p.event_id},
                               {"message", p.message}});
    }
    std::cout << j.dump() << "\n";
  } else {
    for (const auto& p : report.problems) {
      std::printf("line %zu: session %s, event %s: %s\n", p.line, p.session_id.c_str(),
                  p.event_id.c_str(), p.message.c_str());
    }
    std::printf("%s: %zu event(s), %zu session(s), %zu duplicate(s), %zu partial, %zu problem(s)\n",
                report.ok() ? "OK" : "FAILED", report.events, report.sessions, report.duplicates,
                report.partial_sessions, report.problems.size());
  }
  return report.ok() ? kOk : kProblem;
}

int Pending(const Cli& cli, const Args& args) {
  ListPendingRequest req;
  if (args.Has("--status")) {
    PendingStatus st;
    std::string upper = args.Get("--status");
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (!PendingStatus_Parse(upper, &st)) {
      std::fprintf(stderr,
                   "toolgate pending: --status must be pending, approved, rejected or "
                   "expired\n");
      return kUsage;
    }
    req.set_status(st);
  }
  uint64_t limit = 100;
  if (args.Has("--limit") &&
      !ParseCount("pending", "--limit", args.Get("--limit"), 10000, &limit)) {
    return kUsage;
  }
  req.set_limit(static_cast<uint32_t>(limit));
  auto stub = toolgate::v1::Guardian::NewStub(Connect(cli));
  auto ctx = Ctx();
  ListPendingResponse resp;
  if (auto s = stub->ListPending(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  if (cli.json) {
    std::cout << ToJson(resp) << "\n";
    return kOk;
  }
  std::printf("%-36s %-9s %-18s %-16s %-20s %s\n", "ID", "STATUS", "TOOL", "AGENT", "RULE",
              "EXPIRES");
  for (const auto& a : resp.actions()) {
    std::printf("%-36s %-9s %-18s %-16s %-20s %s\n", a.id().c_str(),
                Lower(PendingStatus_Name(a.status())).c_str(), a.action().tool_name().c_str(),
                a.action().agent_id().c_str(), a.rule_id().c_str(), a.expires_at().c_str());
  }
  return kOk;
}

int Decide(const Cli& cli, const Args& args, bool approve) {
  const std::string reason = args.Get("--reason");
  std::string approver = args.Get("--approver");
  if (approver.empty()) {
    const char* user = std::getenv("USER");
    approver = user && *user ? user : "cli";
  }
  if (!approve && reason.empty()) {
    std::fprintf(stderr, "toolgate reject: --reason is required\n");
    return kUsage;
  }
  auto stub = toolgate::v1::Guardian::NewStub(Connect(cli));
  auto ctx = Ctx();
  DecideRequest req;
  req.set_id(args.positional[0]);
  req.set_approve(approve);
  req.set_reason(reason);
  req.set_approver_id(approver);
  DecideResponse resp;
  if (auto s = stub->Decide(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
  if (cli.json) {
    std::cout << ToJson(resp) << "\n";
  } else {
    std::printf("%s %s by %s\n", resp.action().id().c_str(), approve ? "approved" : "rejected",
                approver.c_str());
  }
  return kOk;
}

int Approve(const Cli& cli, const Args& args) { return Decide(cli, args, true); }
int Reject(const Cli& cli, const Args& args) { return Decide(cli, args, false); }

int PolicyReload(const Cli& cli, const Args&) {
  auto stub = Admin::NewStub(Connect(cli));
  auto ctx = Ctx();
  ReloadPoliciesResponse resp;
  if (auto s = stub->ReloadPolicies(ctx.get(), ReloadPoliciesRequest(), &resp); !s.ok()) {
    return RpcFailed(s, cli);
  }
  if (cli.json) {
    std::cout << ToJson(resp) << "\n";
  } else if (resp.error().empty()) {
    std::printf("revision %s%s\n", resp.revision().c_str(), resp.changed() ? " (changed)" : "");
  } else {
    std::printf("not reloaded: %s\nrevision in force: %s\n", resp.error().c_str(),
                resp.revision().c_str());
  }
  return resp.error().empty() ? kOk : kProblem;
}

// Compiles the policy file named by the first argument; prints why not and returns the exit
// code when it cannot.
absl::StatusOr<std::shared_ptr<const toolgate::policy::RuleSet>> LoadPolicy(const Cli& cli,
                                                                            const Args& args,
                                                                            int* rc) {
  bool ok = false;
  const std::string text = ReadFile(args.positional[0], &ok);
  if (!ok) {
    std::fprintf(stderr, "toolgate policy: cannot read '%s'\n", args.positional[0].c_str());
    *rc = kUsage;
    return absl::NotFoundError("unreadable");
  }
  auto rules = toolgate::policy::CompilePolicy(text, args.positional[0]);
  if (!rules.ok()) {
    if (cli.json) {
      std::cout << nlohmann::json({{"ok", false}, {"error", std::string(rules.status().message())}})
                << "\n";
    } else {
      std::printf("%s\n", std::string(rules.status().message()).c_str());
    }
    *rc = kProblem;
    return rules.status();
  }
  return rules;
}

int PolicyLint(const Cli& cli, const Args& args) {
  int rc = kOk;
  auto rules = LoadPolicy(cli, args, &rc);
  if (!rules.ok()) return rc;
  if (cli.json) {
    std::cout << nlohmann::json({{"ok", true},
                                 {"revision", (*rules)->revision()},
                                 {"rules", (*rules)->size()}})
              << "\n";
  } else {
    std::printf("OK: %zu rule(s), revision %s\n", (*rules)->size(), (*rules)->revision().c_str());
  }
  return kOk;
}

int PolicyTest(const Cli& cli, const Args& args) {
  int rc = kOk;
  auto rules = LoadPolicy(cli, args, &rc);
  if (!rules.ok()) return rc;
  bool ok = false;
  const std::string action_text = ReadFile(args.positional[1], &ok);
  auto j = nlohmann::json::parse(action_text, nullptr, false);
  if (!ok || !j.is_object()) {
    std::fprintf(stderr, "toolgate policy test: '%s' must be a JSON object\n",
                 args.positional[1].c_str());
    return kUsage;
  }
  auto str = [&](const char* a, const char* b) {
    for (const char* k : {a, b}) {
      if (j.contains(k) && j[k].is_string()) return j[k].get<std::string>();
    }
    return std::string();
  };
  // No arguments are an empty object, as the daemon takes a Check without them.
  nlohmann::json arguments = j.contains("arguments") ? j["arguments"] : nlohmann::json::object();
  toolgate::policy::Action action{str("agent_id", "agentId"),
                                  str("session_id", "sessionId"),
                                  str("tool_name", "toolName"),
                                  str("tool_type", "toolType"),
                                  str("operation", "operation"),
                                  str("target_system", "targetSystem"),
                                  str("initiator_type", "initiatorType"),
                                  str("initiator_id", "initiatorId"),
                                  &arguments};
  toolgate::policy::RateState state;
  const auto d = (*rules)->Evaluate(action, &state, std::chrono::system_clock::now());
  const std::string effect(toolgate::policy::EffectName(d.effect));
  if (cli.json) {
    nlohmann::json out = {{"decision", effect},
                          {"rule_id", std::string(d.rule_id)},
                          {"reason", std::string(d.reason)},
                          {"revision", (*rules)->revision()}};
    if (d.shadow) {
      out["shadow_rule_id"] = std::string(d.shadow_rule_id);
      out["shadow_decision"] = std::string(toolgate::policy::EffectName(d.shadow_effect));
    }
    std::cout << out << "\n";
  } else {
    std::printf("%s  rule: %s  reason: %s\n", effect.c_str(),
                d.rule ? std::string(d.rule_id).c_str() : "(default)",
                std::string(d.reason).c_str());
    if (d.shadow) {
      std::printf("shadow: rule %s would have decided %s\n", std::string(d.shadow_rule_id).c_str(),
                  std::string(toolgate::policy::EffectName(d.shadow_effect)).c_str());
    }
  }
  return kOk;
}

// ------------------------------------------------------------------ the command table

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"status",
       "",
       "queue, spool, dead letters, upstream state",
       "Shows version, mode, uptime, listening addresses, data directory, stored events and\n"
       "bytes, queue depth, dead letters, events received and shipped, the upstream's state\n"
       "and last error, pending approvals and the policy revision.\n\n"
       "Exit codes: 0 ok, 1 the store has failed and refuses writes, 3 daemon unreachable.\n",
       {},
       0,
       0,
       Status},
      {"tail",
       "[--session S] [--agent A]",
       "live events as they become durable",
       "Prints each event once its commit is durable, as stored and shipped (previousHash\n"
       "included): a readable line (time, agent, session, category, tool or summary) by\n"
       "default, the event's JSON envelope with --output json (JSON lines). Only events\n"
       "committed after the start are shown; use export for earlier ones.\n\n"
       "  --session S  only the events of session S\n"
       "  --agent A    only the events of agent A\n\n"
       "Ctrl-C, SIGTERM or a closed stdout (| head) end it with exit code 0. A tail that reads\n"
       "more slowly than events arrive is ended by the daemon (exit 1, RESOURCE_EXHAUSTED);\n"
       "exit 3 when the daemon cannot be reached or goes away.\n",
       {"--session", "--agent"},
       0,
       0,
       Tail},
      {"send",
       "--agent ID --session ID [FLAGS]",
       "record one event (smoke tests)",
       "  --agent ID      agentId (required by the daemon)\n"
       "  --session ID    sessionId (required by the daemon)\n"
       "  --tool NAME     a tool_call event of tool NAME\n"
       "  --args JSON     the tool's arguments (hashed by the daemon, never stored)\n"
       "  --status S      the tool's response status\n"
       "  --json EV       a whole toolgate.v1.Event in JSON (proto3 JSON names);\n"
       "                  the flags above override its fields\n\n"
       "Exit codes: 0 recorded (durable), 1 refused by the daemon (e.g. INVALID_ARGUMENT),\n"
       "2 --json does not parse, 3 daemon unreachable.\n",
       {"--agent", "--session", "--tool", "--args", "--status", "--json"},
       0,
       0,
       Send},
      {"sessions",
       "[--agent ID] [--limit N]",
       "sessions in the local store, newest first",
       "  --agent ID   only the sessions of agent ID\n"
       "  --limit N    at most N sessions (default 100, at most 10000)\n\n"
       "Exit codes: 0 ok, 3 daemon unreachable.\n",
       {"--agent", "--limit"},
       0,
       0,
       Sessions},
      {"export",
       "SESSION",
       "a session's stored events as JSON lines",
       "Prints the events of SESSION still in the local store, exactly as shipped (RFC 8785\n"
       "JSON, previousHash included), one per line: the input of `toolgate verify`.\n\n"
       "Exit codes: 0 ok, 3 daemon unreachable.\n",
       {},
       1,
       1,
       Export},
      {"verify",
       "FILE",
       "check the previousHash chains of a file",
       "FILE holds events as JSON lines (the output of export, or what an upstream received);\n"
       "\"-\" reads stdin. Checks, offline, that each session's events chain: every previousHash\n"
       "is the SHA-256 of the previous event's bytes. Repeated identical events are counted as\n"
       "duplicates; a session whose start is not in the file is counted as partial.\n\n"
       "Exit codes: 0 every chain verifies, 1 a problem was found (each one is printed with\n"
       "its line), 2 FILE cannot be read.\n",
       {},
       1,
       1,
       Verify},
      {"flush",
       "[--timeout-ms N]",
       "ship what is queued now and wait for it",
       "  --timeout-ms N   how long to wait (default 10000)\n\n"
       "Exit codes: 0 the queue is empty, 1 timed out with events still queued, 3 daemon\n"
       "unreachable. In standalone mode there is nothing to ship: exit 0 at once.\n",
       {"--timeout-ms"},
       0,
       0,
       Flush},
      {"pending",
       "[--status S] [--limit N]",
       "actions waiting for a human (or decided)",
       "  --status S   pending (default), approved, rejected or expired\n"
       "  --limit N    at most N actions (default 100, at most 10000)\n\n"
       "Exit codes: 0 ok, 3 daemon unreachable.\n",
       {"--status", "--limit"},
       0,
       0,
       Pending},
      {"approve",
       "ID [--reason R] [--approver A]",
       "approve a pending action",
       "  --reason R     why (recorded in the audit chain)\n"
       "  --approver A   who decides (default: $USER)\n\n"
       "Exit codes: 0 approved (the waiting agent is woken), 1 unknown or already decided,\n"
       "3 daemon unreachable.\n",
       {"--reason", "--approver"},
       1,
       1,
       Approve},
      {"reject",
       "ID --reason R [--approver A]",
       "reject a pending action",
       "  --reason R     why (required; recorded in the audit chain, told to the agent)\n"
       "  --approver A   who decides (default: $USER)\n\n"
       "Exit codes: 0 rejected, 1 unknown or already decided, 2 no --reason, 3 daemon\n"
       "unreachable.\n",
       {"--reason", "--approver"},
       1,
       1,
       Reject},
      {"dead-letters list",
       "[--limit N]",
       "events the upstream refused (the default)",
       "Lists the events the upstream refused with a non-retryable answer: id, eventId, HTTP\n"
       "status, the upstream's error code and message.\n\n"
       "  --limit N   at most N (default 1000, at most 10000)\n\n"
       "Exit codes: 0 ok, 3 daemon unreachable.\n",
       {"--limit"},
       0,
       0,
       DeadLettersList},
      {"dead-letters retry",
       "[ID...]",
       "requeue dead letters (all without IDs)",
       "Requeues the given dead letters (all of them without IDs) as they were sent: same\n"
       "bytes, same eventId. Prints how many were requeued.\n\n"
       "Exit codes: 0 ok, 3 daemon unreachable.\n",
       {},
       0,
       SIZE_MAX,
       DeadLettersRetry},
      {"dead-letters purge",
       "[ID...]",
       "drop dead letters (all without IDs)",
       "Deletes the given dead letters (all of them without IDs). Prints how many.\n\n"
       "Exit codes: 0 ok, 3 daemon unreachable.\n",
       {},
       0,
       SIZE_MAX,
       DeadLettersPurge},
      {"policy lint",
       "FILE",
       "compile a policy; name the line if it fails",
       "Exit codes: 0 the policy compiles, 1 it does not (the problem is printed), 2 FILE\n"
       "cannot be read.\n",
       {},
       1,
       1,
       PolicyLint},
      {"policy test",
       "FILE ACTION.json",
       "decide an action offline",
       "ACTION.json is one object: {\"agent_id\", \"session_id\", \"tool_name\", \"tool_type\",\n"
       "\"operation\", \"target_system\", \"initiator_type\", \"initiator_id\", \"arguments\": "
       "{...}}\n"
       "(camelCase names are accepted too). Prints the decision, the rule and the reason, and\n"
       "a shadow rule's decision when one matched. Rate limits start from zero.\n\n"
       "Exit codes: 0 decided (whatever the decision), 1 the policy does not compile, 2 a file\n"
       "cannot be read or ACTION.json is not a JSON object.\n",
       {},
       2,
       2,
       PolicyTest},
      {"policy reload",
       "",
       "make the daemon re-read its policy now",
       "Exit codes: 0 reloaded (or unchanged), 1 the file does not compile (the last good\n"
       "policy stays in force; the reason is printed), 3 daemon unreachable.\n",
       {},
       0,
       0,
       PolicyReload},
  };
  return commands;
}

const char kGlobalFlags[] =
    "Global flags (before or after the command):\n"
    "  --address ADDR   HOST:PORT or unix:PATH (default $TOOLGATE_ADDRESS, else the\n"
    "                   daemon's default socket if present, else 127.0.0.1:7470)\n"
    "  --output FORMAT  table (default) or json\n"
    "  --help, -h       usage (of a command: toolgate COMMAND --help)\n";

std::string UsageLine(const Command& c) {
  std::string line = c.name;
  if (*c.synopsis) line += std::string(" ") + c.synopsis;
  return line;
}

// The commands whose name starts with `group ` (the subcommands of a group).
std::vector<const Command*> Group(const std::string& group) {
  std::vector<const Command*> out;
  for (const auto& c : Commands()) {
    if (std::string(c.name).rfind(group + " ", 0) == 0) out.push_back(&c);
  }
  return out;
}

void ListCommands(std::string* out, const std::vector<const Command*>& commands) {
  for (const Command* c : commands) {
    const std::string line = UsageLine(*c);
    if (line.size() <= 32) {
      *out += "  " + line + std::string(34 - line.size(), ' ') + c->summary + "\n";
    } else {
      *out += "  " + line + "\n" + std::string(36, ' ') + c->summary + "\n";
    }
  }
}

std::string MainUsage() {
  std::string out =
      "Usage: toolgate [--address ADDR] [--output table|json] COMMAND [ARGS]\n\n"
      "The command-line client of toolgated.\n\nCommands:\n";
  std::vector<const Command*> all;
  for (const auto& c : Commands()) all.push_back(&c);
  ListCommands(&out, all);
  out += "  help [COMMAND]                    this text, or a command's\n\n";
  out += kGlobalFlags;
  out += "\n";
  out += kExitCodes;
  return out;
}

std::string GroupUsage(const std::string& group) {
  std::string out = "Usage: toolgate " + group + " ACTION [ARGS]\n\nActions:\n";
  ListCommands(&out, Group(group));
  if (group == "dead-letters") out += "\nWithout an action: list.\n";
  out += "\nSee toolgate " + group + " ACTION --help.\n";
  return out;
}

// Fills the paragraphs of `text` to 80 columns; indented lines (flag lists) stay as written.
std::string Wrap(const std::string& text) {
  std::string out, line;
  auto flush = [&] {
    if (!line.empty()) out += line + "\n";
    line.clear();
  };
  std::istringstream in(text);
  std::string row;
  while (std::getline(in, row)) {
    if (row.empty() || row[0] == ' ') {
      flush();
      out += row + "\n";
      continue;
    }
    std::istringstream words(row);
    std::string word;
    while (words >> word) {
      if (!line.empty() && line.size() + 1 + word.size() > 80) flush();
      line += (line.empty() ? "" : " ") + word;
    }
  }
  flush();
  return out;
}

std::string CommandUsage(const Command& c) {
  std::string summary = c.summary;
  summary[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(summary[0])));
  return "Usage: toolgate " + UsageLine(c) + "\n\n" + summary + ".\n\n" + Wrap(c.details) + "\n" +
         kGlobalFlags;
}

int UsageError(const std::string& message, const std::string& usage) {
  std::fprintf(stderr, "toolgate: %s\n\n%s", message.c_str(), usage.c_str());
  return kUsage;
}

const Command* Find(const std::string& name) {
  for (const auto& c : Commands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

bool IsFlag(const std::string& a) { return a.size() > 1 && a[0] == '-'; }
bool IsHelp(const std::string& a) { return a == "--help" || a == "-h"; }

// Takes a flag at args[*i] ("--name VALUE" or "--name=VALUE") if it is one of `names`.
// Returns false, with *error set, for an unknown flag or a missing value.
bool TakeFlag(const std::vector<std::string>& args, size_t* i,
              const std::vector<std::string>& names, std::map<std::string, std::string>* flags,
              std::string* error) {
  const std::string& a = args[*i];
  const size_t eq = a.find('=');
  const std::string name = a.substr(0, eq);
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    *error = "unknown flag '" + name + "'";
    return false;
  }
  if (eq != std::string::npos) {
    (*flags)[name] = a.substr(eq + 1);
  } else if (*i + 1 < args.size()) {
    (*flags)[name] = args[++*i];
  } else {
    *error = name + " needs a value";
    return false;
  }
  return true;
}

// Applies --address and --output from `flags`; returns false with *error set when invalid.
bool ApplyGlobals(const std::map<std::string, std::string>& flags, Cli* cli, std::string* error) {
  if (auto it = flags.find("--address"); it != flags.end()) {
    if (it->second.empty()) {
      *error = "--address needs a value";
      return false;
    }
    cli->address = it->second;
  }
  if (auto it = flags.find("--output"); it != flags.end()) {
    if (it->second != "table" && it->second != "json") {
      *error = "--output must be table or json";
      return false;
    }
    cli->json = it->second == "json";
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> argv_(argv + 1, argv + argc);
  const std::vector<std::string> globals = {"--address", "--output"};
  Cli cli;
  std::string error;

  // Global flags before the command.
  std::map<std::string, std::string> flags;
  size_t i = 0;
  for (; i < argv_.size() && IsFlag(argv_[i]); ++i) {
    if (IsHelp(argv_[i])) {
      std::fputs(MainUsage().c_str(), stdout);
      return kOk;
    }
    if (!TakeFlag(argv_, &i, globals, &flags, &error)) return UsageError(error, MainUsage());
  }
  if (i == argv_.size()) return UsageError("no command given", MainUsage());
  std::string name = argv_[i++];

  // `help [COMMAND...]` is `COMMAND --help`.
  std::vector<std::string> rest(argv_.begin() + static_cast<long>(i), argv_.end());
  if (name == "help") {
    if (rest.empty() || IsHelp(rest[0])) {
      std::fputs(MainUsage().c_str(), stdout);
      return kOk;
    }
    name = rest[0];
    rest.assign(rest.begin() + 1, rest.end());
    rest.push_back("--help");
  }

  // A group takes an action (dead-letters defaults to list).
  const Command* command = Find(name);
  if (command == nullptr && !Group(name).empty()) {
    const std::string group = name;
    if (!rest.empty() && !IsFlag(rest[0])) {
      name = group + " " + rest[0];
      command = Find(name);
      if (command == nullptr) {
        return UsageError(group + ": unknown action '" + rest[0] + "'", GroupUsage(group));
      }
      rest.erase(rest.begin());
    } else if (std::any_of(rest.begin(), rest.end(), IsHelp)) {
      std::fputs(GroupUsage(group).c_str(), stdout);
      return kOk;
    } else if (group == "dead-letters") {
      command = Find("dead-letters list");
    } else {
      return UsageError(group + ": needs an action", GroupUsage(group));
    }
  }
  if (command == nullptr) return UsageError("unknown command '" + name + "'", MainUsage());

  // The command's own flags (and the global ones), then its positional arguments.
  const std::string usage = CommandUsage(*command);
  std::vector<std::string> names = command->flags;
  names.insert(names.end(), globals.begin(), globals.end());
  Args args;
  bool flags_done = false;
  for (size_t j = 0; j < rest.size(); ++j) {
    if (!flags_done && IsHelp(rest[j])) {
      std::fputs(usage.c_str(), stdout);
      return kOk;
    }
    if (!flags_done && rest[j] == "--") {
      flags_done = true;
    } else if (!flags_done && IsFlag(rest[j])) {
      if (!TakeFlag(rest, &j, names, &args.flags, &error)) {
        return UsageError(std::string(command->name) + ": " + error, usage);
      }
    } else {
      args.positional.push_back(rest[j]);
    }
  }
  for (const auto& g : globals) {
    if (auto it = args.flags.find(g); it != args.flags.end()) {
      flags[g] = it->second;
      args.flags.erase(it);
    }
  }
  if (!ApplyGlobals(flags, &cli, &error)) return UsageError(error, usage);
  if (args.positional.size() < command->min_args || args.positional.size() > command->max_args) {
    const std::string what =
        args.positional.size() < command->min_args
            ? std::string("missing arguments")
            : "unexpected argument '" + args.positional[command->max_args] + "'";
    return UsageError(std::string(command->name) + ": " + what, usage);
  }
  if (cli.address.empty()) cli.address = DefaultAddress();
  return command->run(cli, args);
}
