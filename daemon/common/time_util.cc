#include "daemon/common/time_util.h"

#include <ctime>

#include "absl/status/status.h"

namespace toolgate {

Clock* Clock::Real() {
  class RealClock : public Clock {
   public:
    SystemTime Now() const override { return std::chrono::system_clock::now(); }
    SteadyTime Steady() const override { return std::chrono::steady_clock::now(); }
  };
  static RealClock* clock = new RealClock();
  return clock;
}

std::string FormatRfc3339(SystemTime t) {
  std::string out;
  AppendRfc3339(t, &out);
  return out;
}

void AppendRfc3339(SystemTime t, std::string* out) {
  using namespace std::chrono;
  const auto us = duration_cast<microseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(us / 1'000'000);
  long frac = static_cast<long>(us % 1'000'000);
  if (frac < 0) {
    frac += 1'000'000;
    --secs;
  }
  // Called for every event without a timestamp: the date part is formatted once a second.
  thread_local std::time_t cached_secs = -1;
  thread_local char cached[72];  // 20 used; sized for any int, so that no warning fires
  if (secs != cached_secs) {
    std::tm tm{};
    gmtime_r(&secs, &tm);
    std::snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_secs = secs;
  }
  const size_t at = out->size();
  out->append(cached, 19);
  out->resize(at + 27);
  char* w = out->data() + at;
  w[19] = '.';
  for (int i = 25; i >= 20; --i) {
    w[i] = static_cast<char>('0' + frac % 10);
    frac /= 10;
  }
  w[26] = 'Z';
}

namespace {

bool Digits(std::string_view s, size_t pos, size_t n, int* out) {
  if (pos + n > s.size()) return false;
  int v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

}  // namespace

absl::StatusOr<SystemTime> ParseRfc3339(std::string_view s) {
  auto bad = [](const char* why) {
    return absl::InvalidArgumentError(std::string("must be RFC 3339 with a timezone: ") + why);
  };
  int year, mon, day, hour, min, sec;
  if (!Digits(s, 0, 4, &year) || s.size() < 19 || s[4] != '-' || !Digits(s, 5, 2, &mon) ||
      s[7] != '-' || !Digits(s, 8, 2, &day) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      !Digits(s, 11, 2, &hour) || s[13] != ':' || !Digits(s, 14, 2, &min) || s[16] != ':' ||
      !Digits(s, 17, 2, &sec)) {
    return bad("expected YYYY-MM-DDThh:mm:ss");
  }
  if (mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60) {
    return bad("field out of range");
  }
  // SystemTime counts nanoseconds in 64 bits: years past 2262 would overflow (found by
  // tests/fuzz/event_fuzz.cc). No agent event is from before 1970 or after 2200.
  if (year < 1970 || year > 2200) return bad("year out of range (1970 to 2200)");
  size_t pos = 19;
  long long micros = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    size_t start = pos;
    long long scale = 100000;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      if (scale > 0) micros += (s[pos] - '0') * scale;
      scale /= 10;
      ++pos;
    }
    if (pos == start) return bad("empty fraction");
  }
  if (pos >= s.size()) return bad("timezone missing");
  int offset_min = 0;
  if (s[pos] == 'Z' || s[pos] == 'z') {
    ++pos;
  } else if (s[pos] == '+' || s[pos] == '-') {
    int oh, om;
    if (!Digits(s, pos + 1, 2, &oh) || pos + 3 >= s.size() || s[pos + 3] != ':' ||
        !Digits(s, pos + 4, 2, &om) || oh > 23 || om > 59) {
      return bad("timezone must be Z or +hh:mm");
    }
    offset_min = (oh * 60 + om) * (s[pos] == '-' ? -1 : 1);
    pos += 6;
  } else {
    return bad("timezone missing");
  }
  if (pos != s.size()) return bad("trailing characters");
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  const std::time_t t = timegm(&tm);
  return SystemTime(std::chrono::seconds(t - offset_min * 60LL)) +
         std::chrono::microseconds(micros);
}

}  // namespace toolgate
