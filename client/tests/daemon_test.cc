// The C++ client against the real toolgated binary (TOOLGATED, default build/daemon/toolgated),
// started on a temporary data directory with a Unix socket in it, TCP and HTTP on port 0; the
// bound addresses come from its "toolgated started" log line (as tests/integration/conftest.py
// reads them). Events recorded through the client are read back with Admin.ExportSession.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "toolgate/client.h"
#include "toolgate/guarded_call.h"
#include "toolgate/v1/admin.grpc.pb.h"
#include "toolgate/v1/guardian.grpc.pb.h"

extern char** environ;

namespace toolgate {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

// One toolgated process on `dir`, restartable on the same directory.
class Toolgated {
 public:
  Toolgated(fs::path dir, std::vector<std::string> extra)
      : dir_(std::move(dir)), extra_(std::move(extra)) {}
  ~Toolgated() { Stop(SIGKILL); }

  void Start() {
    std::vector<std::string> args = {Env("TOOLGATED", "build/daemon/toolgated"),
                                     "--data-dir",
                                     (dir_ / "data").string(),
                                     "--socket",
                                     socket(),
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--http-listen",
                                     "127.0.0.1:0"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string(*e).rfind("TOOLGATE_", 0) != 0) env_strings.push_back(*e);
    }
    std::vector<char*> envp;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    {
      std::lock_guard<std::mutex> l(mu_);
      started_ = false;
      exited_ = false;
    }
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      ::dup2(fds[1], 2);
      ::close(fds[0]);
      ::close(fds[1]);
      ::execve(argv[0], argv.data(), envp.data());
      std::perror("execve toolgated");
      ::_exit(127);
    }
    ::close(fds[1]);
    pump_ = std::thread([this, fd = fds[0]] { Pump(fd); });
    std::unique_lock<std::mutex> l(mu_);
    ASSERT_TRUE(cv_.wait_for(l, std::chrono::seconds(20), [this] { return started_ || exited_; }));
    ASSERT_TRUE(started_) << "toolgated did not start:\n" << log_;
  }

  void Stop(int sig = SIGTERM) {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);  // a stopped process cannot handle SIGTERM
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    if (pump_.joinable()) pump_.join();
  }

  void Signal(int sig) { ::kill(pid_, sig); }
  std::string socket() const { return (dir_ / "tg.sock").string(); }
  std::string unix_address() const { return "unix:" + socket(); }
  std::string tcp_address() {
    std::lock_guard<std::mutex> l(mu_);
    return tcp_;
  }
  std::string log() {
    std::lock_guard<std::mutex> l(mu_);
    return log_;
  }

 private:
  void Pump(int fd) {
    std::string partial;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) {
      partial.append(buf, static_cast<size_t>(n));
      size_t nl;
      while ((nl = partial.find('\n')) != std::string::npos) {
        const std::string line = partial.substr(0, nl);
        partial.erase(0, nl + 1);
        std::lock_guard<std::mutex> l(mu_);
        log_ += line + "\n";
        if (line.find("\"toolgated started\"") != std::string::npos) {
          auto j = nlohmann::json::parse(line, nullptr, false);
          if (!j.is_discarded() && j.contains("grpc")) tcp_ = j["grpc"].get<std::string>();
          started_ = true;
          cv_.notify_all();
        }
      }
    }
    ::close(fd);
    std::lock_guard<std::mutex> l(mu_);
    exited_ = true;
    cv_.notify_all();
  }

  fs::path dir_;
  std::vector<std::string> extra_;
  pid_t pid_ = -1;
  std::thread pump_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false, exited_ = false;
  std::string tcp_, log_;
};

