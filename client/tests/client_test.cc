// Unit tests of the C++ client against in-process fake Events and Policy servers (sync gRPC
// services on 127.0.0.1:0): a daemon that never acknowledges, one that does not even read, one
// that drops the stream, one that pushes back, one that refuses an event; the policy helpers.
#include "toolgate/client.h"

#include <grpcpp/grpcpp.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "client/lib/ack_policy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "toolgate/guarded_call.h"
#include "toolgate/v1/events.grpc.pb.h"
#include "toolgate/v1/policy.grpc.pb.h"

namespace toolgate {
namespace {

using client_internal::AckAction;
using client_internal::DecideAck;
using ServerStream = grpc::ServerReaderWriter<v1::StreamAck, v1::StreamRequest>;
using ::testing::HasSubstr;

// ---- A scripted Events server -------------------------------------------------------------

class FakeEvents final : public v1::Events::Service {
 public:
  // What stream number `n` (1, 2, …) does; runs on a gRPC thread.
  using Script = std::function<grpc::Status(FakeEvents*, grpc::ServerContext*, ServerStream*, int)>;
  explicit FakeEvents(Script script) : script_(std::move(script)) {}

  grpc::Status Stream(grpc::ServerContext* ctx, ServerStream* stream) override {
    int n;
    {
      std::lock_guard<std::mutex> l(mu_);
      n = ++streams_;
    }
    return script_(this, ctx, stream, n);
  }

  void Note(int stream, const v1::StreamRequest& request) {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& e : request.events()) {
      received_[stream].push_back(e);
      at_[stream].push_back(std::chrono::steady_clock::now());
    }
    cv_.notify_all();
  }

  // Waits (up to 10 s) until `pred` holds, re-checked whenever events arrive.
  bool Await(const std::function<bool()>& pred) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, std::chrono::seconds(10), [&] { return pred(); });
  }
  size_t CountLocked(int stream) { return received_[stream].size(); }
  std::vector<v1::Event> Received(int stream) {
    std::lock_guard<std::mutex> l(mu_);
    return received_[stream];
  }
  std::vector<std::chrono::steady_clock::time_point> ArrivalTimes(int stream) {
    std::lock_guard<std::mutex> l(mu_);
    return at_[stream];
  }
  int streams() {
    std::lock_guard<std::mutex> l(mu_);
    return streams_;
  }
  void Release() {
    std::lock_guard<std::mutex> l(mu_);
    released_ = true;
    cv_.notify_all();
  }
  // Blocks until the call is cancelled or Release(); never reads.
  void HoldWithoutReading(grpc::ServerContext* ctx) {
    std::unique_lock<std::mutex> l(mu_);
    while (!released_ && !ctx->IsCancelled()) cv_.wait_for(l, std::chrono::milliseconds(10));
  }

  // Scripts.
  static grpc::Status AckAll(FakeEvents* f, grpc::ServerContext*, ServerStream* s, int n) {
    v1::StreamRequest req;
    while (s->Read(&req)) {
      f->Note(n, req);
      v1::StreamAck ack;
      ack.set_sequence(req.sequence());
      for (const auto& e : req.events()) ack.add_event_ids(e.event_id());
      if (!s->Write(ack)) break;
    }
    return grpc::Status::OK;
  }
  static grpc::Status NeverAck(FakeEvents* f, grpc::ServerContext*, ServerStream* s, int n) {
    v1::StreamRequest req;
    while (s->Read(&req)) f->Note(n, req);
    return grpc::Status::OK;
  }

 private:
  Script script_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, std::vector<v1::Event>> received_;
  std::map<int, std::vector<std::chrono::steady_clock::time_point>> at_;
  int streams_ = 0;
  bool released_ = false;
};

// ---- A scripted Policy server --------------------------------------------------------------

