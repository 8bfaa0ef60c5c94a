// Structured logs: one JSON object per line on stderr (journald and container runtimes
// collect stderr). Thread-safe.
//
// Never pass secrets or raw tool arguments as fields: log lines leave the host.
#ifndef TOOLGATE_DAEMON_COMMON_LOG_H_
#define TOOLGATE_DAEMON_COMMON_LOG_H_

#include <nlohmann/json.hpp>
#include <string_view>

namespace toolgate {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Lines below `level` are dropped. Default kInfo.
void SetLogLevel(LogLevel level);
bool ParseLogLevel(std::string_view text, LogLevel* level);

void Log(LogLevel level, std::string_view msg, const nlohmann::json& fields = nullptr);
inline void LogInfo(std::string_view msg, const nlohmann::json& f = nullptr) {
  Log(LogLevel::kInfo, msg, f);
}
inline void LogWarn(std::string_view msg, const nlohmann::json& f = nullptr) {
  Log(LogLevel::kWarn, msg, f);
}
inline void LogError(std::string_view msg, const nlohmann::json& f = nullptr) {
  Log(LogLevel::kError, msg, f);
}
inline void LogDebug(std::string_view msg, const nlohmann::json& f = nullptr) {
  Log(LogLevel::kDebug, msg, f);
}

}  // namespace toolgate

#endif  // TOOLGATE_DAEMON_COMMON_LOG_H_
