#include "daemon/common/http_client.h"

#include <curl/curl.h>
#include <pthread.h>

#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace toolgate {
namespace {

constexpr size_t kMaxBody = 1 << 20;

struct Request {
  std::string method, url, body;
  std::chrono::milliseconds timeout{0};
  HttpClient::Callback done;
  HttpResponse response;
  std::chrono::steady_clock::time_point started;
  char error[CURL_ERROR_SIZE] = {0};
};

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<Request*>(user);
  const size_t len = size * n;
  if (r->response.body.size() < kMaxBody) {
    r->response.body.append(data, std::min(len, kMaxBody - r->response.body.size()));
  }
  return len;
}

}  // namespace

std::string HttpResponse::Describe() const {
  if (!error.empty()) return error;
  std::string message;
  auto doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_object() && doc.contains("error") && doc["error"].is_object()) {
    const auto& e = doc["error"];
    if (e.contains("code") && e["code"].is_string()) message = e["code"].get<std::string>();
    if (e.contains("message") && e["message"].is_string()) {
      message += (message.empty() ? "" : ": ") + e["message"].get<std::string>();
    }
  }
  return absl::StrCat("HTTP ", status, message.empty() ? "" : ": ", message);
}

class HttpClient::Loop {
 public:
  explicit Loop(HttpClientOptions o) : o_(std::move(o)) {}
  ~Loop() {
    if (headers_) curl_slist_free_all(headers_);
    if (multi_) curl_multi_cleanup(multi_);
  }

  absl::Status Init() {
    multi_ = curl_multi_init();
    if (!multi_) return absl::InternalError("curl_multi_init failed");
    headers_ = curl_slist_append(headers_, "Content-Type: application/json");
    headers_ = curl_slist_append(headers_, "Accept: application/json");
    headers_ = curl_slist_append(headers_, "Expect:");
    if (!o_.api_key.empty()) {
      headers_ = curl_slist_append(headers_, ("Authorization: Bearer " + o_.api_key).c_str());
    }
    headers_ = curl_slist_append(headers_, ("x-kaplaix-sdk: " + o_.user_agent).c_str());
    thread_ = std::thread([this] { Run(); });
    return absl::OkStatus();
  }

  void Send(std::unique_ptr<Request> r) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!stopping_) {
        queue_.push_back(std::move(r));
        r = nullptr;
      }
    }
    if (r) {
      r->response.error = "shutting down";
      r->done(std::move(r->response));
      return;
    }
    curl_multi_wakeup(multi_);
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    curl_multi_wakeup(multi_);
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Start(std::unique_ptr<Request> r) {
    r->url = o_.base_url + r->url;
    CURL* e = curl_easy_init();
    if (!e) {
      r->response.error = "curl_easy_init failed";
      r->done(std::move(r->response));
      return;
    }
    curl_easy_setopt(e, CURLOPT_URL, r->url.c_str());
    if (r->method == "GET") {
      curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method.c_str());
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body.data());
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r->body.size()));
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers_);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &OnBody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r.get());
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->error);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r.get());
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(r->timeout.count()));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(std::min(o_.connect_timeout, r->timeout).count()));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_USERAGENT, o_.user_agent.c_str());
    if (!o_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, o_.ca_file.c_str());
    if (o_.insecure_skip_verify) {
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    r->started = std::chrono::steady_clock::now();
    curl_multi_add_handle(multi_, e);
    in_flight_.emplace(e, std::move(r));
  }

  void Complete(CURL* e, CURLcode code) {
    auto it = in_flight_.find(e);
    std::unique_ptr<Request> r = std::move(it->second);
    in_flight_.erase(it);
    curl_multi_remove_handle(multi_, e);
    r->response.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - r->started);
    if (code == CURLE_OK) {
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->response.status);
    } else {
      r->response.status = 0;
      r->response.body.clear();
      r->response.error = absl::StrCat(curl_easy_strerror(code), r->error[0] ? ": " : "", r->error);
    }
    curl_easy_cleanup(e);
    r->done(std::move(r->response));
  }

  void Run() {
    pthread_setname_np(pthread_self(), "tg-http");
    for (;;) {
      std::deque<std::unique_ptr<Request>> fresh;
      bool stopping;
      {
        std::lock_guard<std::mutex> l(mu_);
        fresh.swap(queue_);
        stopping = stopping_;
      }
      if (stopping) {
        for (auto& r : fresh) {
          r->response.error = "shutting down";
          r->done(std::move(r->response));
        }
        std::vector<CURL*> handles;
        for (auto& [e, r] : in_flight_) handles.push_back(e);
        for (CURL* e : handles) {
          auto it = in_flight_.find(e);
          std::unique_ptr<Request> r = std::move(it->second);
          in_flight_.erase(it);
          curl_multi_remove_handle(multi_, e);
          curl_easy_cleanup(e);
          r->response.error = "shutting down";
          r->done(std::move(r->response));
        }
        return;
      }
      for (auto& r : fresh) Start(std::move(r));
      int running = 0;
      curl_multi_perform(multi_, &running);
      int left = 0;
      while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
        if (m->msg == CURLMSG_DONE) Complete(m->easy_handle, m->data.result);
      }
      curl_multi_poll(multi_, nullptr, 0, 1000, nullptr);
    }
  }

  const HttpClientOptions o_;
  CURLM* multi_ = nullptr;
  curl_slist* headers_ = nullptr;
  std::map<CURL*, std::unique_ptr<Request>> in_flight_;  // loop thread only
  std::mutex mu_;
  std::deque<std::unique_ptr<Request>> queue_;  // guarded by mu_
  bool stopping_ = false;                       // guarded by mu_
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(HttpClientOptions options) {
  auto loop = std::make_unique<Loop>(std::move(options));
  if (absl::Status s = loop->Init(); !s.ok()) return s;
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(loop)));
}

HttpClient::HttpClient(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

HttpClient::~HttpClient() { Stop(); }

void HttpClient::Send(std::string method, std::string path, std::string body,
                      std::chrono::milliseconds timeout, Callback done) {
  auto r = std::make_unique<Request>();
  r->method = std::move(method);
  r->url = std::move(path);  // the loop puts base_url in front
  r->body = std::move(body);
  r->timeout = timeout;
  r->done = std::move(done);
  loop_->Send(std::move(r));
}

HttpResponse HttpClient::SendAndWait(std::string method, std::string path, std::string body,
                                     std::chrono::milliseconds timeout) {
  auto promise = std::make_shared<std::promise<HttpResponse>>();
  auto future = promise->get_future();
  Send(std::move(method), std::move(path), std::move(body), timeout,
       [promise](HttpResponse r) { promise->set_value(std::move(r)); });
  return future.get();
}

void HttpClient::Stop() { loop_->Stop(); }

}  // namespace toolgate