class FakePolicy final : public v1::Policy::Service {
 public:
  grpc::Status Check(grpc::ServerContext*, const v1::CheckRequest* req,
                     v1::CheckResponse* resp) override {
    std::lock_guard<std::mutex> l(mu_);
    last_action_ = req->action();
    *resp = answer_;
    return grpc::Status::OK;
  }
  grpc::Status WaitForDecision(grpc::ServerContext*, const v1::WaitRequest* req,
                               grpc::ServerWriter<v1::WaitUpdate>* w) override {
    v1::WaitUpdate hb;
    hb.set_pending_action_id(req->pending_action_id());
    hb.set_status(v1::PENDING);
    hb.set_heartbeat(true);
    w->Write(hb);
    v1::WaitUpdate final_update;
    {
      std::lock_guard<std::mutex> l(mu_);
      final_update = decision_;
    }
    final_update.set_pending_action_id(req->pending_action_id());
    w->Write(final_update);
    return grpc::Status::OK;
  }
  void Answer(v1::CheckResponse r) {
    std::lock_guard<std::mutex> l(mu_);
    answer_ = std::move(r);
  }
  void Decide(v1::WaitUpdate u) {
    std::lock_guard<std::mutex> l(mu_);
    decision_ = std::move(u);
  }
  v1::Action last_action() {
    std::lock_guard<std::mutex> l(mu_);
    return last_action_;
  }

 private:
  std::mutex mu_;
  v1::CheckResponse answer_;
  v1::WaitUpdate decision_;
  v1::Action last_action_;
};

class FakeDaemon {
 public:
  explicit FakeDaemon(FakeEvents::Script script) : events_(std::move(script)) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&events_);
    builder.RegisterService(&policy_);
    server_ = builder.BuildAndStart();
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  ~FakeDaemon() {
    events_.Release();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  FakeEvents& events() { return events_; }
  FakePolicy& policy() { return policy_; }
  const std::string& address() const { return address_; }

 private:
  FakeEvents events_;
  FakePolicy policy_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

ClientOptions Options(const std::string& address) {
  ClientOptions o;
  o.address = address;
  o.agent_id = "agent-1";
  o.session_id = "session-1";
  o.backoff_initial = absl::Milliseconds(20);
  o.backoff_max = absl::Milliseconds(200);
  return o;
}

std::unique_ptr<Client> Make(const ClientOptions& o) {
  auto c = Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(c).value();
}

Event ToolEvent(const std::string& tool, std::string args = R"({"q": "x"})") {
  ToolCall t;
  t.tool_name = tool;
  t.arguments_json = std::move(args);
  return Event(std::move(t));
}

bool IsUuidV4(const std::string& s) {
  if (s.size() != 36 || s[14] != '4') return false;
  if (std::string("89ab").find(s[19]) == std::string::npos) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash != (s[i] == '-')) return false;
    if (!dash && std::string("0123456789abcdef").find(s[i]) == std::string::npos) return false;
  }
  return true;
}

// ---- Pure parts ----------------------------------------------------------------------------

TEST(AckPolicy, Table) {
  struct Case {
    int32_t code;
    size_t events;
    AckAction want;
  } cases[] = {
      {0, 1, AckAction::kDurable},      {0, 500, AckAction::kDurable},
      {3, 1, AckAction::kReject},       {3, 2, AckAction::kSplit},
      {3, 500, AckAction::kSplit},      {8, 1, AckAction::kRetryLater},    // RESOURCE_EXHAUSTED
      {8, 500, AckAction::kRetryLater}, {14, 10, AckAction::kRetryLater},  // UNAVAILABLE
      {13, 10, AckAction::kRetryLater},                                    // INTERNAL
      {9, 10, AckAction::kRetryLater},                                     // FAILED_PRECONDITION
  };
  for (const Case& c : cases) {
    EXPECT_EQ(DecideAck(c.code, c.events), c.want) << "code " << c.code << " n " << c.events;
  }
}

TEST(EventId, IsRandomUuidV4) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    std::string id = NewEventId();
    EXPECT_TRUE(IsUuidV4(id)) << id;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 1000u);
}

TEST(ClientOptionsTest, BadOptionsAreRefused) {
  ClientOptions o = Options("127.0.0.1:1");
  o.max_buffered_events = 0;
  auto c = Client::Create(o);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(c.status()));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("max_buffered_events"));
}

