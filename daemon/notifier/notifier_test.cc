#include "daemon/notifier/notifier.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "daemon/common/crypto.h"
#include "daemon/notifier/delivery_policy.h"
#include "daemon/notifier/delivery_store.h"
#include "daemon/notifier/inbound.h"
#include "daemon/notifier/payload.h"
#include "daemon/notifier/signature.h"

namespace toolgate::notifier {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
namespace fs = std::filesystem;

constexpr int64_t kNow = 1'700'000'000;
constexpr char kSecret[] = "whsec_test_0123456789";

// ---------------------------------------------------------------------------------------------
// x-kaplaix-signature

TEST(Signature, Table) {
  const std::string body = R"({"type":"guardian.decision"})";
  const std::string good = KaplaixSignatureHeader(kSecret, kNow, body);
  const std::string mac = good.substr(good.find("v1=") + 3);
  std::string upper = mac;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::string other_mac = HmacSha256Hex("another secret", std::to_string(kNow) + "." + body);
  struct Case {
    const char* name;
    std::string header;
    std::string body;
    int64_t now;
    SignatureCheck want;
  } cases[] = {
      {"good", good, body, kNow, SignatureCheck::kOk},
      {"good, clock 300 s ahead", good, body, kNow + 300, SignatureCheck::kOk},
      {"good, clock 300 s behind", good, body, kNow - 300, SignatureCheck::kOk},
      {"stale by 301 s", good, body, kNow + 301, SignatureCheck::kStale},
      {"from the future by 301 s", good, body, kNow - 301, SignatureCheck::kStale},
      {"spaces around parts", " t=" + std::to_string(kNow) + " , v1=" + mac + " ", body, kNow,
       SignatureCheck::kOk},
      {"uppercase hex", "t=" + std::to_string(kNow) + ",v1=" + upper, body, kNow,
       SignatureCheck::kOk},
      {"order swapped", "v1=" + mac + ",t=" + std::to_string(kNow), body, kNow,
       SignatureCheck::kOk},
      {"rotation: second v1 matches",
       "t=" + std::to_string(kNow) + ",v1=" + other_mac + ",v1=" + mac, body, kNow,
       SignatureCheck::kOk},
      {"unknown scheme ignored", "t=" + std::to_string(kNow) + ",v0=abc,v1=" + mac, body, kNow,
       SignatureCheck::kOk},
      {"body changed", good, body + " ", kNow, SignatureCheck::kMismatch},
      {"other secret", "t=" + std::to_string(kNow) + ",v1=" + other_mac, body, kNow,
       SignatureCheck::kMismatch},
      {"timestamp changed (MAC covers it)", "t=" + std::to_string(kNow + 1) + ",v1=" + mac, body,
       kNow, SignatureCheck::kMismatch},
      {"leading zero changes the signed text", "t=0" + std::to_string(kNow) + ",v1=" + mac, body,
       kNow, SignatureCheck::kMismatch},
      {"missing header", "", body, kNow, SignatureCheck::kMissingHeader},
      {"blank header", "   ", body, kNow, SignatureCheck::kMissingHeader},
      {"no t", "v1=" + mac, body, kNow, SignatureCheck::kMissingTimestamp},
      {"no v1", "t=" + std::to_string(kNow), body, kNow, SignatureCheck::kMissingSignature},
      {"only v0", "t=" + std::to_string(kNow) + ",v0=" + mac, body, kNow,
       SignatureCheck::kMissingSignature},
      {"empty t", "t=,v1=" + mac, body, kNow, SignatureCheck::kBadTimestamp},
      {"negative t", "t=-5,v1=" + mac, body, kNow, SignatureCheck::kBadTimestamp},
      {"t not a number", "t=soon,v1=" + mac, body, kNow, SignatureCheck::kBadTimestamp},
      {"t too long", "t=1234567890123,v1=" + mac, body, kNow, SignatureCheck::kBadTimestamp},
      {"t twice", "t=" + std::to_string(kNow) + ",t=1,v1=" + mac, body, kNow,
       SignatureCheck::kMalformed},
      {"v1 short", "t=" + std::to_string(kNow) + ",v1=" + mac.substr(1), body, kNow,
       SignatureCheck::kBadSignature},
      {"v1 long", "t=" + std::to_string(kNow) + ",v1=" + mac + "0", body, kNow,
       SignatureCheck::kBadSignature},
      {"v1 not hex", "t=" + std::to_string(kNow) + ",v1=" + std::string(64, 'g'), body, kNow,
       SignatureCheck::kBadSignature},
      {"v1 empty", "t=" + std::to_string(kNow) + ",v1=", body, kNow, SignatureCheck::kBadSignature},
      {"no '='", "t" + std::to_string(kNow) + ",v1=" + mac, body, kNow, SignatureCheck::kMalformed},
      {"empty part", "t=" + std::to_string(kNow) + ",,v1=" + mac, body, kNow,
       SignatureCheck::kMalformed},
      {"trailing comma", good + ",", body, kNow, SignatureCheck::kMalformed},
      {"empty key", "=1,t=" + std::to_string(kNow) + ",v1=" + mac, body, kNow,
       SignatureCheck::kMalformed},
      {"huge header", good + std::string(5000, ' ') + ",x=1", body, kNow,
       SignatureCheck::kMalformed},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(VerifyKaplaixSignature(c.header, c.body, kSecret, c.now), c.want)
        << c.name << ": got "
        << SignatureCheckName(VerifyKaplaixSignature(c.header, c.body, kSecret, c.now));
  }
}

TEST(Signature, EmptySecretNeverVerifies) {
  const std::string h = KaplaixSignatureHeader("", kNow, "x");
  EXPECT_EQ(VerifyKaplaixSignature(h, "x", "", kNow), SignatureCheck::kMismatch);
}

TEST(Signature, OutboundIsHexHmacOfTheBody) {
  // RFC 4231 test case 2.
  EXPECT_EQ(WebhookSignature("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

// ---------------------------------------------------------------------------------------------
// Payloads

TEST(Payload, EventNames) {
  for (int i = 0; i < kWebhookEventCount; ++i) {
    const auto e = static_cast<WebhookEvent>(i);
    EXPECT_EQ(ParseWebhookEvent(WebhookEventName(e)), e);
  }
  EXPECT_FALSE(ParseWebhookEvent("agent_execution_paused").has_value());
}

TEST(Payload, Started) {
  ExecutionInfo i;
  i.event = WebhookEvent::kStarted;
  i.session_id = "run-42";
  i.agent_id = "billing-agent";
  i.started_at = "2026-11-23T17:04:00.000000Z";
  const json j = json::parse(BuildPayload(i));
  EXPECT_EQ(j, json::parse(R"({
    "event": "agent_execution_started",
    "agent_execution": {"id": "run-42", "started_at": "2026-11-23T17:04:00.000000Z",
                        "ended_at": null, "status": "started", "agent_id": "billing-agent"},
    "agent": {"id": "billing-agent", "name": "billing-agent"}})"));
}

TEST(Payload, EndedAndFailed) {
  ExecutionInfo i;
  i.event = WebhookEvent::kEnded;
  i.session_id = "s";
  i.agent_id = "a";
  i.agent_name = "Billing";
  i.started_at = "2026-11-23T17:04:00.000000Z";
  i.ended_at = "2026-11-23T17:05:00.000000Z";
  json j = json::parse(BuildPayload(i));
  EXPECT_EQ(j["event"], "agent_execution_ended");
  EXPECT_EQ(j["agent_execution"]["status"], "completed");
  EXPECT_EQ(j["agent_execution"]["ended_at"], "2026-11-23T17:05:00.000000Z");
  EXPECT_EQ(j["agent"]["name"], "Billing");
  EXPECT_FALSE(j.contains("failure"));
  EXPECT_FALSE(j.contains("handoff"));

  i.event = WebhookEvent::kFailed;
  i.error_message = "tool timed out";
  i.error_type = "TimeoutError";
  j = json::parse(BuildPayload(i));
  EXPECT_EQ(j["event"], "agent_execution_failed");
  EXPECT_EQ(j["agent_execution"]["status"], "failed");
  EXPECT_EQ(j["failure"], json::parse(R"({"error": {"message": "tool timed out",
      "type": "TimeoutError"}, "failed_at": "2026-11-23T17:05:00.000000Z"})"));

  i.started_at.clear();  // a session whose start was not seen
  i.error_type.clear();
  j = json::parse(BuildPayload(i));
  EXPECT_TRUE(j["agent_execution"]["started_at"].is_null());
  EXPECT_EQ(j["failure"]["error"]["type"], "error");
}

TEST(Payload, Handoff) {
  ExecutionInfo i;
  i.event = WebhookEvent::kHandoff;
  i.session_id = "s";
  i.agent_id = "a";
  i.ended_at = "ignored";  // a handoff never ends the execution
  i.node_name = "send_payment";
  i.handoff_at = "2026-11-23T17:04:30.000000Z";
  i.handoff_reason = "payment over 1000";
  i.pending_action_id = "5b0c";
  const json j = json::parse(BuildPayload(i));
  EXPECT_EQ(j["event"], "agent_execution_handoff");
  EXPECT_EQ(j["agent_execution"]["status"], "handoff");
  EXPECT_TRUE(j["agent_execution"]["ended_at"].is_null());
  EXPECT_EQ(j["handoff"], json::parse(R"({"node_name": "send_payment",
      "handoff_datetime": "2026-11-23T17:04:30.000000Z", "handoff_reason": "payment over 1000",
      "pending_action_id": "5b0c"})"));
}

TEST(Payload, InvalidUtf8IsReplacedNotThrown) {
  ExecutionInfo i;
  i.session_id = "s\xff";
  i.agent_id = "a";
  EXPECT_TRUE(json::accept(BuildPayload(i)));
}

// ---------------------------------------------------------------------------------------------
// Retry decisions

TEST(DeliveryPolicy, Table) {
  const std::vector<milliseconds> sched = {seconds(10), seconds(40), seconds(90)};
  struct Case {
    long status;
    bool transport;
    int attempts;
    DeliveryOutcome want;
    milliseconds delay;
  } cases[] = {
      {200, false, 1, DeliveryOutcome::kDelivered, milliseconds(0)},
      {204, false, 4, DeliveryOutcome::kDelivered, milliseconds(0)},
      {299, false, 2, DeliveryOutcome::kDelivered, milliseconds(0)},
      {500, false, 1, DeliveryOutcome::kRetry, seconds(10)},
      {404, false, 2, DeliveryOutcome::kRetry, seconds(40)},
      {0, true, 3, DeliveryOutcome::kRetry, seconds(90)},
      {302, false, 1, DeliveryOutcome::kRetry, seconds(10)},
      {200, true, 1, DeliveryOutcome::kRetry, seconds(10)},  // a timeout after the status line
      {503, false, 4, DeliveryOutcome::kDead, milliseconds(0)},
      {0, true, 9, DeliveryOutcome::kDead, milliseconds(0)},
  };
  for (const auto& c : cases) {
    const DeliveryDecision d = DecideDelivery(c.status, c.transport, c.attempts, sched);
    EXPECT_EQ(d.outcome, c.want) << c.status << " attempts " << c.attempts;
    EXPECT_EQ(d.delay, c.delay) << c.status << " attempts " << c.attempts;
  }
  EXPECT_EQ(DecideDelivery(500, false, 1, {}).outcome, DeliveryOutcome::kDead);  // no retries
}

// ---------------------------------------------------------------------------------------------
// The store

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/tg-notifier-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string File(const char* name) const { return (fs::path(path_) / name).string(); }

 private:
  std::string path_;
};

TEST(DeliveryStore, RoundTripRescheduleDeadAndSessions) {
  TempDir dir;
  {
    auto store = DeliveryStore::Open(dir.File("n.db"));
    ASSERT_TRUE(store.ok()) << store.status();
    std::vector<Delivery> ds(2);
    ds[0].idempotency_key = "k1";
    ds[0].url = "http://a/";
    ds[0].event = "agent_execution_started";
    ds[0].body = std::string("{\"x\":1}\0z", 9);  // bytes kept exactly
    ds[0].next_ms = 5;
    ds[1] = ds[0];
    ds[1].idempotency_key = "k2";
    ASSERT_TRUE((*store)->Insert(&ds).ok());
    EXPECT_GT(ds[1].id, ds[0].id);
    ds[0].attempts = 1;
    ds[0].next_ms = 10'005;
    ds[0].last_error = "HTTP 500";
    ASSERT_TRUE((*store)->Reschedule(ds[0]).ok());
    ds[1].attempts = 4;
    ASSERT_TRUE((*store)->MarkDead(ds[1]).ok());
    ASSERT_TRUE((*store)->RememberStart("a", "s", "2026-01-01T00:00:00Z", 100).ok());
    ASSERT_TRUE((*store)->SetAgentName("a", "Agent A").ok());
  }
  auto store = DeliveryStore::Open(dir.File("n.db"));  // a restart
  ASSERT_TRUE(store.ok());
  auto pending = (*store)->LoadPending();
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 1u);
  EXPECT_EQ((*pending)[0].idempotency_key, "k1");
  EXPECT_EQ((*pending)[0].body, std::string("{\"x\":1}\0z", 9));
  EXPECT_EQ((*pending)[0].attempts, 1);
  EXPECT_EQ((*pending)[0].next_ms, 10'005);
  EXPECT_EQ((*pending)[0].last_error, "HTTP 500");
  EXPECT_EQ((*store)->DeadCount(), 1);
  EXPECT_EQ((*store)->StartedAt("a", "s"), "2026-01-01T00:00:00Z");
  EXPECT_EQ((*store)->StartedAt("b", "s"), "");
  EXPECT_EQ((*store)->AgentName("a"), "Agent A");
  ASSERT_TRUE((*store)->Remove((*pending)[0].id).ok());
  EXPECT_TRUE((*store)->LoadPending()->empty());
  ASSERT_TRUE((*store)->PruneExecutions(101).ok());
  EXPECT_EQ((*store)->StartedAt("a", "s"), "");
}

// ---------------------------------------------------------------------------------------------
// The delivery loop, against a local receiver, with time driven by a FakeClock

struct Received {
  std::string event, signature, key, content_type, body;
};

// An HTTP receiver on a free loopback port that answers with a scripted status.
class Receiver {
 public:
  // On `port` (0: any free one).
  explicit Receiver(int port = 0) {
    server_.Post("/hook", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> l(mu_);
      got_.push_back({req.get_header_value("X-Webhook-Event"),
                      req.get_header_value("X-Webhook-Signature"),
                      req.get_header_value("X-Idempotency-Key"),
                      req.get_header_value("Content-Type"), req.body});
      res.status = status_;
    });
    if (port == 0) {
      port_ = server_.bind_to_any_port("127.0.0.1");
    } else if (server_.bind_to_port("127.0.0.1", port)) {
      port_ = port;
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() before the accept loop runs would be lost (and the join would hang): wait for it.
    for (int i = 0; i < 5000 && port_ > 0 && !server_.is_running(); ++i) {
      std::this_thread::sleep_for(milliseconds(1));
    }
  }
  ~Receiver() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hook"; }
  void set_status(int s) {
    std::lock_guard<std::mutex> l(mu_);
    status_ = s;
  }
  std::vector<Received> got() {
    std::lock_guard<std::mutex> l(mu_);
    return got_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  int status_ = 200;           // guarded by mu_
  std::vector<Received> got_;  // guarded by mu_
};

config::NotifierOptions Options(const std::string& url) {
  config::NotifierOptions o;
  config::WebhookEndpoint ep;
  ep.url = url;
  ep.secret = kSecret;
  o.endpoint_list.push_back(ep);
  o.retry_schedule = {seconds(10), seconds(40), seconds(90)};
  o.timeout = seconds(5);
  o.queue_size = 16;
  return o;
}

toolgate::v1::Event SessionStart(const std::string& session) {
  toolgate::v1::Event e;
  e.set_agent_id("agent-1");
  e.set_session_id(session);
  e.set_source_timestamp("2026-11-23T17:04:00.000000Z");
  e.mutable_session_start();
  return e;
}

// Turns the loop until `pred` holds (real time bounds the wait: a local request is fast).
template <typename Pred>
bool TurnUntil(Notifier* n, Pred pred, int max_ms = 5000) {
  const auto deadline = std::chrono::steady_clock::now() + milliseconds(max_ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    n->RunOnce(milliseconds(10));
  }
  return true;
}

// A few turns in which nothing should happen.
void TurnIdle(Notifier* n) {
  for (int i = 0; i < 20; ++i) n->RunOnce(milliseconds(5));
}

TEST(Notifier, RetriesOnScheduleThenGivesUp) {
  TempDir dir;
  Receiver rx;
  rx.set_status(500);
  FakeClock clock;
  auto n = Notifier::Open(Options(rx.url()), dir.File("notifier.db"), &clock, "test/1");
  ASSERT_TRUE(n.ok()) << n.status();
  (*n)->OnEvents({SessionStart("s-1")});
  auto count = [&] { return rx.got().size(); };
  ASSERT_TRUE(TurnUntil(n->get(), [&] { return (*n)->stats().retried == 1; }));
  EXPECT_EQ(count(), 1u);

  // The schedule: 10 s, 40 s, 90 s after each failure; not a moment before.
  for (const int64_t wait_s : {10, 40, 90}) {
    clock.Advance(seconds(wait_s) - milliseconds(100));
    TurnIdle(n->get());
    const size_t before = count();
    EXPECT_EQ(before, rx.got().size());
    clock.Advance(milliseconds(100));
    ASSERT_TRUE(TurnUntil(n->get(), [&] { return count() == before + 1; })) << wait_s;
  }
  ASSERT_TRUE(TurnUntil(n->get(), [&] { return (*n)->stats().failed == 1; }));
  clock.Advance(std::chrono::hours(1));
  TurnIdle(n->get());
  EXPECT_EQ(count(), 4u);  // one attempt and three retries, then dead
  const NotifierStats st = (*n)->stats();
  EXPECT_EQ(st.retried, 3u);
  EXPECT_EQ(st.failed, 1u);
  EXPECT_EQ(st.delivered, 0u);
  EXPECT_EQ(st.pending, 0u);

  const auto got = rx.got();
  for (const auto& r : got) {
    EXPECT_EQ(r.key, got[0].key);  // the same delivery, retried
    EXPECT_EQ(r.event, "agent_execution_started");
    EXPECT_EQ(r.signature, WebhookSignature(kSecret, r.body));
    EXPECT_EQ(r.content_type, "application/json");
  }
  auto store = DeliveryStore::Open(dir.File("notifier.db"));
  EXPECT_EQ((*store)->DeadCount(), 1);
}

TEST(Notifier, DeliveredAfterARetryAndAfterARestart) {
  TempDir dir;
  FakeClock clock;
  int port = 0;
  std::string url;
  {
    Receiver gone;  // a receiver that goes away: its port then refuses connections
    port = gone.port();
    url = gone.url();
  }
  {
    auto n = Notifier::Open(Options(url), dir.File("notifier.db"), &clock, "test/1");
    ASSERT_TRUE(n.ok());
    (*n)->OnEvents({SessionStart("s-2")});
    ASSERT_TRUE(TurnUntil(n->get(), [&] { return (*n)->stats().retried == 1; }));
    EXPECT_EQ((*n)->stats().pending, 1u);
  }  // "restart": the delivery is in notifier.db
  std::string key;
  {
    auto store = DeliveryStore::Open(dir.File("notifier.db"));
    auto pending = (*store)->LoadPending();
    ASSERT_EQ(pending->size(), 1u);
    key = (*pending)[0].idempotency_key;
  }
  Receiver rx(port);  // the receiver is back
  ASSERT_EQ(rx.port(), port);
  auto n = Notifier::Open(Options(url), dir.File("notifier.db"), &clock, "test/1");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ((*n)->stats().pending, 1u);
  TurnIdle(n->get());
  EXPECT_TRUE(rx.got().empty());  // not before its retry time
  clock.Advance(seconds(10));
  ASSERT_TRUE(TurnUntil(n->get(), [&] { return (*n)->stats().delivered == 1; }));
  ASSERT_EQ(rx.got().size(), 1u);
  EXPECT_EQ(rx.got()[0].key, key);
  EXPECT_EQ((*n)->stats().pending, 0u);
  auto store = DeliveryStore::Open(dir.File("notifier.db"));
  EXPECT_TRUE((*store)->LoadPending()->empty());
}

TEST(Notifier, LifecycleSignalsBecomeTheirWebhooks) {
  TempDir dir;
  Receiver rx;
  FakeClock clock;
  auto opts = Options(rx.url());
  // A second endpoint that only wants handoffs.
  Receiver handoffs;
  config::WebhookEndpoint only;
  only.url = handoffs.url();
  only.secret = "other-secret";
  only.events = {"agent_execution_handoff"};
  opts.endpoint_list.push_back(only);
  auto n = Notifier::Open(opts, dir.File("notifier.db"), &clock, "test/1");
  ASSERT_TRUE(n.ok());

  toolgate::v1::Event identity;
  identity.set_agent_id("agent-1");
  identity.set_session_id("s-3");
  identity.mutable_identity()->set_agent_name("Billing Agent");
  toolgate::v1::Event end;
  end.set_agent_id("agent-1");
  end.set_session_id("s-3");
  end.set_source_timestamp("2026-11-23T17:09:00.000000Z");
  end.mutable_session_end()->set_outcome(toolgate::v1::SessionEnd::FAILED);
  end.mutable_session_end()->set_error_message("boom");
  end.mutable_session_end()->set_error_type("RuntimeError");
  toolgate::v1::Event generic_end;  // the same meaning through a generic event
  generic_end.set_agent_id("agent-1");
  generic_end.set_session_id("s-4");
  generic_end.mutable_generic()->set_category("session_end");
  generic_end.mutable_generic()->set_payload_json(R"({"outcome":"completed"})");
  toolgate::v1::Event tool;  // not a lifecycle event: ignored
  tool.set_agent_id("agent-1");
  tool.set_session_id("s-3");
  tool.mutable_tool_call()->set_tool_name("search");
  toolgate::v1::PendingAction pa;
  pa.set_id("pa-1");
  pa.set_status(toolgate::v1::PENDING);
  pa.mutable_action()->set_agent_id("agent-1");
  pa.mutable_action()->set_session_id("s-3");
  pa.mutable_action()->set_tool_name("send_payment");
  pa.set_reason("payment over 1000");
  pa.set_created_at("2026-11-23T17:05:00.000000Z");
  toolgate::v1::PendingAction decided = pa;  // decisions do not make webhooks
  decided.set_status(toolgate::v1::APPROVED);

  (*n)->OnEvents({identity, SessionStart("s-3"), tool});
  (*n)->OnPendingAction(pa);
  (*n)->OnPendingAction(decided);
  (*n)->OnEvents({end, generic_end});
  ASSERT_TRUE(TurnUntil(n->get(), [&] { return (*n)->stats().delivered == 5; }));
  TurnIdle(n->get());
  EXPECT_EQ((*n)->stats().delivered, 5u);

  std::map<std::string, json> by_event;
  for (const auto& r : rx.got()) {
    EXPECT_EQ(r.signature, WebhookSignature(kSecret, r.body));
    json j = json::parse(r.body);
    EXPECT_EQ(j["event"], r.event);
    by_event[r.event + "/" + j["agent_execution"]["id"].get<std::string>()] = j;
  }
  ASSERT_EQ(by_event.size(), 4u);
  const json& started = by_event["agent_execution_started/s-3"];
  EXPECT_EQ(started["agent_execution"]["started_at"], "2026-11-23T17:04:00.000000Z");
  EXPECT_EQ(started["agent"]["name"], "Billing Agent");
  const json& handoff = by_event["agent_execution_handoff/s-3"];
  EXPECT_EQ(handoff["handoff"]["node_name"], "send_payment");
  EXPECT_EQ(handoff["handoff"]["handoff_reason"], "payment over 1000");
  EXPECT_EQ(handoff["handoff"]["pending_action_id"], "pa-1");
  EXPECT_EQ(handoff["agent_execution"]["started_at"], "2026-11-23T17:04:00.000000Z");
  const json& failed = by_event["agent_execution_failed/s-3"];
  EXPECT_EQ(failed["agent_execution"]["started_at"], "2026-11-23T17:04:00.000000Z");
  EXPECT_EQ(failed["agent_execution"]["ended_at"], "2026-11-23T17:09:00.000000Z");
  EXPECT_EQ(failed["failure"]["error"]["message"], "boom");
  EXPECT_EQ(failed["failure"]["error"]["type"], "RuntimeError");
  const json& ended = by_event["agent_execution_ended/s-4"];
  EXPECT_EQ(ended["agent_execution"]["status"], "completed");
  EXPECT_TRUE(ended["agent_execution"]["started_at"].is_null());  // its start was not seen

  const auto h = handoffs.got();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].event, "agent_execution_handoff");
  EXPECT_EQ(h[0].signature, WebhookSignature("other-secret", h[0].body));
}

TEST(Notifier, FullQueueDropsAndCounts) {
  TempDir dir;
  FakeClock clock;
  auto opts = Options("http://127.0.0.1:9/hook");
  opts.queue_size = 3;
  auto n = Notifier::Open(opts, dir.File("notifier.db"), &clock, "test/1");
  ASSERT_TRUE(n.ok());
  std::vector<toolgate::v1::Event> five(5, SessionStart("s"));
  (*n)->OnEvents(five);  // nothing drains it: the loop is not running
  EXPECT_EQ((*n)->stats().dropped, 2u);
  EXPECT_EQ((*n)->stats().pending, 3u);
}

// ---------------------------------------------------------------------------------------------
// Inbound webhooks

class InboundTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto g = guardian::Guardian::Open(dir_.File("guardian.db"), &clock_,
                                      [](const guardian::PendingAction&) {});
    ASSERT_TRUE(g.ok());
    guardian_ = std::move(*g);
    toolgate::v1::Action action;
    action.set_agent_id("a");
    action.set_session_id("s");
    action.set_tool_name("send_payment");
    auto pa = guardian_->Create(action, "hash", "big-payment", "payment over 1000",
                                std::chrono::minutes(10), toolgate::v1::DENY);
    ASSERT_TRUE(pa.ok());
    id_ = pa->id();
    inbound_ = std::make_unique<InboundWebhooks>(kSecret, &clock_, guardian_.get());
  }
  void TearDown() override { guardian_->Close(); }

  int64_t now() const {
    return std::chrono::duration_cast<seconds>(clock_.Now().time_since_epoch()).count();
  }
  std::string Decision(const std::string& decision, const std::string& id = "") const {
    return json({{"type", "guardian.decision"},
                 {"pendingActionId", id.empty() ? id_ : id},
                 {"decision", decision},
                 {"reason", "checked"},
                 {"approverId", "alice"}})
        .dump();
  }
  toolgate::v1::PendingStatus Status() { return guardian_->Get(id_)->status(); }

  TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<guardian::Guardian> guardian_;
  std::unique_ptr<InboundWebhooks> inbound_;
  std::string id_;
};

