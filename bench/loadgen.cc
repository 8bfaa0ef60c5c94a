// tg_loadgen: load generator for `bench/run audit`.
//
//   tg_loadgen stream ADDRESS CLIENTS EVENTS_PER_CLIENT BATCH WINDOW
//       CLIENTS bidirectional streams, each sending EVENTS_PER_CLIENT tool events (~300 bytes,
//       ~150-byte arguments) in batches of BATCH with at most WINDOW unacknowledged batches.
//       Prints one JSON line: {"acked": N, "seconds": S, "errors": E}.
//   tg_loadgen unary ADDRESS REQUESTS
//       REQUESTS sequential Record calls of one event each; prints ack latency percentiles.
//   tg_loadgen check ADDRESS RATE SECONDS THREADS check|health
//       Policy.Check (or the standard gRPC health Check, the floor that gRPC itself sets) at a
//       fixed RATE per second for SECONDS, spread over THREADS connections; each call is sent at
//       its scheduled time (or at once when late) and timed from its send. Prints percentiles.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "toolgate/v1/events.grpc.pb.h"
#include "toolgate/v1/policy.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
using toolgate::v1::Event;

// With TG_LOADGEN_CLIENT_IDS set, every event carries an eventId chosen by the client, as the
// client libraries send them (so that a resend is recognised): the daemon then looks each one
// up in its window of recent ids. Without it the daemon draws the ids.
const bool kClientIds = std::getenv("TG_LOADGEN_CLIENT_IDS") != nullptr;

std::string RandomUuid() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  const uint64_t a = rng(), b = rng();
  char out[37];
  std::snprintf(out, sizeof(out), "%08x-%04x-4%03x-%04x-%012llx", static_cast<unsigned>(a >> 32),
                static_cast<unsigned>((a >> 16) & 0xffff), static_cast<unsigned>(a & 0xfff),
                static_cast<unsigned>(0x8000 | (b >> 48 & 0x3fff)),
                static_cast<unsigned long long>(b & 0xffffffffffffULL));
  return out;
}

Event MakeEvent(int client, uint64_t i) {
  Event e;
  if (kClientIds) e.set_event_id(RandomUuid());
  e.set_agent_id("bench-agent-" + std::to_string(client));
  e.set_session_id("bench-session-" + std::to_string(client) + "-" + std::to_string(i % 16));
  auto* t = e.mutable_tool_call();
  t->set_tool_name("read_file");
  t->set_response_status("success");
  // ~150 bytes of arguments, different for every event.
  t->set_arguments_json(R"({"path":"/data/reports/2026/q3/customer-export-)" + std::to_string(i) +
                        R"(.csv","mode":"read","limit":1000,"filters":{"region":"eu-west-1",)"
                        R"("status":"active"}})");
  return e;
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address, int id) {
  grpc::ChannelArguments args;
  args.SetInt("toolgate.channel_id", id);  // distinct channels, hence connections
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

int Stream(const std::string& address, int clients, uint64_t per_client, int batch, int window) {
  std::atomic<uint64_t> acked{0}, errors{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto stub = toolgate::v1::Events::NewStub(Channel(address, c));
      grpc::ClientContext ctx;
      auto stream = stub->Stream(&ctx);
      std::mutex mu;
      std::condition_variable cv;
      int outstanding = 0;
      std::thread reader([&] {
        toolgate::v1::StreamAck ack;
        while (stream->Read(&ack)) {
          if (ack.code() == 0) {
            acked += ack.event_ids_size();
          } else {
            ++errors;
          }
          std::lock_guard<std::mutex> l(mu);
          --outstanding;
          cv.notify_one();
        }
      });
      // Building requests is the agent's cost, paid on the load generator's CPU.
      uint64_t seq = 0;
      for (uint64_t i = 0; i < per_client; i += batch) {
        toolgate::v1::StreamRequest req;
        req.set_sequence(++seq);
        for (uint64_t j = i; j < std::min<uint64_t>(per_client, i + batch); ++j) {
          *req.add_events() = MakeEvent(c, j);
        }
        {
          std::unique_lock<std::mutex> l(mu);
          cv.wait(l, [&] { return outstanding < window; });
          ++outstanding;
        }
        if (!stream->Write(req)) break;
      }
      stream->WritesDone();
      reader.join();
      if (!stream->Finish().ok()) ++errors;
    });
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("{\"acked\": %llu, \"seconds\": %.3f, \"errors\": %llu}\n",
              static_cast<unsigned long long>(acked.load()), secs,
              static_cast<unsigned long long>(errors.load()));
  return errors.load() == 0 ? 0 : 1;
}