TEST(Record, NeedsAgentAndSessionAndRefusesAfterClose) {
  FakeDaemon daemon(FakeEvents::AckAll);
  ClientOptions o = Options(daemon.address());
  o.agent_id.clear();
  auto client = Make(o);
  absl::Status s = client->Record(ToolEvent("search"));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("agent_id"));
  Event e = ToolEvent("search");
  e.agent_id = "agent-2";
  EXPECT_TRUE(client->Record(e).ok());
  EXPECT_TRUE(client->Close(absl::Now() + absl::Seconds(10)).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(client->Record(e)));
  EXPECT_TRUE(client->Close(absl::Now()).ok());  // idempotent: the first answer
  const auto received = daemon.events().Received(1);
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received[0].agent_id(), "agent-2");
  EXPECT_EQ(received[0].session_id(), "session-1");
  EXPECT_TRUE(received[0].has_tool_call());
  EXPECT_TRUE(IsUuidV4(received[0].event_id()));
  EXPECT_FALSE(received[0].source_timestamp().empty());
}

// ---- (1) Non-blocking record under a stalled daemon -----------------------------------------

// The daemon reads every batch and never acknowledges. Record() returns at once every time;
// the buffer holds exactly max_buffered_events and counts a drop for each event beyond.
TEST(NonBlocking, StalledDaemonDropsOnlyWhenFull) {
  FakeDaemon daemon(FakeEvents::NeverAck);
  ClientOptions o = Options(daemon.address());
  o.max_buffered_events = 100;
  o.max_in_flight_batches = 1000;  // so that all 100 are sent, whatever the batching
  auto client = Make(o);
  std::chrono::nanoseconds slowest{0};
  for (int i = 0; i < 150; ++i) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = client->Record(ToolEvent("search"));
    slowest = std::max(slowest, std::chrono::steady_clock::now() - start);
    const uint64_t want_dropped = i < 100 ? 0 : i - 99;
    EXPECT_EQ(client->stats().dropped, want_dropped) << "after event " << i;
    if (i < 100) {
      EXPECT_TRUE(s.ok()) << i << ": " << s;
    } else {
      EXPECT_TRUE(absl::IsResourceExhausted(s)) << i << ": " << s;
    }
  }
  // All 100 reached the daemon and stay in the buffer while unacknowledged.
  ASSERT_TRUE(daemon.events().Await([&] { return daemon.events().CountLocked(1) == 100; }));
  for (int i = 0; i < 10; ++i)
    EXPECT_TRUE(absl::IsResourceExhausted(client->Record(ToolEvent("x"))));
  ClientStats st = client->stats();
  EXPECT_EQ(st.recorded, 100u);
  EXPECT_EQ(st.dropped, 60u);
  EXPECT_EQ(st.acked, 0u);
  EXPECT_EQ(st.buffered, 100u);
  EXPECT_LT(slowest, std::chrono::milliseconds(250)) << "Record() waited on the daemon";

  absl::Status flushed = client->Flush(absl::Now() + absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(flushed)) << flushed;
  EXPECT_THAT(std::string(flushed.message()), HasSubstr("100 events"));

  const auto start = std::chrono::steady_clock::now();
  absl::Status closed = client->Close(absl::Now() + absl::Milliseconds(200));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_TRUE(absl::IsDeadlineExceeded(closed)) << closed;
  EXPECT_EQ(client->stats().abandoned, 100u);
}

// The daemon does not even read: gRPC flow control blocks the client's writer. Record() still
// returns at once, and Close() cancels the blocked write by its deadline.
TEST(NonBlocking, FlowControlBlockedWriterDoesNotBlockRecordOrClose) {
  FakeDaemon daemon([](FakeEvents* f, grpc::ServerContext* ctx, ServerStream*, int) {
    f->HoldWithoutReading(ctx);
    return grpc::Status::OK;
  });
  ClientOptions o = Options(daemon.address());
  o.max_buffered_events = 400;
  auto client = Make(o);
  const std::string big_args = "{\"blob\": \"" + std::string(64 * 1024, 'a') + "\"}";
  std::chrono::nanoseconds slowest{0};
  int ok = 0, dropped = 0;
  for (int i = 0; i < 500; ++i) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = client->Record(ToolEvent("upload", big_args));
    slowest = std::max(slowest, std::chrono::steady_clock::now() - start);
    s.ok() ? ++ok : ++dropped;
  }
  EXPECT_EQ(ok, 400);
  EXPECT_EQ(dropped, 100);
  EXPECT_EQ(client->stats().dropped, 100u);
  EXPECT_LT(slowest, std::chrono::milliseconds(250));
  const auto start = std::chrono::steady_clock::now();
  absl::Status closed = client->Close(absl::Now() + absl::Milliseconds(300));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_TRUE(absl::IsDeadlineExceeded(closed)) << closed;
  EXPECT_EQ(client->stats().abandoned, 400u);
}

