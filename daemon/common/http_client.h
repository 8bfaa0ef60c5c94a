// HttpClient: the seam between the daemon and the upstream API for everything but the event
// stream (the shipper has its own tuned loop): remote policy checks, policy sync, guardian
// polling, agent registration. One thread ("tg-http") drives a libcurl multi handle, so callers
// never block: Send() queues a request and returns; the callback runs on that thread when the
// answer, a timeout or a transport error arrives.
//
// Every request carries the upstream's authentication (Authorization: Bearer), the
// x-kaplaix-sdk header and, for bodies, Content-Type: application/json. TLS is verified (against
// upstream.ca_file when set) unless upstream.insecure_skip_verify, which the shipper already
// warns about.
//
// Thread-safe. Callbacks must not block: they run on the client's only thread.
#ifndef TOOLGATE_DAEMON_COMMON_HTTP_CLIENT_H_
#define TOOLGATE_DAEMON_COMMON_HTTP_CLIENT_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace toolgate {

struct HttpClientOptions {
  std::string base_url;  // e.g. https://api.kaplaix.com (no trailing slash)
  std::string api_key;   // Bearer key; never logged
  std::string user_agent;
  std::string ca_file;  // empty = the system's CAs
  bool insecure_skip_verify = false;
  std::chrono::milliseconds connect_timeout{5000};
};

struct HttpResponse {
  long status = 0;    // HTTP status; 0 when no answer arrived (see `error`)
  std::string body;   // at most 1 MiB is kept
  std::string error;  // transport error (timeout, refused, TLS, DNS); empty when answered
  std::chrono::milliseconds elapsed{0};

  bool ok() const { return error.empty() && status >= 200 && status < 300; }
  // "HTTP 503: <the upstream's error message>" or the transport error, for logs and answers.
  std::string Describe() const;
};

class HttpClient {
 public:
  using Callback = std::function<void(HttpResponse)>;

  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(HttpClientOptions options);
  ~HttpClient();

  // `path` is appended to base_url (it starts with '/'); `body` empty = no body (GET).
  void Send(std::string method, std::string path, std::string body,
            std::chrono::milliseconds timeout, Callback done);

  // Send, then wait for the answer: for the daemon's own background threads only (never a
  // gRPC callback thread).
  HttpResponse SendAndWait(std::string method, std::string path, std::string body,
                           std::chrono::milliseconds timeout);

  // Answers every queued and in-flight request with error "shutting down", then joins.
  void Stop();

 private:
  class Loop;
  explicit HttpClient(std::unique_ptr<Loop> loop);
  std::unique_ptr<Loop> loop_;
};

}  // namespace toolgate

#endif  // TOOLGATE_DAEMON_COMMON_HTTP_CLIENT_H_