constexpr char kPolicy[] = R"(revision: "client-test.1"
default: allow
rules:
  - id: deny-rm-rf
    effect: deny
    reason: recursive delete
    match:
      tool_name: "shell*"
      arguments:
        - {pointer: /command, regex: "rm\\s+-rf"}
  - id: big-payment
    effect: require_approval
    reason: payment over 1000
    approval_timeout: 1m
    match:
      tool_name: send_payment
      arguments:
        - {pointer: /amount, ">": 1000}
)";

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tg-cpp-client-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "policy.yaml") << kPolicy;
    daemon_ = std::make_unique<Toolgated>(
        dir_, std::vector<std::string>{"--set", "policy.file=" + (dir_ / "policy.yaml").string()});
    daemon_->Start();
    channel_ = grpc::CreateChannel(daemon_->unix_address(), grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    // An idle open channel holds toolgated's SIGTERM drain for shutdown_timeout / 2.
    channel_.reset();
    daemon_->Stop(SIGTERM);
    daemon_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  ClientOptions Options(const std::string& session) {
    ClientOptions o;
    o.address = daemon_->unix_address();
    o.agent_id = "cpp-agent";
    o.session_id = session;
    o.backoff_initial = absl::Milliseconds(20);
    o.backoff_max = absl::Milliseconds(500);
    return o;
  }

  // The session's stored events (Admin.ExportSession), parsed.
  std::vector<nlohmann::json> Export(const std::string& session) {
    auto admin = v1::Admin::NewStub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExportSessionRequest req;
    req.set_session_id(session);
    auto reader = admin->ExportSession(&ctx, req);
    std::vector<nlohmann::json> out;
    v1::StoredEvent e;
    while (reader->Read(&e)) out.push_back(nlohmann::json::parse(e.event_json()));
    EXPECT_TRUE(reader->Finish().ok());
    return out;
  }

  // Polls `pred` (e.g. an export) until it holds, up to 10 s: the daemon records a Check's
  // audit event lazily, with the next commit or within 20 ms.
  static bool Await(const std::function<bool()>& pred) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }

  static std::set<std::string> Ids(const std::vector<nlohmann::json>& events,
                                   const std::string& category = "tool_api") {
    std::set<std::string> ids;
    for (const auto& e : events) {
      if (e["category"] == category) ids.insert(e["eventId"].get<std::string>());
    }
    return ids;
  }

  fs::path dir_;
  std::unique_ptr<Toolgated> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
};

Event Tool(const std::string& name, std::string args) {
  ToolCall t;
  t.tool_name = name;
  t.arguments_json = std::move(args);
  t.response_status = "success";
  return Event(std::move(t));
}

// (3) Record N events over the Unix socket, Flush, and find each one in the store.
TEST_F(DaemonTest, RecordFlushAndExport) {
  constexpr int kEvents = 2000;
  auto client = Client::Create(Options("cpp-export"));
  ASSERT_TRUE(client.ok()) << client.status();
  std::set<std::string> ids;
  for (int i = 0; i < kEvents; ++i) {
    std::string id;
    ASSERT_TRUE(
        (*client)->Record(Tool("search", R"({"q": ")" + std::to_string(i) + "\"}"), &id).ok());
    ids.insert(id);
  }
  ASSERT_TRUE((*client)->Flush(absl::Now() + absl::Seconds(30)).ok())
      << (*client)->stats().last_error;
  ClientStats st = (*client)->stats();
  EXPECT_EQ(st.acked, static_cast<uint64_t>(kEvents));
  EXPECT_EQ(st.dropped, 0u);
  EXPECT_EQ(st.rejected, 0u);
  const auto stored = Export("cpp-export");
  EXPECT_EQ(stored.size(), static_cast<size_t>(kEvents));
  EXPECT_EQ(Ids(stored), ids);
  ASSERT_FALSE(stored.empty());
  EXPECT_EQ(stored[0]["payload"]["toolName"], "search");
  EXPECT_EQ(stored[0]["payload"]["argumentsHash"].get<std::string>().size(), 64u);
  EXPECT_FALSE(stored[0]["payload"].contains("arguments"));
  EXPECT_TRUE((*client)->Close(absl::Now() + absl::Seconds(10)).ok());
}

TEST_F(DaemonTest, RecordOverTcp) {
  ClientOptions o = Options("cpp-tcp");
  o.address = daemon_->tcp_address();
  ASSERT_THAT(o.address, HasSubstr("127.0.0.1:"));
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok());
  std::set<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    std::string id;
    ASSERT_TRUE((*client)->Record(Tool("fetch", "{}"), &id).ok());
    ids.insert(id);
  }
  EXPECT_TRUE((*client)->Close(absl::Now() + absl::Seconds(10)).ok());
  EXPECT_EQ(Ids(Export("cpp-tcp")), ids);
}