// The byte bound applies as well as the event bound.
TEST(NonBlocking, ByteBoundDropsTheNewestEvent) {
  FakeDaemon daemon(FakeEvents::NeverAck);
  ClientOptions o = Options(daemon.address());
  o.max_buffered_bytes = 10 * 1024;
  auto client = Make(o);
  const std::string args = "{\"blob\": \"" + std::string(3000, 'a') + "\"}";
  EXPECT_TRUE(client->Record(ToolEvent("a", args)).ok());
  EXPECT_TRUE(client->Record(ToolEvent("b", args)).ok());
  EXPECT_TRUE(client->Record(ToolEvent("c", args)).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(client->Record(ToolEvent("d", args))));
  EXPECT_TRUE(client->Record(ToolEvent("small", "{}")).ok());  // a small one still fits
  EXPECT_EQ(client->stats().dropped, 1u);
  EXPECT_EQ(client->stats().recorded, 4u);
  (void)client->Close(absl::Now());
}

// ---- (2) Reconnect and resend --------------------------------------------------------------

// The first stream takes 100 events and ends without acknowledging any; the second acknowledges
// everything. The same events (ids, timestamps, order) arrive on the second stream.
TEST(Reconnect, UnacknowledgedEventsAreResentWithTheSameIds) {
  constexpr int kEvents = 100;
  FakeDaemon daemon([](FakeEvents* f, grpc::ServerContext* ctx, ServerStream* s, int n) {
    if (n > 1) return FakeEvents::AckAll(f, ctx, s, n);
    v1::StreamRequest req;
    size_t seen = 0;
    while (seen < kEvents && s->Read(&req)) {
      f->Note(n, req);
      seen += req.events_size();
    }
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream dropped by the test");
  });
  ClientOptions o = Options(daemon.address());
  o.max_in_flight_batches = 1000;
  std::mutex errors_mu;
  std::vector<absl::Status> errors;
  o.on_error = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> l(errors_mu);
    errors.push_back(s);
  };
  auto client = Make(o);
  std::vector<std::string> ids(kEvents);
  for (int i = 0; i < kEvents; ++i) ASSERT_TRUE(client->Record(ToolEvent("search"), &ids[i]).ok());
  ASSERT_TRUE(client->Flush(absl::Now() + absl::Seconds(20)).ok()) << client->stats().last_error;

  auto ids_of = [](const std::vector<v1::Event>& events) {
    std::vector<std::string> out;
    for (const auto& e : events) out.push_back(e.event_id());
    return out;
  };
  const auto first = daemon.events().Received(1);
  const auto second = daemon.events().Received(2);
  EXPECT_EQ(ids_of(first), ids);
  EXPECT_EQ(ids_of(second), ids);  // every one again, once, in recording order
  for (int i = 0; i < kEvents; ++i) {
    EXPECT_EQ(first[i].source_timestamp(), second[i].source_timestamp());
    EXPECT_TRUE(IsUuidV4(ids[i])) << ids[i];
  }
  ClientStats st = client->stats();
  EXPECT_EQ(st.recorded, 100u);
  EXPECT_EQ(st.acked, 100u);
  EXPECT_EQ(st.resent, 100u);
  EXPECT_EQ(st.reconnects, 1u);
  EXPECT_EQ(st.dropped, 0u);
  EXPECT_EQ(st.buffered, 0u);
  EXPECT_EQ(daemon.events().streams(), 2);
  EXPECT_THAT(st.last_error, HasSubstr("stream dropped by the test"));
  EXPECT_TRUE(client->Close(absl::Now() + absl::Seconds(5)).ok());
  std::lock_guard<std::mutex> l(errors_mu);
  ASSERT_FALSE(errors.empty());
  EXPECT_TRUE(absl::IsUnavailable(errors[0])) << errors[0];
}

