// tg_loadgen: load generator for `bench/run audit`.
//
//   tg_loadgen stream ADDRESS CLIENTS EVENTS_PER_CLIENT BATCH WINDOW
//       CLIENTS bidirectional streams, each sending EVENTS_PER_CLIENT tool events (~300 bytes,
//       ~150-byte arguments) in batches of BATCH with at most WINDOW unacknowledged batches.
//       Prints one JSON line: {"acked": N, "seconds": S, "errors": E}.
//   tg_loadgen unary ADDRESS REQUESTS
//       REQUESTS sequential Record calls of one event each; prints ack latency percentiles.
//   tg_loadgen check ADDRESS RATE SECONDS THREADS
//       Policy.Check and the standard gRPC health Check (the floor that gRPC itself sets), each
//       at a fixed RATE per second for SECONDS, in alternating one-second slices, spread over
//       THREADS connections; each call is sent at its scheduled time (or at once when late) and
//       timed from its send. Prints one JSON line: percentiles of each, {"check": {...},
//       "health": {...}}.
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

#include "bench/bench_event.h"
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
  Event e = toolgate::bench::BenchEvent(client, i);
  if (kClientIds) e.set_event_id(RandomUuid());
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

// Latencies of one kind of call, over all threads.
struct Series {
  std::mutex mu;
  std::vector<double> us;
  uint64_t errors = 0, late = 0;
};

void PrintSeries(const char* name, Series* s, bool last) {
  std::sort(s->us.begin(), s->us.end());
  const auto& v = s->us;
  auto pct = [&](double p) {
    return v.empty() ? 0.0 : v[std::min(v.size() - 1, size_t(p * v.size()))];
  };
  std::printf(
      "\"%s\": {\"calls\": %zu, \"errors\": %llu, \"late\": %llu, \"p50_us\": %.0f, "
      "\"p99_us\": %.0f, \"p999_us\": %.0f, \"max_us\": %.0f}%s",
      name, v.size(), static_cast<unsigned long long>(s->errors),
      static_cast<unsigned long long>(s->late), pct(0.5), pct(0.99), pct(0.999),
      v.empty() ? 0.0 : v.back(), last ? "" : ", ");
}

// Policy.Check and the health Check, in alternating one-second slices at the same rate, so
// that both see the same machine (a busy neighbour, a frequency step, a page-cache flush): the
// ratio of the two is the cost of the policy, not of the moment. Both calls are made the same
// way — started and completed on the calling thread's own completion queue, as a blocking
// stub does — so that the floor is gRPC's, not a difference between client code paths.
int Check(const std::string& address, int rate, int seconds, int threads) {
  Series series[2];  // 0: check, 1: health
  const auto interval = std::chrono::nanoseconds(1'000'000'000LL * threads / rate);
  const auto start = Clock::now() + std::chrono::milliseconds(200);
  const auto end = start + std::chrono::seconds(2 * seconds);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      auto channel = Channel(address, 2000 + t);
      auto stub = toolgate::v1::Policy::NewStub(channel);
      grpc::GenericStub generic(channel);
      grpc::CompletionQueue cq;
      toolgate::v1::CheckRequest req;
      auto* a = req.mutable_action();
      a->set_agent_id("bench-agent");
      a->set_session_id("bench-session-" + std::to_string(t));
      a->set_tool_type("api");
      a->set_operation("write");
      a->set_target_system("prod-billing");
      std::vector<double> lat[2];
      uint64_t errors[2] = {0, 0}, late[2] = {0, 0};
      uint64_t i = 0;
      auto next = start + interval * t / threads;
      while (next < end) {
        std::this_thread::sleep_until(next);
        // Even seconds from the start: Check; odd: health.
        const int kind = static_cast<int>(
            std::chrono::duration_cast<std::chrono::seconds>(next - start).count() % 2);
        if (Clock::now() - next > interval) ++late[kind];
        a->set_tool_name("tool_" + std::to_string(i % 1200));
        a->set_arguments_json(R"({"amount":)" + std::to_string(i % 2000) +
                              R"(,"command":"ls -la /tmp","to":"ops@example.com"})");
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        grpc::Status s;
        toolgate::v1::CheckResponse resp;
        grpc::ByteBuffer response;
        const auto t0 = Clock::now();
        if (kind == 0) {
          auto call = stub->PrepareAsyncCheck(&ctx, req, &cq);
          call->StartCall();
          call->Finish(&resp, &s, &cq);
        } else {
          grpc::Slice empty(std::string{});  // HealthCheckRequest{} serializes to no bytes
          grpc::ByteBuffer request(&empty, 1);
          auto call = generic.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
          call->StartCall();
          call->Finish(&response, &s, &cq);
        }
        void* tag;
        bool ok;
        if (!cq.Next(&tag, &ok) || !ok) s = grpc::Status(grpc::StatusCode::INTERNAL, "cq");
        const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
        if (s.ok()) {
          lat[kind].push_back(us);
        } else {
          ++errors[kind];
        }
        ++i;
        next += interval;
      }
      cq.Shutdown();
      void* tag;
      bool ok;
      while (cq.Next(&tag, &ok)) {
      }
      for (int k = 0; k < 2; ++k) {
        std::lock_guard<std::mutex> l(series[k].mu);
        series[k].us.insert(series[k].us.end(), lat[k].begin(), lat[k].end());
        series[k].errors += errors[k];
        series[k].late += late[k];
      }
    });
  }
  for (auto& t : ts) t.join();
  std::printf("{");
  PrintSeries("check", &series[0], false);
  PrintSeries("health", &series[1], true);
  std::printf("}\n");
  const bool ok =
      series[0].errors + series[1].errors == 0 && !series[0].us.empty() && !series[1].us.empty();
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "stream" && argc == 7) {
    return Stream(argv[2], std::stoi(argv[3]), std::stoull(argv[4]), std::stoi(argv[5]),
                  std::stoi(argv[6]));
  }
  if (mode == "unary" && argc == 4) return Unary(argv[2], std::stoi(argv[3]));
  if (mode == "check" && argc == 6) {
    return Check(argv[2], std::stoi(argv[3]), std::stoi(argv[4]), std::stoi(argv[5]));
  }
  std::fprintf(stderr,
               "usage: tg_loadgen stream ADDRESS CLIENTS EVENTS_PER_CLIENT BATCH WINDOW\n"
               "       tg_loadgen unary ADDRESS REQUESTS\n"
               "       tg_loadgen check ADDRESS RATE SECONDS THREADS\n");
  return 2;
}