// (1) with the real daemon stopped by SIGSTOP: Record returns at once, drops are counted only
// beyond the bound, and everything buffered is delivered once the daemon runs again.
TEST_F(DaemonTest, StalledDaemonDoesNotBlockRecord) {
  ClientOptions o = Options("cpp-stall");
  o.max_buffered_events = 200;
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE((*client)->Record(Tool("search", "{}")).ok());
  ASSERT_TRUE((*client)->Flush(absl::Now() + absl::Seconds(10)).ok());

  daemon_->Signal(SIGSTOP);
  std::chrono::nanoseconds slowest{0};
  for (int i = 0; i < 250; ++i) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = (*client)->Record(Tool("search", "{}"));
    slowest = std::max(slowest, std::chrono::steady_clock::now() - start);
    EXPECT_EQ(s.ok(), i < 200) << i << ": " << s;
    EXPECT_EQ((*client)->stats().dropped, i < 200 ? 0u : static_cast<uint64_t>(i - 199));
  }
  EXPECT_LT(slowest, std::chrono::milliseconds(250));
  EXPECT_TRUE(absl::IsDeadlineExceeded((*client)->Flush(absl::Now() + absl::Milliseconds(300))));
  EXPECT_EQ((*client)->stats().acked, 5u);

  daemon_->Signal(SIGCONT);
  ASSERT_TRUE((*client)->Flush(absl::Now() + absl::Seconds(30)).ok())
      << (*client)->stats().last_error;
  ClientStats st = (*client)->stats();
  EXPECT_EQ(st.recorded, 205u);
  EXPECT_EQ(st.acked, 205u);
  EXPECT_EQ(st.dropped, 50u);
  EXPECT_EQ(Export("cpp-stall").size(), 205u);
}

// The daemon killed (-9) and restarted on the same directory: what was recorded meanwhile is
// delivered on a new stream; nothing recorded is missing from the store.
TEST_F(DaemonTest, DaemonRestart) {
  auto client = Client::Create(Options("cpp-restart"));
  ASSERT_TRUE(client.ok());
  std::set<std::string> ids;
  auto record = [&](int n) {
    for (int i = 0; i < n; ++i) {
      std::string id;
      ASSERT_TRUE((*client)->Record(Tool("search", "{}"), &id).ok());
      ids.insert(id);
    }
  };
  record(100);
  ASSERT_TRUE((*client)->Flush(absl::Now() + absl::Seconds(10)).ok());
  daemon_->Stop(SIGKILL);
  record(100);
  EXPECT_TRUE(absl::IsDeadlineExceeded((*client)->Flush(absl::Now() + absl::Milliseconds(200))));
  daemon_->Start();
  ASSERT_TRUE((*client)->Flush(absl::Now() + absl::Seconds(30)).ok())
      << (*client)->stats().last_error;
  ClientStats st = (*client)->stats();
  EXPECT_EQ(st.acked, 200u);
  EXPECT_GE(st.reconnects, 1u);
  EXPECT_EQ(Ids(Export("cpp-restart")), ids);
}