TEST_F(InboundTest, BadSignaturesChangeNothing) {
  const std::string body = Decision("approved");
  struct Case {
    const char* name;
    std::string header;
  } cases[] = {
      {"missing", ""},
      {"wrong secret", KaplaixSignatureHeader("not-the-secret", now(), body)},
      {"stale", KaplaixSignatureHeader(kSecret, now() - 301, body)},
      {"other body", KaplaixSignatureHeader(kSecret, now(), body + " ")},
      {"no v1", "t=" + std::to_string(now())},
      {"garbage", "hello"},
  };
  for (const auto& c : cases) {
    const InboundResponse r = inbound_->Handle(c.header, body);
    EXPECT_EQ(r.status, 401) << c.name;
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "AUTHENTICATION_FAILED") << c.name;
    EXPECT_EQ(Status(), toolgate::v1::PENDING) << c.name;
  }
  EXPECT_EQ(inbound_->stats().rejected, 6u);
  EXPECT_EQ(inbound_->stats().decisions, 0u);
}

TEST_F(InboundTest, VerifiedDecisionIsAppliedOnce) {
  std::atomic<int> woken{0};
  ASSERT_TRUE(guardian_->Wait(id_, [&](const guardian::PendingAction&) { ++woken; }).ok());
  const std::string body = Decision("approved");
  InboundResponse r = inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), body), body);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["status"], "applied");
  EXPECT_EQ(Status(), toolgate::v1::APPROVED);
  EXPECT_EQ(guardian_->Get(id_)->approver_id(), "alice");
  EXPECT_EQ(woken.load(), 1);
  // The same webhook again (a retry): fine, nothing new.
  r = inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), body), body);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["status"], "already_decided");
  // The opposite decision: a conflict.
  const std::string reject = Decision("rejected");
  r = inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), reject), reject);
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(Status(), toolgate::v1::APPROVED);
  EXPECT_EQ(inbound_->stats().decisions, 1u);
}

