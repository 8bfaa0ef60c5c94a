// tg_sink: a fast local stand-in for the upstream in benchmarks. Accepts POST /v1/events
// (one envelope or a JSON array, gzip or not), answers 202, and counts events; GET /count
// returns the count. It does not validate envelopes: the fake upstream in tests/ does that.
#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <string>

namespace {

// Number of top-level elements of a JSON array (or 1 for an object), scanning brackets and
// strings only: far cheaper than a full parse, which would take the CPU the daemon is measured on.
size_t CountEvents(const std::string& body) {
  size_t i = 0;
  while (i < body.size() && isspace(static_cast<unsigned char>(body[i]))) ++i;
  if (i >= body.size()) return 0;
  if (body[i] == '{') return 1;
  size_t count = 0;
  int depth = 0;
  bool in_string = false;
  for (; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth == 2 && c == '{') ++count;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  httplib::Server server;
  // One worker per connection while it is kept alive: with httplib's default of 8 workers, the
  // daemon's 8 kept-alive shipping connections (upstream.max_in_flight) took them all, and the
  // benchmark's GET /count waited for one to idle out (5 s), which showed as a slow drain.
  server.new_task_queue = [] { return new httplib::ThreadPool(32); };
  std::atomic<uint64_t> events{0}, requests{0};
  server.Post("/v1/events", [&](const httplib::Request& req, httplib::Response& res) {
    const size_t n = CountEvents(req.body);
    events += n;
    ++requests;
    res.status = 202;
    res.set_content("{\"accepted\":" + std::to_string(n) + ",\"rejected\":[]}", "application/json");
  });
  server.Get("/count", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"count\":" + std::to_string(events.load()) +
                        ",\"requests\":" + std::to_string(requests.load()) + "}",
                    "application/json");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  std::printf("PORT %d\n", port);
  std::fflush(stdout);
  server.listen_after_bind();
  return 0;
}