// GuardedCall with the policy file: allowed runs and is recorded, denied does not run.
TEST_F(DaemonTest, GuardedCallAllowedAndDenied) {
  auto created = Client::Create(Options("cpp-guard"));
  ASSERT_TRUE(created.ok());
  Client& client = **created;

  Action ls;
  ls.tool_name = "shell_exec";
  ls.tool_type = "shell";
  ls.arguments_json = R"({"command": "ls /tmp"})";
  Verdict verdict;
  GuardOptions go;
  go.verdict = &verdict;
  go.endpoint = "local";
  absl::StatusOr<std::string> out = GuardedCall(
      client, ls,
      [&]() -> absl::StatusOr<std::string> {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the tool's own work
        return std::string("a b c");
      },
      go);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "a b c");
  EXPECT_TRUE(verdict.allowed);
  EXPECT_EQ(verdict.check.decision, Decision::kAllow);
  EXPECT_EQ(verdict.check.policy_revision, "client-test.1");

  Action rm = ls;
  rm.arguments_json = R"({"command": "rm -rf /"})";
  bool ran = false;
  absl::Status denied = GuardedCall(client, rm, [&] {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_FALSE(ran);
  EXPECT_TRUE(absl::IsPermissionDenied(denied)) << denied;
  EXPECT_THAT(std::string(denied.message()),
              HasSubstr("denied by rule deny-rm-rf: recursive delete"));

  ASSERT_TRUE(client.Flush(absl::Now() + absl::Seconds(10)).ok());
  std::vector<nlohmann::json> stored;
  ASSERT_TRUE(Await([&] {
    stored = Export("cpp-guard");
    return stored.size() >= 3;
  }));
  std::vector<nlohmann::json> tools, checks;
  for (const auto& e : stored) (e["category"] == "tool_api" ? tools : checks).push_back(e);
  ASSERT_EQ(tools.size(), 1u);  // the denied call did not run, so it has no tool_call
  EXPECT_EQ(tools[0]["payload"]["toolName"], "shell_exec");
  EXPECT_EQ(tools[0]["payload"]["responseStatus"], "success");
  EXPECT_EQ(tools[0]["payload"]["endpoint"], "local");
  EXPECT_GE(tools[0]["payload"]["durationMs"].get<int64_t>(), 30);
  EXPECT_EQ(tools[0]["causationEventId"], verdict.check.event_id);
  EXPECT_EQ(tools[0]["toolType"], "shell");
  // Both checks are in the chain as approval events (the daemon records them).
  std::vector<std::string> decisions;
  for (const auto& c : checks) {
    if (c["category"] == "approval") decisions.push_back(c["payload"]["decision"]);
  }
  EXPECT_THAT(decisions, ::testing::ElementsAre("allow", "deny"));
}

// REQUIRE_APPROVAL: GuardedCall waits until a human decides through Guardian.Decide.
TEST_F(DaemonTest, GuardedCallWaitsForApproval) {
  auto created = Client::Create(Options("cpp-approval"));
  ASSERT_TRUE(created.ok());
  Client& client = **created;
  // The approver: watches the pending actions and decides the first two.
  std::thread approver([this] {
    auto guardian = v1::Guardian::NewStub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto watch = guardian->WatchPending(&ctx, v1::WatchPendingRequest());
    v1::PendingAction pending;
    int decided = 0;
    while (decided < 2 && watch->Read(&pending)) {
      if (pending.status() != v1::PENDING) continue;
      grpc::ClientContext dctx;
      v1::DecideRequest req;
      req.set_id(pending.id());
      req.set_approve(decided == 0);
      req.set_reason(decided == 0 ? "invoice checked" : "unknown payee");
      req.set_approver_id("alice");
      v1::DecideResponse resp;
      EXPECT_TRUE(guardian->Decide(&dctx, req, &resp).ok());
      ++decided;
    }
    ctx.TryCancel();
    (void)watch->Finish();
  });
  Action pay;
  pay.tool_name = "send_payment";
  pay.arguments_json = R"({"amount": 5000})";
  int runs = 0;
  Verdict verdict;
  GuardOptions go;
  go.verdict = &verdict;
  go.approval_timeout = absl::Seconds(30);
  absl::Status first = GuardedCall(
      client, pay,
      [&] {
        ++runs;
        return absl::OkStatus();
      },
      go);
  EXPECT_TRUE(first.ok()) << first;
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(verdict.check.decision, Decision::kRequireApproval);
  EXPECT_EQ(verdict.check.rule_id, "big-payment");
  ASSERT_TRUE(verdict.approval.has_value());
  EXPECT_EQ(verdict.approval->status, ApprovalStatus::kApproved);
  EXPECT_EQ(verdict.approval->approver_id, "alice");

  absl::Status second = GuardedCall(
      client, pay,
      [&] {
        ++runs;
        return absl::OkStatus();
      },
      go);
  EXPECT_EQ(runs, 1);
  EXPECT_TRUE(absl::IsPermissionDenied(second)) << second;
  EXPECT_THAT(std::string(second.message()), HasSubstr("rejected by alice: unknown payee"));
  approver.join();
}

// The example agent of client/examples (the README's C++ code) against the real daemon.
TEST_F(DaemonTest, ExampleAgentRuns) {
  const std::string agent = Env("TOOLGATE_EXAMPLE_AGENT", "build/client/example_agent");
  const std::string session = "example-" + NewEventId();
  const std::string cmd = agent + " " + daemon_->unix_address() + " " + session + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string output;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), p) != nullptr) output += buf;
  const int status = ::pclose(p);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  EXPECT_THAT(output, HasSubstr("invoice for c-19: 120.5"));
  EXPECT_THAT(output, HasSubstr("recorded 3, acknowledged 3, dropped 0"));
  std::vector<nlohmann::json> stored;
  ASSERT_TRUE(Await([&] {
    stored = Export(session);
    return stored.size() >= 4;
  }));
  std::vector<std::string> categories;
  for (const auto& e : stored) categories.push_back(e["category"]);
  // session_start, the check (recorded by the daemon), the tool call, session_end.
  EXPECT_THAT(categories, ::testing::UnorderedElementsAre("session_start", "approval", "tool_api",
                                                          "session_end"));
}

}  // namespace
}  // namespace toolgate