int Unary(const std::string& address, int requests) {
  auto stub = toolgate::v1::Events::NewStub(Channel(address, 1000));
  std::vector<double> us;
  us.reserve(requests);
  for (int i = 0; i < requests + 100; ++i) {
    toolgate::v1::RecordRequest req;
    *req.add_events() = MakeEvent(99, i);
    toolgate::v1::RecordResponse resp;
    grpc::ClientContext ctx;
    const auto t0 = Clock::now();
    grpc::Status s = stub->Record(&ctx, req, &resp);
    const double d = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (!s.ok()) {
      std::fprintf(stderr, "Record failed: %s\n", s.error_message().c_str());
      return 1;
    }
    if (i >= 100) us.push_back(d);  // the first 100 warm the connection up
  }
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) { return us[std::min(us.size() - 1, size_t(p * us.size()))]; };
  std::printf(
      "{\"requests\": %d, \"ack_p50_us\": %.0f, \"ack_p99_us\": %.0f, "
      "\"ack_max_us\": %.0f}\n",
      requests, pct(0.50), pct(0.99), us.back());
  return 0;
}

int Check(const std::string& address, int rate, int seconds, int threads, bool health) {
  std::vector<std::vector<double>> lat(threads);
  std::atomic<uint64_t> errors{0}, late{0};
  const auto interval = std::chrono::nanoseconds(1'000'000'000LL * threads / rate);
  const auto start = Clock::now() + std::chrono::milliseconds(200);
  const auto end = start + std::chrono::seconds(seconds);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      auto channel = Channel(address, 2000 + t);
      auto stub = toolgate::v1::Policy::NewStub(channel);
      grpc::GenericStub generic(channel);
      toolgate::v1::CheckRequest req;
      auto* a = req.mutable_action();
      a->set_agent_id("bench-agent");
      a->set_session_id("bench-session-" + std::to_string(t));
      a->set_tool_type("api");
      a->set_operation("write");
      a->set_target_system("prod-billing");
      uint64_t i = 0;
      auto next = start + interval * t / threads;
      lat[t].reserve(static_cast<size_t>(rate / threads * seconds + 16));
      while (next < end) {
        std::this_thread::sleep_until(next);
        if (Clock::now() - next > interval) ++late;
        a->set_tool_name("tool_" + std::to_string(i % 1200));
        a->set_arguments_json(R"({"amount":)" + std::to_string(i % 2000) +
                              R"(,"command":"ls -la /tmp","to":"ops@example.com"})");
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        const auto t0 = Clock::now();
        grpc::Status s;
        if (health) {
          grpc::Slice empty(std::string{});  // HealthCheckRequest{} serializes to no bytes
          grpc::ByteBuffer request(&empty, 1), response;
          std::mutex mu;
          std::condition_variable cv;
          bool done = false;
          generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                            &response, [&](grpc::Status st) {
                              std::lock_guard<std::mutex> l(mu);
                              s = st;
                              done = true;
                              cv.notify_one();
                            });
          std::unique_lock<std::mutex> l(mu);
          cv.wait(l, [&] { return done; });
        } else {
          toolgate::v1::CheckResponse resp;
          s = stub->Check(&ctx, req, &resp);
        }
        const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
        if (!s.ok()) {
          ++errors;
        } else {
          lat[t].push_back(us);
        }
        ++i;
        next += interval;
      }
    });
  }
  for (auto& t : ts) t.join();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  if (all.empty()) {
    std::printf("{\"calls\": 0, \"errors\": %llu}\n",
                static_cast<unsigned long long>(errors.load()));
    return 1;
  }
  auto pct = [&](double p) { return all[std::min(all.size() - 1, size_t(p * all.size()))]; };
  std::printf(
      "{\"calls\": %zu, \"errors\": %llu, \"late\": %llu, \"p50_us\": %.0f, "
      "\"p99_us\": %.0f, \"p999_us\": %.0f, \"max_us\": %.0f}\n",
      all.size(), static_cast<unsigned long long>(errors.load()),
      static_cast<unsigned long long>(late.load()), pct(0.5), pct(0.99), pct(0.999), all.back());
  return errors.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "stream" && argc == 7) {
    return Stream(argv[2], std::stoi(argv[3]), std::stoull(argv[4]), std::stoi(argv[5]),
                  std::stoi(argv[6]));
  }
  if (mode == "unary" && argc == 4) return Unary(argv[2], std::stoi(argv[3]));
  if (mode == "check" && argc == 7) {
    return Check(argv[2], std::stoi(argv[3]), std::stoi(argv[4]), std::stoi(argv[5]),
                 std::string(argv[6]) == "health");
  }
  std::fprintf(stderr,
               "usage: tg_loadgen stream ADDRESS CLIENTS EVENTS_PER_CLIENT BATCH WINDOW\n"
               "       tg_loadgen unary ADDRESS REQUESTS\n"
               "       tg_loadgen check ADDRESS RATE SECONDS THREADS check|health\n");
  return 2;
}
