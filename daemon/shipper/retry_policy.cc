#include "daemon/shipper/retry_policy.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <string>

namespace toolgate::shipper {

ShipAction Classify(long status, bool transport_error) {
  if (transport_error || status == 0) return ShipAction::kRetry;
  if (status >= 200 && status < 300) return ShipAction::kOk;
  switch (status) {
    case 408:
    case 429:
    case 500:
    case 502:
    case 503:
    case 504:
      return ShipAction::kRetry;
    case 401:
    case 403:
      return ShipAction::kAuthPause;
    default:
      return ShipAction::kDeadLetter;
  }
}

const char* ShipActionName(ShipAction a) {
  switch (a) {
    case ShipAction::kOk:
      return "ok";
    case ShipAction::kRetry:
      return "retry";
    case ShipAction::kAuthPause:
      return "auth_pause";
    case ShipAction::kDeadLetter:
      return "dead_letter";
  }
  return "?";
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view v, SystemTime now) {
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.remove_prefix(1);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.remove_suffix(1);
  if (v.empty()) return std::nullopt;
  if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    if (v.size() > 9) return std::chrono::hours(24);  // absurdly large: cap
    return std::chrono::seconds(std::stoll(std::string(v)));
  }
  // HTTP-date, e.g. "Wed, 21 Oct 2015 07:28:00 GMT"; curl_getdate parses all three forms.
  const time_t t = curl_getdate(std::string(v).c_str(), nullptr);
  if (t < 0) return std::nullopt;
  const auto when = std::chrono::system_clock::from_time_t(t);
  if (when <= now) return std::chrono::milliseconds(0);
  return std::chrono::duration_cast<std::chrono::milliseconds>(when - now);
}

std::chrono::milliseconds BackoffDelay(int attempt, std::chrono::milliseconds initial,
                                       std::chrono::milliseconds max, double random01) {
  const int shift = std::clamp(attempt - 1, 0, 30);
  const double bound = std::min(static_cast<double>(max.count()),
                                static_cast<double>(initial.count()) * double(1LL << shift));
  return std::chrono::milliseconds(static_cast<int64_t>(bound * random01));
}

}  // namespace toolgate::shipper