// Events recorded while the daemon is away wait in the buffer and go out once it is back.
TEST(Reconnect, DaemonThatComesLater) {
  // A Unix socket path in a fresh directory: nobody listens there until the server starts.
  char dir[] = "/tmp/tg-client-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string address = std::string("unix:") + dir + "/tg.sock";
  auto client = Make(Options(address));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(client->Record(ToolEvent("search")).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(client->Flush(absl::Now() + absl::Milliseconds(200))));
  FakeEvents events(FakeEvents::AckAll);
  grpc::ServerBuilder b;
  b.AddListeningPort(address, grpc::InsecureServerCredentials());
  b.RegisterService(&events);
  auto server = b.BuildAndStart();
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(client->Flush(absl::Now() + absl::Seconds(20)).ok()) << client->stats().last_error;
  EXPECT_EQ(client->stats().acked, 20u);
  EXPECT_TRUE(client->Close(absl::Now() + absl::Seconds(5)).ok());
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  ::unlink((std::string(dir) + "/tg.sock").c_str());
  ::rmdir(dir);
}

// ---- Acknowledgement codes -----------------------------------------------------------------

// RESOURCE_EXHAUSTED with a retry hint: the batch is sent again, not before the hint.
TEST(Acks, ResourceExhaustedIsRetriedAfterTheHint) {
  std::atomic<bool> refused{false};
  FakeDaemon daemon([&](FakeEvents* f, grpc::ServerContext*, ServerStream* s, int n) {
    v1::StreamRequest req;
    while (s->Read(&req)) {
      f->Note(n, req);
      v1::StreamAck ack;
      ack.set_sequence(req.sequence());
      if (!refused.exchange(true)) {
        ack.set_code(grpc::StatusCode::RESOURCE_EXHAUSTED);
        ack.set_message("spool full");
        ack.set_retry_after_ms(150);
      }
      s->Write(ack);
    }
    return grpc::Status::OK;
  });
  auto client = Make(Options(daemon.address()));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(client->Record(ToolEvent("search")).ok());
  ASSERT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)).ok());
  const auto events = daemon.events().Received(1);
  const auto times = daemon.events().ArrivalTimes(1);
  ClientStats st = client->stats();
  EXPECT_EQ(st.acked, 10u);
  ASSERT_GE(st.resent, 1u);
  ASSERT_EQ(events.size(), 10u + st.resent);
  // The first event came again (same id), at least the hint after its first arrival.
  size_t again = 1;
  while (again < events.size() && events[again].event_id() != events[0].event_id()) ++again;
  ASSERT_LT(again, events.size());
  EXPECT_GE(times[again] - times[0], std::chrono::milliseconds(140));
  EXPECT_EQ(st.reconnects, 0u);
  EXPECT_THAT(st.last_error, HasSubstr("spool full"));
  EXPECT_TRUE(client->Close(absl::Now() + absl::Seconds(5)).ok());
}

// INVALID_ARGUMENT for a batch: the daemon stored none of it. The client sends each event
// alone, so only the bad one is refused (and counted); the others are stored.
TEST(Acks, InvalidEventIsIsolatedAndRejected) {
  FakeDaemon daemon([](FakeEvents* f, grpc::ServerContext*, ServerStream* s, int n) {
    v1::StreamRequest req;
    while (s->Read(&req)) {
      f->Note(n, req);
      v1::StreamAck ack;
      ack.set_sequence(req.sequence());
      for (int i = 0; i < req.events_size(); ++i) {
        if (req.events(i).tool_call().tool_name() == "bad") {
          ack.set_code(grpc::StatusCode::INVALID_ARGUMENT);
          ack.set_message("events[" + std::to_string(i) +
                          "].tool_call.arguments_json: must be JSON");
        }
      }
      s->Write(ack);
    }
    return grpc::Status::OK;
  });
  ClientOptions o = Options(daemon.address());
  o.batch_delay = absl::Seconds(1);  // the ten events go as one batch (Flush sends it)
  std::atomic<int> invalid_reports{0};
  o.on_error = [&](const absl::Status& s) {
    if (absl::IsInvalidArgument(s)) ++invalid_reports;
  };
  auto client = Make(o);
  std::string bad_id;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(
        client->Record(ToolEvent(i == 5 ? "bad" : "good"), i == 5 ? &bad_id : nullptr).ok());
  }
  ASSERT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)).ok());
  ClientStats st = client->stats();
  EXPECT_EQ(st.acked, 9u);
  EXPECT_EQ(st.rejected, 1u);
  EXPECT_EQ(st.buffered, 0u);
  EXPECT_THAT(st.last_error, HasSubstr(bad_id));
  EXPECT_THAT(st.last_error, HasSubstr("must be JSON"));
  EXPECT_TRUE(client->Close(absl::Now() + absl::Seconds(5)).ok());
  EXPECT_EQ(invalid_reports.load(), 1);
  EXPECT_EQ(daemon.events().Received(1).size(), 20u);  // the batch, then each one alone
}

