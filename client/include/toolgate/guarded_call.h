// toolgate/guarded_call.h: run a tool only when the daemon's policy allows it, and audit it.
//
//   absl::StatusOr<Receipt> r = toolgate::GuardedCall(client, action, [&] { return Pay(x); });
//
// GuardedCall() asks Client::Authorize() (Check, then a human's decision when the policy
// requires approval). Allowed: it runs the tool, measures it, and records a tool_call event
// (the action's tool name, arguments, "success" or "error", the duration, GuardOptions::endpoint,
// the action's attribution fields, causationEventId = the check's audit event) without waiting
// for it to be durable; then it returns the tool's own result. Denied, rejected or expired: the
// tool does not run, the answer is PERMISSION_DENIED with the reason (Verdict::Explain()), and
// nothing more is recorded (the daemon has already recorded the check and the decision).
// The daemon unreachable: the tool does not run and the answer is UNAVAILABLE or
// DEADLINE_EXCEEDED, unless GuardOptions::fail_open.
//
// The tool returns absl::Status or absl::StatusOr<T>; an exception from it is recorded as an
// error and rethrown.
//
// Thread-safe (as Client is).
#ifndef TOOLGATE_GUARDED_CALL_H_
#define TOOLGATE_GUARDED_CALL_H_

#include <chrono>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "toolgate/client.h"

namespace toolgate {

struct GuardOptions {
  // How long to wait for a human when approval is required. Default: no limit of our own (the
  // rule's approval_timeout ends the wait on the daemon's side, with its on_timeout effect).
  absl::Duration approval_timeout = absl::InfiniteDuration();
  // Recorded as the tool call's endpoint. Default: empty.
  std::string endpoint;
  // Run the tool anyway when the daemon cannot answer (UNAVAILABLE, DEADLINE_EXCEEDED of the
  // check); the call is still recorded. Default: false (fail closed).
  bool fail_open = false;
  // When not null, receives the verdict (allowed or not). Default: null.
  Verdict* verdict = nullptr;
};

namespace guarded_call_internal {

template <typename R>
struct IsStatusOr : std::false_type {};
template <typename T>
struct IsStatusOr<absl::StatusOr<T>> : std::true_type {};

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// Authorizes `action` (OK = run the tool), filling *verdict.
absl::Status Before(Client& client, const Action& action, const GuardOptions& options,
                    Verdict* verdict);
// Records the tool call's outcome.
void After(Client& client, const Action& action, const GuardOptions& options,
           const Verdict& verdict, const absl::Status& outcome,
           std::chrono::steady_clock::duration elapsed);

}  // namespace guarded_call_internal

template <typename F>
auto GuardedCall(Client& client, const Action& action, F&& tool, const GuardOptions& options = {})
    -> std::invoke_result_t<F&&> {
  using R = std::invoke_result_t<F&&>;
  static_assert(std::is_same_v<R, absl::Status> || guarded_call_internal::IsStatusOr<R>::value,
                "the tool must return absl::Status or absl::StatusOr<T>");
  Verdict local;
  Verdict* verdict = options.verdict != nullptr ? options.verdict : &local;
  if (absl::Status s = guarded_call_internal::Before(client, action, options, verdict); !s.ok()) {
    return R(std::move(s));
  }
  const auto start = std::chrono::steady_clock::now();
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  try {
    R result = std::forward<F>(tool)();
    guarded_call_internal::After(client, action, options, *verdict,
                                 guarded_call_internal::StatusOf(result),
                                 std::chrono::steady_clock::now() - start);
    return result;
  } catch (...) {
    guarded_call_internal::After(client, action, options, *verdict,
                                 absl::UnknownError("the tool threw an exception"),
                                 std::chrono::steady_clock::now() - start);
    throw;
  }
#else
  R result = std::forward<F>(tool)();
  guarded_call_internal::After(client, action, options, *verdict,
                               guarded_call_internal::StatusOf(result),
                               std::chrono::steady_clock::now() - start);
  return result;
#endif
}

}  // namespace toolgate

#endif  // TOOLGATE_GUARDED_CALL_H_
