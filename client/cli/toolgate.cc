// toolgate: the command-line client of toolgated.
//
// Exit codes: 0 success; 1 the command ran and found a problem (a chain that does not verify,
// an error answer); 2 usage error; 3 the daemon could not be reached.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
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

const char kUsageText[] = R"(Usage: toolgate [--address ADDR] [--output table|json] COMMAND [ARGS]

Commands:
  status                      queue depth, spool, dead letters, upstream state
  send [flags]                record one event (smoke test); prints its eventId
      --agent ID --session ID [--tool NAME] [--args JSON] [--status S]
      --json EVENT              a toolgate.v1.Event in JSON (proto3 JSON names)
  dead-letters [list|retry|purge] [ID...]
                              list events the upstream refused; requeue or drop them
  sessions [--agent ID]       sessions in the local store, most recent first
  export SESSION              the session's stored events as JSON lines
  flush [--timeout-ms N]      ship what is queued now and wait for it
  verify FILE                 check the previousHash chains of a JSON-lines file ("-" = stdin)
  pending [--status S]        actions waiting for a human (S: pending, approved, rejected,
                              expired)
  approve ID [--reason R] [--approver A]
  reject ID --reason R [--approver A]
                              decide a pending action (approver default: $USER)
  policy lint FILE            compile a policy; name the line and the problem if it does not
  policy test FILE ACTION.json
                              decide ACTION offline: {"agent_id", "session_id", "tool_name",
                              "tool_type", "operation", "target_system", "initiator_type",
                              "arguments": {...}}
  policy reload               make the daemon re-read its policy file now

Global flags:
  --address ADDR   HOST:PORT or unix:PATH (default $TOOLGATE_ADDRESS, else the daemon's
                   default socket if present, else 127.0.0.1:7470)
  --output FORMAT  table (default) or json
  --help           this text

Exit codes: 0 ok, 1 problem found or error answer, 2 usage, 3 daemon unreachable.
)";

struct Cli {
  std::string address;
  bool json = false;
  std::vector<std::string> args;
};