// Batches respect max_batch_events; Flush waits for what was recorded before it.
TEST(Batching, BatchesAreCutAndFlushWaits) {
  FakeDaemon daemon(FakeEvents::AckAll);
  ClientOptions o = Options(daemon.address());
  o.max_batch_events = 7;
  auto client = Make(o);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(client->Record(ToolEvent("search")).ok());
  ASSERT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)).ok());
  EXPECT_EQ(client->stats().acked, 50u);
  EXPECT_EQ(daemon.events().Received(1).size(), 50u);
  EXPECT_TRUE(client->Close(absl::Now() + absl::Seconds(5)).ok());
}

TEST(Unreachable, RecordStillReturnsAndCheckSaysUnavailable) {
  ClientOptions o = Options("unix:/nonexistent-dir/toolgate.sock");
  o.check_timeout = absl::Milliseconds(300);
  auto client = Make(o);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(client->Record(ToolEvent("search")).ok());
  Action a;
  a.tool_name = "search";
  absl::StatusOr<CheckResult> r = client->Check(a);
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(client->Close(absl::Now() + absl::Milliseconds(100))));
  EXPECT_EQ(client->stats().abandoned, 5u);
}

// ---- Policy and GuardedCall ----------------------------------------------------------------

v1::CheckResponse Answer(v1::Decision d, const std::string& rule, const std::string& reason) {
  v1::CheckResponse r;
  r.set_decision(d);
  r.set_rule_id(rule);
  r.set_reason(reason);
  r.set_decision_id(NewEventId());
  r.set_event_id(NewEventId());
  if (d == v1::REQUIRE_APPROVAL) r.set_pending_action_id("pa-1");
  return r;
}

Action PayAction() {
  Action a;
  a.tool_name = "send_payment";
  a.tool_type = "payment";
  a.arguments_json = R"({"amount": 5000})";
  return a;
}

TEST(GuardedCallTest, AllowedRunsTheToolAndRecordsIt) {
  FakeDaemon daemon(FakeEvents::AckAll);
  const v1::CheckResponse answer = Answer(v1::ALLOW, "", "no rule matched");
  daemon.policy().Answer(answer);
  auto client = Make(Options(daemon.address()));
  int runs = 0;
  Verdict verdict;
  GuardOptions go;
  go.endpoint = "https://pay.example/v1";
  go.verdict = &verdict;
  absl::StatusOr<int> r = GuardedCall(
      *client, PayAction(),
      [&]() -> absl::StatusOr<int> {
        ++runs;
        return 7;
      },
      go);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 7);
  EXPECT_EQ(runs, 1);
  EXPECT_TRUE(verdict.allowed);
  EXPECT_EQ(daemon.policy().last_action().agent_id(), "agent-1");  // filled from the options
  EXPECT_EQ(daemon.policy().last_action().arguments_json(), R"({"amount": 5000})");
  ASSERT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)).ok());
  const auto events = daemon.events().Received(1);
  ASSERT_EQ(events.size(), 1u);
  const v1::Event& e = events[0];
  EXPECT_EQ(e.tool_call().tool_name(), "send_payment");
  EXPECT_EQ(e.tool_call().response_status(), "success");
  EXPECT_EQ(e.tool_call().endpoint(), "https://pay.example/v1");
  EXPECT_EQ(e.tool_call().arguments_json(), R"({"amount": 5000})");
  EXPECT_EQ(e.attribution().tool_type(), "payment");
  EXPECT_EQ(e.attribution().causation_event_id(), answer.event_id());
  EXPECT_EQ(e.session_id(), "session-1");
}

