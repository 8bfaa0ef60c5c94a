// The event the audit benchmark sends: a ~300-byte tool call with ~150 bytes of arguments,
// different for every event. Shared by tg_loadgen (what it streams) and tg_normalize_bench
// (what it normalizes), so that the two figures are about the same events.
#ifndef TOOLGATE_BENCH_BENCH_EVENT_H_
#define TOOLGATE_BENCH_BENCH_EVENT_H_

#include <cstdint>
#include <string>

#include "toolgate/v1/events.pb.h"

namespace toolgate::bench {

inline toolgate::v1::Event BenchEvent(int client, uint64_t i) {
  toolgate::v1::Event e;
  e.set_agent_id("bench-agent-" + std::to_string(client));
  e.set_session_id("bench-session-" + std::to_string(client) + "-" + std::to_string(i % 16));
  auto* t = e.mutable_tool_call();
  t->set_tool_name("read_file");
  t->set_response_status("success");
  t->set_arguments_json(R"({"path":"/data/reports/2026/q3/customer-export-)" + std::to_string(i) +
                        R"(.csv","mode":"read","limit":1000,"filters":{"region":"eu-west-1",)"
                        R"("status":"active"}})");
  return e;
}

}  // namespace toolgate::bench

#endif  // TOOLGATE_BENCH_BENCH_EVENT_H_