// The daemon's default socket places (config::DefaultSocketPath) in the same order, but probed
// for an existing socket we may write to: a member of the socket's group is not root and
// cannot create files in /run/toolgate, yet can connect.
std::string DefaultAddress() {
  if (const char* a = std::getenv("TOOLGATE_ADDRESS"); a && *a) return a;
  std::vector<std::string> candidates;
  if (const char* r = std::getenv("RUNTIME_DIRECTORY"); r && *r) {
    candidates.push_back(std::string(r) + "/toolgate.sock");
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
  std::fprintf(stderr, "toolgate: %s: %s\n",
               s.error_code() == grpc::StatusCode::UNAVAILABLE
                   ? ("cannot reach toolgated at " + cli.address).c_str()
                   : "error",
               s.error_message().c_str());
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ? kUnreachable : kProblem;
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

// Takes "--name VALUE" out of args; returns false when absent.
bool TakeFlag(std::vector<std::string>* args, const std::string& name, std::string* value) {
  for (size_t i = 0; i < args->size(); ++i) {
    if ((*args)[i] == name && i + 1 < args->size()) {
      *value = (*args)[i + 1];
      args->erase(args->begin() + i, args->begin() + i + 2);
      return true;
    }
    if ((*args)[i].rfind(name + "=", 0) == 0) {
      *value = (*args)[i].substr(name.size() + 1);
      args->erase(args->begin() + i);
      return true;
    }
  }
  return false;
}

int Status(const Cli& cli) {
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
  std::printf("  upstream:        %s %s\n", r.upstream_state().c_str(), r.upstream_url().c_str());
  if (!r.upstream_last_error().empty()) {
    std::printf("  last error:      %s\n", r.upstream_last_error().c_str());
  }
  std::printf("  pending approvals: %llu   policy revision: %s\n",
              static_cast<unsigned long long>(r.pending_approvals()),
              r.policy_revision().empty() ? "(none)" : r.policy_revision().c_str());
  if (r.spool_failed()) {
    std::printf("  SPOOL FAILED: the store refuses writes; see the daemon's log and restart it\n");
  }
  return rc;
}

int Send(Cli cli) {
  Event ev;
  std::string json, value;
  if (TakeFlag(&cli.args, "--json", &json)) {
    auto st = google::protobuf::util::JsonStringToMessage(json, &ev);
    if (!st.ok()) {
      std::fprintf(stderr, "toolgate send: --json: %s\n", st.ToString().c_str());
      return kUsage;
    }
  }
  if (TakeFlag(&cli.args, "--agent", &value)) ev.set_agent_id(value);
  if (TakeFlag(&cli.args, "--session", &value)) ev.set_session_id(value);
  if (TakeFlag(&cli.args, "--tool", &value)) ev.mutable_tool_call()->set_tool_name(value);
  if (TakeFlag(&cli.args, "--args", &value)) ev.mutable_tool_call()->set_arguments_json(value);
  if (TakeFlag(&cli.args, "--status", &value)) {
    ev.mutable_tool_call()->set_response_status(value);
  }
  if (!cli.args.empty()) {
    std::fprintf(stderr, "toolgate send: unexpected argument '%s'\n", cli.args.front().c_str());
    return kUsage;
  }
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

int DeadLetters(Cli cli) {
  std::string verb = "list";
  if (!cli.args.empty() && cli.args[0][0] != '-') {
    verb = cli.args[0];
    cli.args.erase(cli.args.begin());
  }
  std::vector<uint64_t> ids;
  for (const auto& a : cli.args) {
    try {
      ids.push_back(std::stoull(a));
    } catch (...) {
      std::fprintf(stderr, "toolgate dead-letters: '%s' is not an id\n", a.c_str());
      return kUsage;
    }
  }
  auto stub = Admin::NewStub(Connect(cli));
  auto ctx = Ctx();
  if (verb == "list") {
    ListDeadLettersRequest req;
    req.set_limit(1000);
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
  if (verb == "retry") {
    RetryDeadLettersRequest req;
    for (auto id : ids) req.add_ids(id);
    RetryDeadLettersResponse resp;
    if (auto s = stub->RetryDeadLetters(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
    std::cout << (cli.json ? ToJson(resp) : std::to_string(resp.requeued()) + " requeued") << "\n";
    return kOk;
  }
  if (verb == "purge") {
    PurgeDeadLettersRequest req;
    for (auto id : ids) req.add_ids(id);
    PurgeDeadLettersResponse resp;
    if (auto s = stub->PurgeDeadLetters(ctx.get(), req, &resp); !s.ok()) return RpcFailed(s, cli);
    std::cout << (cli.json ? ToJson(resp) : std::to_string(resp.purged()) + " purged") << "\n";
    return kOk;
  }
  std::fprintf(stderr, "toolgate dead-letters: unknown action '%s' (list, retry, purge)\n",
               verb.c_str());
  return kUsage;
}

int Sessions(Cli cli) {
  ListSessionsRequest req;
  std::string agent;
  if (TakeFlag(&cli.args, "--agent", &agent)) req.set_agent_id(agent);
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

int Export(const Cli& cli) {
  if (cli.args.size() != 1) {
    std::fprintf(stderr, "toolgate export: needs one SESSION\n");
    return kUsage;
  }
  auto stub = Admin::NewStub(Connect(cli));
  ExportSessionRequest req;
  req.set_session_id(cli.args[0]);
  auto ctx = Ctx(300);
  auto reader = stub->ExportSession(ctx.get(), req);
  StoredEvent ev;
  while (reader->Read(&ev)) std::cout << ev.event_json() << "\n";
  if (auto s = reader->Finish(); !s.ok()) return RpcFailed(s, cli);
  return kOk;
}

int Flush(Cli cli) {
  FlushRequest req;
  std::string v;
  if (TakeFlag(&cli.args, "--timeout-ms", &v)) req.set_timeout_ms(std::stoul(v));
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

int Verify(const Cli& cli) {
  if (cli.args.size() != 1) {
    std::fprintf(stderr, "toolgate verify: needs one FILE (\"-\" for stdin)\n");
    return kUsage;
  }
  std::ifstream file;
  std::istream* in = &std::cin;
  if (cli.args[0] != "-") {
    file.open(cli.args[0]);
    if (!file) {
      std::fprintf(stderr, "toolgate verify: cannot read '%s'\n", cli.args[0].c_str());
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

int Pending(Cli cli) {
  ListPendingRequest req;
  std::string status;
  if (TakeFlag(&cli.args, "--status", &status)) {
    PendingStatus st;
    std::string upper = status;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (!PendingStatus_Parse(upper, &st)) {
      std::fprintf(stderr,
                   "toolgate pending: --status must be pending, approved, rejected or "
                   "expired\n");
      return kUsage;
    }
    req.set_status(st);
  }
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
    std::string st = PendingStatus_Name(a.status());
    for (char& c : st) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::printf("%-36s %-9s %-18s %-16s %-20s %s\n", a.id().c_str(), st.c_str(),
                a.action().tool_name().c_str(), a.action().agent_id().c_str(), a.rule_id().c_str(),
                a.expires_at().c_str());
  }
  return kOk;
}

int DecideCmd(Cli cli, bool approve) {
  const char* verb = approve ? "approve" : "reject";
  std::string reason, approver;
  TakeFlag(&cli.args, "--reason", &reason);
  if (!TakeFlag(&cli.args, "--approver", &approver)) {
    const char* user = std::getenv("USER");
    approver = user && *user ? user : "cli";
  }
  if (cli.args.size() != 1) {
    std::fprintf(stderr, "toolgate %s: needs one pending action ID\n", verb);
    return kUsage;
  }
  if (!approve && reason.empty()) {
    std::fprintf(stderr, "toolgate reject: --reason is required\n");
    return kUsage;
  }
  auto stub = toolgate::v1::Guardian::NewStub(Connect(cli));
  auto ctx = Ctx();
  DecideRequest req;
  req.set_id(cli.args[0]);
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

std::string ReadFile(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int Policy(Cli cli) {
  if (cli.args.empty()) {
    std::fprintf(stderr, "toolgate policy: lint FILE | test FILE ACTION.json | reload\n");
    return kUsage;
  }
  const std::string verb = cli.args[0];
  if (verb == "reload") {
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
  if ((verb != "lint" || cli.args.size() != 2) && (verb != "test" || cli.args.size() != 3)) {
    std::fprintf(stderr, "toolgate policy: lint FILE | test FILE ACTION.json | reload\n");
    return kUsage;
  }
  bool ok = false;
  const std::string text = ReadFile(cli.args[1], &ok);
  if (!ok) {
    std::fprintf(stderr, "toolgate policy: cannot read '%s'\n", cli.args[1].c_str());
    return kUsage;
  }
  auto rules = toolgate::policy::CompilePolicy(text, cli.args[1]);
  if (!rules.ok()) {
    if (cli.json) {
      std::cout << nlohmann::json({{"ok", false}, {"error", std::string(rules.status().message())}})
                << "\n";
    } else {
      std::printf("%s\n", std::string(rules.status().message()).c_str());
    }
    return kProblem;
  }
  if (verb == "lint") {
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
  const std::string action_text = ReadFile(cli.args[2], &ok);
  auto j = nlohmann::json::parse(action_text, nullptr, false);
  if (!ok || !j.is_object()) {
    std::fprintf(stderr, "toolgate policy test: '%s' must be a JSON object\n", cli.args[2].c_str());
    return kUsage;
  }
  auto str = [&](const char* a, const char* b) {
    for (const char* k : {a, b}) {
      if (j.contains(k) && j[k].is_string()) return j[k].get<std::string>();
    }
    return std::string();
  };
  nlohmann::json args = j.contains("arguments") ? j["arguments"] : nlohmann::json(nullptr);
  toolgate::policy::Action action{str("agent_id", "agentId"),
                                  str("session_id", "sessionId"),
                                  str("tool_name", "toolName"),
                                  str("tool_type", "toolType"),
                                  str("operation", "operation"),
                                  str("target_system", "targetSystem"),
                                  str("initiator_type", "initiatorType"),
                                  str("initiator_id", "initiatorId"),
                                  args.is_null() ? nullptr : &args};
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

}  // namespace

int main(int argc, char** argv) {
  Cli cli;
  std::vector<std::string> rest(argv + 1, argv + argc);
  std::string output = "table";
  if (TakeFlag(&rest, "--address", &cli.address) && cli.address.empty()) {
    std::fprintf(stderr, "toolgate: --address needs a value\n");
    return kUsage;
  }
  TakeFlag(&rest, "--output", &output);
  if (output != "table" && output != "json") {
    std::fprintf(stderr, "toolgate: --output must be table or json\n");
    return kUsage;
  }
  cli.json = output == "json";
  if (cli.address.empty()) cli.address = DefaultAddress();
  if (rest.empty() || rest[0] == "--help" || rest[0] == "-h" || rest[0] == "help") {
    std::fputs(kUsageText, rest.empty() ? stderr : stdout);
    return rest.empty() ? kUsage : kOk;
  }
  const std::string cmd = rest[0];
  cli.args.assign(rest.begin() + 1, rest.end());
  for (const auto& a : cli.args) {
    if (a == "--help" || a == "-h") {
      std::fputs(kUsageText, stdout);
      return kOk;
    }
  }
  if (cmd == "status") return Status(cli);
  if (cmd == "send") return Send(cli);
  if (cmd == "dead-letters") return DeadLetters(cli);
  if (cmd == "sessions") return Sessions(cli);
  if (cmd == "export") return Export(cli);
  if (cmd == "flush") return Flush(cli);
  if (cmd == "verify") return Verify(cli);
  if (cmd == "policy") return Policy(cli);
  if (cmd == "pending") return Pending(cli);
  if (cmd == "approve") return DecideCmd(cli, true);
  if (cmd == "reject") return DecideCmd(cli, false);
  std::fprintf(stderr, "toolgate: unknown command '%s'\n\n%s", cmd.c_str(), kUsageText);
  return kUsage;
}