TEST(GuardedCallTest, DeniedDoesNotRunTheTool) {
  FakeDaemon daemon(FakeEvents::AckAll);
  daemon.policy().Answer(Answer(v1::DENY, "no-payments", "payments are off"));
  auto client = Make(Options(daemon.address()));
  bool ran = false;
  absl::Status s = GuardedCall(*client, PayAction(), [&] {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_FALSE(ran);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("denied by rule no-payments: payments are off"));
  EXPECT_EQ(client->stats().recorded, 0u);
}

TEST(GuardedCallTest, WaitsForTheApproval) {
  FakeDaemon daemon(FakeEvents::AckAll);
  daemon.policy().Answer(Answer(v1::REQUIRE_APPROVAL, "big-payment", "payment over 1000"));
  v1::WaitUpdate rejected;
  rejected.set_status(v1::REJECTED);
  rejected.set_decision(v1::DENY);
  rejected.set_approver_id("alice");
  rejected.set_reason("unknown payee");
  daemon.policy().Decide(rejected);
  auto client = Make(Options(daemon.address()));
  bool ran = false;
  absl::Status s = GuardedCall(*client, PayAction(), [&] {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_FALSE(ran);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("rejected by alice: unknown payee"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("big-payment"));

  v1::WaitUpdate approved = rejected;
  approved.set_status(v1::APPROVED);
  approved.set_decision(v1::ALLOW);
  approved.set_reason("checked");
  daemon.policy().Decide(approved);
  Verdict verdict;
  GuardOptions go;
  go.verdict = &verdict;
  s = GuardedCall(
      *client, PayAction(),
      [&] {
        ran = true;
        return absl::OkStatus();
      },
      go);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(ran);
  ASSERT_TRUE(verdict.approval.has_value());
  EXPECT_EQ(verdict.approval->status, ApprovalStatus::kApproved);
  EXPECT_EQ(verdict.approval->approver_id, "alice");
}

TEST(GuardedCallTest, ToolErrorsAndExceptionsAreRecorded) {
  FakeDaemon daemon(FakeEvents::AckAll);
  daemon.policy().Answer(Answer(v1::ALLOW, "", "no rule matched"));
  auto client = Make(Options(daemon.address()));
  absl::StatusOr<std::string> r = GuardedCall(
      *client, PayAction(),
      []() -> absl::StatusOr<std::string> { return absl::NotFoundError("no such account"); });
  EXPECT_TRUE(absl::IsNotFound(r.status()));
  EXPECT_THROW(
      GuardedCall(*client, PayAction(), []() -> absl::Status { throw std::runtime_error("boom"); }),
      std::runtime_error);
  ASSERT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)).ok());
  const auto events = daemon.events().Received(1);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].tool_call().response_status(), "error");
  EXPECT_EQ(events[1].tool_call().response_status(), "error");
}

TEST(GuardedCallTest, FailsClosedUnlessFailOpen) {
  ClientOptions o = Options("unix:/nonexistent-dir/toolgate.sock");
  o.check_timeout = absl::Milliseconds(200);
  auto client = Make(o);
  bool ran = false;
  auto tool = [&] {
    ran = true;
    return absl::OkStatus();
  };
  absl::Status s = GuardedCall(*client, PayAction(), tool);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_FALSE(ran);
  Verdict verdict;
  GuardOptions go;
  go.fail_open = true;
  go.verdict = &verdict;
  s = GuardedCall(*client, PayAction(), tool, go);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(ran);
  EXPECT_TRUE(verdict.failed_open);
  EXPECT_EQ(client->stats().recorded, 1u);  // recorded, waiting for the daemon
  (void)client->Close(absl::Now());
}

}  // namespace
}  // namespace toolgate
