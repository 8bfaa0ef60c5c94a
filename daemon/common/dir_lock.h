// DirLock: one daemon per data directory. Two daemons on one directory would chain the same
// sessions from two heads (forking every chain) and ship the same events twice; the second
// one must refuse to start instead.
//
// An flock(2) on DIR/toolgated.lock, held while the DirLock lives: the kernel releases it
// when the process ends however it ends (SIGKILL included), so a stale lock file never blocks
// a restart. The file holds the owner's pid, for the refusal's message.
#ifndef TOOLGATE_DAEMON_COMMON_DIR_LOCK_H_
#define TOOLGATE_DAEMON_COMMON_DIR_LOCK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace toolgate {

class DirLock {
 public:
  // FAILED_PRECONDITION when another process holds it (naming its pid); UNAVAILABLE when the
  // lock file cannot be opened.
  static absl::StatusOr<std::unique_ptr<DirLock>> Acquire(const std::string& dir);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

  static constexpr char kFileName[] = "toolgated.lock";

 private:
  explicit DirLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace toolgate

#endif  // TOOLGATE_DAEMON_COMMON_DIR_LOCK_H_
