// Recovery of an unreadable SQLite store at start-up: the spool's (and the guardian's) database
// is checked before it is opened for writing, and a file that SQLite cannot read as a database
// (garbage, truncated, a failed `PRAGMA quick_check`) is moved aside — renamed to
// `<file>.corrupt-<UTC time>`, with its -wal and -shm — so that the daemon starts on a fresh
// store instead of exiting and being restarted into the same failure (a crash loop). Nothing is
// deleted: an operator can inspect or salvage the moved files. A write-ahead log whose header
// is not SQLite's is moved aside alone (SQLite would ignore it and overwrite it).
//
// Environment failures (permission denied, I/O errors, a busy database) are not corruption and
// are returned as errors: moving a healthy file aside because of them would lose its events.
//
// Content damage inside a blob (bytes changed within a chunk) is not visible to SQLite's checks;
// the spool's chunk decoder reports it when the chunk is read.
//
// Thread-compatible: call before the database is opened, from one thread.
#ifndef TOOLGATE_DAEMON_SPOOL_RECOVERY_H_
#define TOOLGATE_DAEMON_SPOOL_RECOVERY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/common/clock.h"

namespace toolgate::spool {

struct MovedAside {
  std::vector<std::string> files;  // the new names of the files moved aside (empty: none)
  std::string reason;              // what SQLite said about the file
};

// Checks the database at `path` (absent = nothing to check) and moves aside what is unreadable.
// Logs each move as an error. `now` names the moved files.
absl::StatusOr<MovedAside> MoveAsideIfUnreadable(const std::string& path, SystemTime now);

}  // namespace toolgate::spool

#endif  // TOOLGATE_DAEMON_SPOOL_RECOVERY_H_
