#include "daemon/spool/recovery.h"

#include <sqlite3.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "daemon/common/log.h"

namespace toolgate::spool {
namespace {

namespace fs = std::filesystem;

// The first four bytes of a write-ahead log, big endian (https://sqlite.org/fileformat.html).
constexpr unsigned char kWalMagic[] = {0x37, 0x7f, 0x06};  // then 0x82 or 0x83
constexpr size_t kWalHeaderBytes = 32;

std::string Stamp(SystemTime now) {
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

// Renames `from` to a free name "<from>.corrupt-<stamp>" (then -2, -3 … if taken).
absl::StatusOr<std::string> Rename(const std::string& from, const std::string& stamp) {
  std::string to = absl::StrCat(from, ".corrupt-", stamp);
  std::error_code ec;
  for (int i = 2; fs::exists(to, ec); ++i) to = absl::StrCat(from, ".corrupt-", stamp, "-", i);
  fs::rename(from, to, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("spool: cannot move '", from, "' aside: ", ec.message()));
  }
  return to;
}

// Whether a write-ahead log (that exists) has SQLite's header; an empty one counts as valid.
bool WalHeaderValid(const std::string& wal) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(wal, ec);
  if (ec || size == 0) return true;
  if (size < kWalHeaderBytes) return false;
  unsigned char magic[4] = {};
  std::ifstream in(wal, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(magic), sizeof(magic))) return false;
  return magic[0] == kWalMagic[0] && magic[1] == kWalMagic[1] && magic[2] == kWalMagic[2] &&
         (magic[3] == 0x82 || magic[3] == 0x83);
}

// What SQLite says of the file: "" when it reads as a sound database, the reason when it is
// corrupt; an error status when it could not be checked at all.
absl::StatusOr<std::string> Check(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  std::string verdict;
  if (rc == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt* st = nullptr;
    rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, nullptr);
    if (rc == SQLITE_OK) {
      rc = sqlite3_step(st);
      if (rc == SQLITE_ROW) {
        const unsigned char* text = sqlite3_column_text(st, 0);
        verdict = text ? reinterpret_cast<const char*>(text) : "";
        if (verdict == "ok") verdict.clear();
        rc = SQLITE_OK;
      }
    }
    sqlite3_finalize(st);
  }
  const int code = rc & 0xff;
  std::string message = db ? sqlite3_errmsg(db) : "out of memory";
  sqlite3_close(db);
  if (code == SQLITE_OK || code == SQLITE_DONE) return verdict;
  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return message;
  return absl::UnavailableError(
      absl::StrCat("spool: cannot check '", path, "' (", message, "); not moved aside"));
}

}  // namespace

absl::StatusOr<MovedAside> MoveAsideIfUnreadable(const std::string& path, SystemTime now) {
  MovedAside out;
  const std::string wal = path + "-wal";
  const std::string shm = path + "-shm";
  const std::string stamp = Stamp(now);
  std::error_code ec;
  const bool db_exists = fs::exists(path, ec);
  const bool wal_exists = fs::exists(wal, ec);
  auto move = [&](const std::string& file) -> absl::Status {
    if (!fs::exists(file, ec)) return absl::OkStatus();
    auto to = Rename(file, stamp);
    if (!to.ok()) return to.status();
    out.files.push_back(*to);
    return absl::OkStatus();
  };

  // A log that is not SQLite's, or a log without its database (SQLite would replay its frames
  // into a new, empty file): moved aside alone, with the index of it (-shm).
  if (wal_exists && (!db_exists || !WalHeaderValid(wal))) {
    out.reason = db_exists ? "the write-ahead log has no SQLite header"
                           : "a write-ahead log without its database";
    if (absl::Status s = move(wal); !s.ok()) return s;
    if (absl::Status s = move(shm); !s.ok()) return s;
  }
  bool db_moved = false;
  if (db_exists) {
    auto verdict = Check(path);
    if (!verdict.ok()) return verdict.status();
    if (!verdict->empty()) {
      out.reason = *verdict;
      db_moved = true;
      for (const std::string& f : {path, wal, shm}) {
        if (absl::Status s = move(f); !s.ok()) return s;
      }
    }
  }
  if (!out.files.empty()) {
    LogError(db_moved ? "unreadable database moved aside; starting with an empty one"
                      : "unreadable write-ahead log moved aside; the database is kept",
             {{"path", path}, {"reason", out.reason}, {"moved_to", out.files}});
  }
  return out;
}

}  // namespace toolgate::spool