TEST_F(InboundTest, OtherBodiesAreAcknowledged) {
  for (const std::string& body : {std::string(R"({"type":"session.risk"})"), std::string("[]"),
                                  std::string("not json"), Decision("approved", "unknown-id")}) {
    const InboundResponse r = inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), body), body);
    EXPECT_EQ(r.status, 202) << body;
  }
  const std::string bad = Decision("maybe");
  EXPECT_EQ(inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), bad), bad).status, 400);
  EXPECT_EQ(Status(), toolgate::v1::PENDING);
  const std::string huge(kMaxInboundBodyBytes + 1, ' ');
  EXPECT_EQ(inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), huge), huge).status, 413);
}

TEST_F(InboundTest, UpstreamIdsAreAccepted) {
  toolgate::v1::Action action;
  action.set_agent_id("a");
  action.set_session_id("s");
  action.set_tool_name("wire");
  auto pa = guardian_->Create(action, "hash", "remote", "upstream says so", seconds(600),
                              toolgate::v1::DENY, "up-77");
  ASSERT_TRUE(pa.ok());
  const std::string body = Decision("rejected", "up-77");
  InboundResponse r = inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), body), body);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(guardian_->Get(pa->id())->status(), toolgate::v1::REJECTED);
  EXPECT_EQ(Status(), toolgate::v1::PENDING);  // the other one is untouched
  // Retried with the upstream's id once decided: told so, not ignored; the opposite conflicts.
  r = inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), body), body);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["status"], "already_decided");
  EXPECT_EQ(json::parse(r.body)["pendingActionId"], pa->id());
  const std::string approve = Decision("approved", "up-77");
  r = inbound_->Handle(KaplaixSignatureHeader(kSecret, now(), approve), approve);
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_EQ(guardian_->Get(pa->id())->status(), toolgate::v1::REJECTED);
}

}  // namespace
}  // namespace toolgate::notifier
