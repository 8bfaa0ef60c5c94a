// normalize_bench: Normalizer::Normalize alone (no RPC, no spool), on the events tg_loadgen
// sends (bench/bench_event.h: ~300-byte tool calls with ~150 bytes of arguments, different for
// every event), in batches of 200 as a stream message carries them. Prints one line, then one
// JSON object (the last line) with the median and the fastest of the rounds in ns per event.
//
// What it covers of the gRPC threads' work per event: validation, RFC 8785 canonicalization
// and SHA-256 of the arguments, the event id, the envelope, and freeing it all (in the daemon
// the spool's writer frees the events, on another thread). Not covered: protobuf parsing,
// gRPC, the acknowledgement.
//
//   build/bench/tg_normalize_bench [rounds, default 200]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_event.h"
#include "daemon/common/clock.h"
#include "daemon/normalize/normalizer.h"

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 200;
  constexpr int kBatch = 200;
  constexpr int kBatchesPerRound = 50;
  toolgate::normalize::Normalizer normalizer({}, toolgate::Clock::Real());
  std::vector<toolgate::v1::Event> in;
  for (int i = 0; i < kBatch * kBatchesPerRound; ++i) {
    in.push_back(toolgate::bench::BenchEvent(i % 4, i));
  }

  std::vector<double> ns_per_event;
  size_t bytes = 0;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int b = 0; b < kBatchesPerRound; ++b) {
      std::vector<toolgate::normalize::NormalizedEvent> out(kBatch);
      for (int i = 0; i < kBatch; ++i) {
        if (!normalizer.Normalize(in[b * kBatch + i], "events[]", &out[i]).ok()) std::abort();
      }
      bytes += out[0].envelope.size();
    }
    const auto t1 = std::chrono::steady_clock::now();
    ns_per_event.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() /
                           (kBatch * kBatchesPerRound));
  }
  std::sort(ns_per_event.begin(), ns_per_event.end());
  const double median = ns_per_event[ns_per_event.size() / 2];
  const double best = ns_per_event.front();
  std::printf(
      "normalize: %d rounds of %d events, %.0f ns/event median, %.0f fastest "
      "(envelope ~%zu bytes)\n",
      rounds, kBatch * kBatchesPerRound, median, best,
      bytes / (static_cast<size_t>(rounds) * kBatchesPerRound));
  std::printf("{\"normalize_ns_per_event\": %.0f, \"normalize_ns_per_event_fastest\": %.0f}\n",
              median, best);
  return 0;
}
