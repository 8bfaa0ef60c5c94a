#include "daemon/spool/spool.h"

#include <pthread.h>
#include <sched.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/common/log.h"
#include "daemon/spool/recovery.h"

namespace toolgate::spool {
namespace {

// Appends are gathered into chunks of about this size (one request may exceed it).
constexpr size_t kChunkBytes = 256 << 10;
// Expired chunks deleted by one commit at most (up to 64 MiB): a backlog is spread over commits.
constexpr int kAgeEvictionsPerCommit = 256;

int64_t Millis(SystemTime t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

// RAII for a prepared statement.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return s_; }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

absl::Status SqlError(sqlite3* db, const char* what) {
  const int code = sqlite3_errcode(db);
  std::string msg = absl::StrCat("spool: ", what, ": ", sqlite3_errmsg(db));
  if (code == SQLITE_FULL) return absl::ResourceExhaustedError(msg);
  return absl::UnavailableError(msg);
}

std::string Text(sqlite3_stmt* s, int col) {
  const unsigned char* p = sqlite3_column_text(s, col);
  return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(s, col))
           : std::string();
}

// A chunk's body: for each event, its length (4 bytes, little endian) then its bytes.
void EncodeEvent(const std::string& body, std::string* out) {
  const uint32_t n = static_cast<uint32_t>(body.size());
  const char len[4] = {static_cast<char>(n), static_cast<char>(n >> 8), static_cast<char>(n >> 16),
                       static_cast<char>(n >> 24)};
  out->append(len, 4);
  out->append(body);
}

// Calls each(index, bytes) for every event of a chunk, in order, without copying; false when
// the blob is malformed.
template <typename Each>
bool ForEachEvent(const unsigned char* p, size_t size, uint32_t count, Each each) {
  size_t pos = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (pos + 4 > size) return false;
    const uint32_t n =
        p[pos] | (p[pos + 1] << 8) | (p[pos + 2] << 16) | (static_cast<uint32_t>(p[pos + 3]) << 24);
    pos += 4;
    if (pos + n > size) return false;
    each(i, std::string_view(reinterpret_cast<const char*>(p + pos), n));
    pos += n;
  }
  return pos == size;
}

// Splits a chunk into events; false when the blob is malformed.
bool DecodeChunk(uint64_t seq, const unsigned char* p, size_t size, uint32_t count,
                 std::vector<StoredEvent>* out) {
  return ForEachEvent(p, size, count, [&](uint32_t i, std::string_view body) {
    StoredEvent ev;
    ev.seq = seq;
    ev.index = i;
    ev.chunk_events = count;
    ev.body.assign(body);
    out->push_back(std::move(ev));
  });
}

std::string IdList(const std::vector<uint64_t>& ids) {
  std::string out;
  for (uint64_t id : ids) absl::StrAppend(&out, out.empty() ? "" : ",", id);
  return out;
}

}  // namespace

struct Spool::Op {
  enum Kind { kAppend, kAck, kDeadLetter, kRetry, kPurge, kSetAside };
  explicit Op(Kind k) : kind(k) {}
  Kind kind;
  bool lazy = false;
  std::vector<normalize::NormalizedEvent> events;
  uint64_t bytes = 0;
  AppendDone done;
  Build build;  // a deferred append: fills `events` on the writer thread
  std::vector<EventRef> refs;
  std::vector<uint64_t> seqs;
  std::vector<DeadLetterInfo> letters;
  std::vector<DamagedChunk> damaged;
  std::function<void(uint64_t)> count_done;
  uint64_t count = 0;
};

// ---------------------------------------------------------------- Reader

Reader::~Reader() {
  sqlite3_finalize(read_after_);
  sqlite3_close(db_);
}

absl::Status Reader::ReadAfter(uint64_t after, size_t max_events, size_t max_bytes,
                               std::vector<StoredEvent>* out) {
  if (read_after_ == nullptr &&
      sqlite3_prepare_v2(db_,
                         "SELECT seq, count, body FROM chunks WHERE seq > ?1 ORDER BY seq "
                         "LIMIT ?2",
                         -1, &read_after_, nullptr) != SQLITE_OK) {
    return SqlError(db_, "prepare read");
  }
  sqlite3_reset(read_after_);
  sqlite3_bind_int64(read_after_, 1, static_cast<int64_t>(after));
  sqlite3_bind_int64(read_after_, 2, static_cast<int64_t>(max_events));
  size_t bytes = 0, events = 0;
  int rc;
  while ((rc = sqlite3_step(read_after_)) == SQLITE_ROW) {
    const uint64_t seq = static_cast<uint64_t>(sqlite3_column_int64(read_after_, 0));
    const uint32_t count = static_cast<uint32_t>(sqlite3_column_int64(read_after_, 1));
    const auto* blob = static_cast<const unsigned char*>(sqlite3_column_blob(read_after_, 2));
    const size_t size = static_cast<size_t>(sqlite3_column_bytes(read_after_, 2));
    const size_t before = out->size();
    if (!DecodeChunk(seq, blob, size, count, out)) {
      out->resize(before);
      if (damaged_.empty() || damaged_.back().seq != seq) damaged_.push_back({seq, count});
      continue;
    }
    bytes += size;
    events += count;
    if (bytes >= max_bytes || events >= max_events) break;
  }
  sqlite3_reset(read_after_);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db_, "read");
  return absl::OkStatus();
}

absl::Status Reader::ReadSessionPage(const std::string& session_id, uint64_t* after,
                                     std::vector<StoredEvent>* out, bool* end) {
  // Rare (an operator's export): every chunk is read and every event parsed.
  std::vector<StoredEvent> events;
  if (absl::Status s = ReadAfter(*after, kSessionPageEvents, 16 << 20, &events); !s.ok()) {
    return s;
  }
  uint64_t last = events.empty() ? *after : events.back().seq;
  // A page may end on damaged chunks (skipped): the next one starts after them.
  for (const DamagedChunk& d : TakeDamaged()) last = std::max(last, d.seq);
  *end = last == *after;
  *after = last;
  for (StoredEvent& ev : events) {
    auto j = nlohmann::json::parse(ev.body, nullptr, false);
    if (j.is_object() && j.value("sessionId", "") == session_id) out->push_back(std::move(ev));
  }
  return absl::OkStatus();
}

absl::Status Reader::ListDeadLetters(uint64_t after_id, size_t limit,
                                     std::vector<DeadLetterRow>* out) {
  Stmt s(db_,
         "SELECT id, event_id, session_id, http_status, code, message, created_ms, body "
         "FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2");
  if (!s.ok()) return SqlError(db_, "prepare dead letters");
  sqlite3_bind_int64(s.get(), 1, static_cast<int64_t>(after_id));
  sqlite3_bind_int64(s.get(), 2, static_cast<int64_t>(limit));
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    DeadLetterRow r;
    r.id = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0));
    r.event_id = Text(s.get(), 1);
    r.session_id = Text(s.get(), 2);
    r.http_status = sqlite3_column_int(s.get(), 3);
    r.code = Text(s.get(), 4);
    r.message = Text(s.get(), 5);
    r.created_ms = sqlite3_column_int64(s.get(), 6);
    r.body = Text(s.get(), 7);
    out->push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "dead letters");
  return absl::OkStatus();
}

absl::Status Reader::ListSessions(const std::string& agent_id, size_t limit,
                                  std::vector<SessionRow>* out) {
  Stmt s(db_,
         "SELECT session_id, agent_id, last_hash, events, updated_ms FROM chain_heads "
         "WHERE ?1 = '' OR agent_id = ?1 ORDER BY updated_ms DESC LIMIT ?2");
  if (!s.ok()) return SqlError(db_, "prepare sessions");
  sqlite3_bind_text(s.get(), 1, agent_id.data(), static_cast<int>(agent_id.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_int64(s.get(), 2, static_cast<int64_t>(limit));
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    out->push_back({Text(s.get(), 0), Text(s.get(), 1), Text(s.get(), 2),
                    static_cast<uint64_t>(sqlite3_column_int64(s.get(), 3)),
                    sqlite3_column_int64(s.get(), 4)});
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "sessions");
  return absl::OkStatus();
}

// ---------------------------------------------------------------- Spool

absl::StatusOr<std::unique_ptr<Spool>> Spool::Open(SpoolOptions options, Clock* clock) {
  // An unreadable file is moved aside rather than refused: refusing would make the daemon
  // exit, and its supervisor restart it into the same failure.
  auto moved = MoveAsideIfUnreadable(options.path, clock->Now());
  if (!moved.ok()) return moved.status();
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(options.path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("spool: cannot open ", options.path, ": ", msg));
  }
  std::unique_ptr<Spool> spool(new Spool(std::move(options), clock, db));
  spool->corrupt_moved_ = moved->files.empty() ? 0 : 1;
  if (absl::Status s = spool->Init(); !s.ok()) return s;
  spool->writer_ = std::thread([p = spool.get()] { p->WriterLoop(); });
  return spool;
}

Spool::Spool(SpoolOptions options, Clock* clock, sqlite3* db)
    : options_(std::move(options)),
      clock_(clock),
      db_(db),
      dir_(std::filesystem::path(options_.path).parent_path().string()) {}

Spool::~Spool() {
  Close();
  sqlite3_close(db_);
}

absl::Status Spool::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    const int code = sqlite3_errcode(db_);
    std::string full = absl::StrCat("spool: ", msg, " (in: ", std::string(sql).substr(0, 60), ")");
    return code == SQLITE_FULL ? absl::ResourceExhaustedError(full) : absl::UnavailableError(full);
  }
  return absl::OkStatus();
}

absl::Status Spool::Init() {
  sqlite3_busy_timeout(db_, 5000);
  const std::string sync = options_.limits.sync ? "FULL" : "NORMAL";
  for (const std::string& sql : {
           // Only applies to a new file; an existing spool keeps the page size it was made
           // with (spool.h, kPageSize, says why 16 KiB).
           absl::StrCat("PRAGMA page_size=", kPageSize),
           std::string("PRAGMA cache_size=-2048"),
           std::string("PRAGMA journal_mode=WAL"),
           "PRAGMA synchronous=" + sync,
           std::string("PRAGMA foreign_keys=OFF"),
           // Debian builds SQLite with SQLITE_SECURE_DELETE: every page a shipped chunk frees
           // would be read, zeroed and written to the log again, doubling the log's bytes.
           // Nothing in the spool is secret (arguments are only ever stored as hashes, and the
           // envelopes are what the upstream receives); freed pages are reused as they are.
           std::string("PRAGMA secure_delete=OFF"),
           std::string("CREATE TABLE IF NOT EXISTS chunks("
                       " seq INTEGER PRIMARY KEY AUTOINCREMENT, count INTEGER NOT NULL,"
                       " body BLOB NOT NULL, created_ms INTEGER NOT NULL)"),
           std::string("CREATE TABLE IF NOT EXISTS chain_heads("
                       " session_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL,"
                       " last_hash TEXT NOT NULL, events INTEGER NOT NULL,"
                       " updated_ms INTEGER NOT NULL) WITHOUT ROWID"),
           // The ids that RecentIds remembers, 16 bytes each, one row per commit, trimmed to
           // its window: the window survives a restart, shipped events included.
           std::string("CREATE TABLE IF NOT EXISTS recent_ids("
                       " seq INTEGER PRIMARY KEY AUTOINCREMENT, ids BLOB NOT NULL)"),
           std::string("CREATE TABLE IF NOT EXISTS damaged_chunks("
                       " seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, body BLOB NOT NULL,"
                       " created_ms INTEGER NOT NULL, set_aside_ms INTEGER NOT NULL)"),
           std::string("CREATE TABLE IF NOT EXISTS dead_letters("
                       " id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER,"
                       " event_id TEXT NOT NULL, session_id TEXT NOT NULL,"
                       " http_status INTEGER NOT NULL, code TEXT NOT NULL,"
                       " message TEXT NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL)"),
       }) {
    if (absl::Status s = Exec(sql.c_str()); !s.ok()) return s;
  }
  {
    Stmt s(db_, "PRAGMA page_size");
    if (sqlite3_step(s.get()) == SQLITE_ROW) {
      page_size_ = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0));
    }
  }
  {
    // A bounded write-ahead log: checkpointed once it holds kWalBoundBytes instead of SQLite's
    // 1000 pages. Each commit appends whole pages to the log, so a long log is mostly stale
    // copies, and on a full disk it holds space that a checkpoint needs: spool.min_free_disk
    // (64 MiB) must cover the log's bound plus what its checkpoint adds to the file. Measured
    // with 64 KiB pages (bench/run audit --compression none): 16 MiB cost nothing against
    // 64 MiB, 4 MiB cost ~15 % writer CPU. Set once the page size is known: an older spool
    // keeps 64 KiB pages.
    const std::string bound = absl::StrCat("PRAGMA wal_autocheckpoint=",
                                           std::max<uint64_t>(1, kWalBoundBytes / page_size_));
    if (absl::Status s = Exec(bound.c_str()); !s.ok()) return s;
  }
  if (options_.max_pages > 0) {
    const std::string cap = absl::StrCat("PRAGMA max_page_count=", options_.max_pages);
    if (absl::Status s = Exec(cap.c_str()); !s.ok()) return s;
  }
  LoadHeads();
  LoadRecentIds();
  {
    Stmt s(db_, "SELECT coalesce(sum(count), 0), coalesce(sum(length(body)), 0) FROM chunks");
    if (sqlite3_step(s.get()) == SQLITE_ROW) {
      stored_events_ = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0));
      stored_bytes_ = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 1));
    }
  }
  {
    Stmt s(db_, "SELECT count(*) FROM dead_letters");
    if (sqlite3_step(s.get()) == SQLITE_ROW) {
      dead_letters_ = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0));
    }
  }
  if (!options_.standalone) {
    queue_depth_ = stored_events_.load();
    queue_bytes_ = stored_bytes_.load();
  }
  LogInfo("spool opened", {{"path", options_.path},
                           {"events", stored_events_.load()},
                           {"bytes", stored_bytes_.load()},
                           {"sessions", chainer_.sessions()},
                           {"dead_letters", dead_letters_.load()}});
  return absl::OkStatus();
}

void Spool::LoadRecentIds() {
  // Oldest first, so that the newest are the last forgotten.
  Stmt s(db_, "SELECT ids FROM recent_ids ORDER BY seq");
  while (sqlite3_step(s.get()) == SQLITE_ROW) {
    const auto* p = static_cast<const unsigned char*>(sqlite3_column_blob(s.get(), 0));
    const size_t n = static_cast<size_t>(sqlite3_column_bytes(s.get(), 0)) / 16;
    for (size_t i = 0; i < n; ++i) recent_.SeenOrRemember(chain::RecentIds::ReadKey(p + 16 * i));
    persisted_ids_ += n;
  }
}

void Spool::LoadHeads() {
  chainer_ = chain::Chainer();
  Stmt s(db_, "SELECT session_id, last_hash FROM chain_heads");
  while (sqlite3_step(s.get()) == SQLITE_ROW) chainer_.SetHead(Text(s.get(), 0), Text(s.get(), 1));
}

absl::StatusOr<std::unique_ptr<Reader>> Spool::NewReader() {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(options_.path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError("spool: cannot open a reader: " + msg);
  }
  sqlite3_busy_timeout(db, 5000);
  // A reader goes through chunks once each (the shipper, exports), so its own page cache keeps
  // little worth having besides the table's interior pages: 256 KiB instead of SQLite's 2 MiB
  // default (bench/run audit: peak RSS 63.3–64.2 → 60.9–61.7 MiB, same throughput and CPU).
  sqlite3_exec(db, "PRAGMA cache_size=-256", nullptr, nullptr, nullptr);
  return std::unique_ptr<Reader>(new Reader(db));
}

void Spool::SetCommitListener(std::function<void()> listener) {
  commit_listener_ = std::move(listener);
}

void Spool::SetFailureListener(std::function<void()> listener) {
  failure_listener_ = std::move(listener);
}

void Spool::SetTap(std::function<void(std::vector<CommittedEvent>)> tap) { tap_ = std::move(tap); }

void Spool::Enqueue(Op op, bool lazy) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!closing_) {
      op.lazy = lazy;
      // The writer wakes for urgent work, and for the first lazy op (to start its timer).
      bool wake = !lazy;
      if (lazy) {
        if (ops_.size() == urgent_ops_) {
          first_lazy_ = std::chrono::steady_clock::now();
          wake = true;
        }
      } else {
        ++urgent_ops_;
      }
      ops_.push_back(std::move(op));
      if (wake) cv_.notify_one();
      return;
    }
  }
  // Closed: nothing more is written.
  if (op.kind == Op::kAppend) pending_bytes_.fetch_sub(op.bytes);
  if (op.done) op.done(absl::UnavailableError("spool: shutting down"));
  if (op.count_done) op.count_done(0);
}

bool Spool::Admit(uint64_t bytes, size_t events, const AppendDone& done) {
  if (failed_.load()) {
    std::lock_guard<std::mutex> l(mu_);
    done(absl::UnavailableError("spool failed earlier and refuses writes: " + failure_copy_));
    return false;
  }
  if (!options_.standalone) {
    const uint64_t after = queue_bytes_.load() + pending_bytes_.fetch_add(bytes) + bytes;
    if (after > options_.limits.max_bytes) {
      pending_bytes_.fetch_sub(bytes);
      rejected_full_.fetch_add(events);
      done(absl::ResourceExhaustedError(
          absl::StrCat("spool full (", queue_bytes_.load(), " of ", options_.limits.max_bytes,
                       " bytes waiting for the upstream); retry after ",
                       options_.limits.retry_after.count(), " ms")));
      return false;
    }
  } else {
    pending_bytes_.fetch_add(bytes);
  }
  return true;
}

void Spool::Append(std::vector<normalize::NormalizedEvent> events, AppendDone done, bool lazy) {
  uint64_t bytes = 0;
  for (const auto& e : events) bytes += e.size();
  if (!Admit(bytes, events.size(), done)) return;
  Op op(Op::kAppend);
  op.events = std::move(events);
  op.bytes = bytes;
  op.done = std::move(done);
  Enqueue(std::move(op), lazy);
}

void Spool::AppendDeferred(Build build, uint64_t estimated_bytes, AppendDone done) {
  if (!Admit(estimated_bytes, 1, done)) return;
  Op op(Op::kAppend);
  op.bytes = estimated_bytes;
  op.build = std::move(build);
  op.done = std::move(done);
  Enqueue(std::move(op), /*lazy=*/true);
}

void Spool::BuildDeferred(std::vector<Op>* batch) {
  for (auto it = batch->begin(); it != batch->end();) {
    if (!it->build) {
      ++it;
      continue;
    }
    MaybeYield();
    const absl::Status s = it->build(&it->events);
    it->build = nullptr;
    uint64_t bytes = 0;
    for (const auto& e : it->events) bytes += e.size();
    // The estimate counted until now; the events' real size from here on.
    pending_bytes_.fetch_add(bytes);
    pending_bytes_.fetch_sub(it->bytes);
    it->bytes = bytes;
    if (s.ok()) {
      ++it;
      continue;
    }
    pending_bytes_.fetch_sub(bytes);
    it->done(s);
    it = batch->erase(it);
  }
}

void Spool::MaybeYield() {
  if (!background_batch_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_yield_ < kYieldEvery) return;
  sched_yield();
  writer_yields_.fetch_add(1, std::memory_order_relaxed);
  last_yield_ = std::chrono::steady_clock::now();
}

void Spool::Ack(std::vector<EventRef> refs) {
  Op op(Op::kAck);
  op.refs = std::move(refs);
  Enqueue(std::move(op));
}

void Spool::DeadLetter(std::vector<DeadLetterInfo> letters) {
  Op op(Op::kDeadLetter);
  op.letters = std::move(letters);
  Enqueue(std::move(op));
}

void Spool::SetAside(std::vector<DamagedChunk> chunks) {
  if (chunks.empty()) return;
  Op op(Op::kSetAside);
  op.damaged = std::move(chunks);
  Enqueue(std::move(op));
}

void Spool::RetryDeadLetters(std::vector<uint64_t> ids, std::function<void(uint64_t)> done) {
  Op op(Op::kRetry);
  op.seqs = std::move(ids);
  op.count_done = std::move(done);
  Enqueue(std::move(op));
}

void Spool::PurgeDeadLetters(std::vector<uint64_t> ids, std::function<void(uint64_t)> done) {
  Op op(Op::kPurge);
  op.seqs = std::move(ids);
  op.count_done = std::move(done);
  Enqueue(std::move(op));
}

Stats Spool::stats() const {
  Stats s;
  s.stored_events = stored_events_.load();
  s.stored_bytes = stored_bytes_.load();
  s.queue_depth = queue_depth_.load();
  s.queue_bytes = queue_bytes_.load();
  s.dead_letters = dead_letters_.load();
  s.commits = commits_.load();
  s.appended = appended_.load();
  s.evicted = evicted_.load();
  s.rejected_full = rejected_full_.load();
  s.deduplicated = deduplicated_.load();
  s.writer_yields = writer_yields_.load();
  s.damaged_events = damaged_events_.load();
  s.corrupt_moved = corrupt_moved_;
  s.disk_full = disk_full_.load();
  s.failed = failed_.load();
  return s;
}

void Spool::Close() {
  {
    std::lock_guard<std::mutex> l(mu_);
    closing_ = true;
    cv_.notify_all();
  }
  if (writer_.joinable()) writer_.join();
}

absl::Status Spool::Evict() {
  if (!options_.standalone) return absl::OkStatus();
  const int64_t now = Millis(clock_->Now());
  const uint64_t max_bytes = options_.limits.retention_max_bytes;
  // Runs one `DELETE FROM chunks ... RETURNING length(body), count` and forgets what it
  // deleted; *deleted gets the number of chunks. False on an SQLite error.
  auto delete_chunks = [this](sqlite3_stmt* st, int* deleted) {
    sqlite3_reset(st);
    *deleted = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      stored_bytes_ -= static_cast<uint64_t>(sqlite3_column_int64(st, 0));
      stored_events_ -= static_cast<uint64_t>(sqlite3_column_int64(st, 1));
      evicted_ += static_cast<uint64_t>(sqlite3_column_int64(st, 1));
      ++*deleted;
    }
    return rc == SQLITE_DONE;
  };
  // Age: checked at most once a second, from the oldest chunk on. Chunks are stored in time
  // order, so the expired ones are the oldest: each step reads one row. (A `created_ms <` scan
  // read every chunk of the retention, overflow pages and all, since the column follows the
  // body: up to retention_max_bytes of page reads each second.) A clock stepped back can only
  // make an expired chunk wait behind an older one that is not, never go early.
  // spool.retention_max_age 0: no age limit.
  if (options_.limits.retention_max_age.count() > 0 && now - last_age_eviction_ms_ >= 1000) {
    const int64_t cutoff = now - options_.limits.retention_max_age.count();
    Stmt s(db_,
           "DELETE FROM chunks WHERE seq = (SELECT min(seq) FROM chunks) AND created_ms < ?1 "
           "RETURNING length(body), count");
    sqlite3_bind_int64(s.get(), 1, cutoff);
    int n = 0;
    for (int deleted = 1; deleted > 0 && n < kAgeEvictionsPerCommit; n += deleted) {
      if (!delete_chunks(s.get(), &deleted)) return SqlError(db_, "evict by age");
    }
    // A long backlog (a daemon started after days off) goes on with the next commit, made at
    // once by an idle writer (IdleEvictionDue).
    age_backlog_ = n >= kAgeEvictionsPerCommit;
    if (!age_backlog_) last_age_eviction_ms_ = now;
  }
  if (stored_bytes_.load() <= max_bytes) return absl::OkStatus();
  // Size: drop the oldest events, in chunks, until under the limit.
  Stmt s(db_,
         "DELETE FROM chunks WHERE seq IN (SELECT seq FROM chunks ORDER BY seq LIMIT 64) "
         "RETURNING length(body), count");
  int deleted = 1;
  while (stored_bytes_.load() > max_bytes && deleted > 0) {
    if (!delete_chunks(s.get(), &deleted)) return SqlError(db_, "evict by size");
  }
  return absl::OkStatus();
}

std::optional<std::chrono::steady_clock::time_point> Spool::IdleEvictionDue() const {
  const auto max_age = options_.limits.retention_max_age;
  if (!options_.standalone || max_age.count() <= 0 || stored_events_.load() == 0 ||
      failed_.load()) {
    return std::nullopt;
  }
  if (age_backlog_) return std::chrono::steady_clock::now();
  // Not when the oldest expires: reading its created_ms means walking its chunk's overflow
  // pages (the column follows the body), and Evict's one-row DELETE does that anyway.
  return std::chrono::steady_clock::now() +
         std::clamp<std::chrono::milliseconds>(max_age, std::chrono::seconds(1), kIdleAgeCheck);
}

absl::Status Spool::Done(const EventRef& ref) {
  // Queue depth counts events; bytes leave with their chunk.
  --stored_events_;
  if (!options_.standalone) --queue_depth_;
  uint32_t& done = done_[ref.seq];
  if (++done < ref.chunk_events) return absl::OkStatus();
  done_.erase(ref.seq);
  Stmt del(db_, "DELETE FROM chunks WHERE seq = ?1 RETURNING length(body)");
  sqlite3_bind_int64(del.get(), 1, static_cast<int64_t>(ref.seq));
  const int rc = sqlite3_step(del.get());
  if (rc == SQLITE_ROW) {
    const uint64_t len = static_cast<uint64_t>(sqlite3_column_int64(del.get(), 0));
    stored_bytes_ -= len;
    if (!options_.standalone) queue_bytes_ -= len;
    sqlite3_step(del.get());
  } else if (rc != SQLITE_DONE) {
    return SqlError(db_, "delete chunk");
  }
  return absl::OkStatus();
}

absl::Status Spool::SetAsideOne(const DamagedChunk& d, int64_t now) {
  Stmt keep(db_,
            "INSERT OR IGNORE INTO damaged_chunks(seq, count, body, created_ms, set_aside_ms) "
            "SELECT seq, count, body, created_ms, ?2 FROM chunks WHERE seq = ?1");
  sqlite3_bind_int64(keep.get(), 1, static_cast<int64_t>(d.seq));
  sqlite3_bind_int64(keep.get(), 2, now);
  if (sqlite3_step(keep.get()) != SQLITE_DONE) return SqlError(db_, "set aside");
  Stmt del(db_, "DELETE FROM chunks WHERE seq = ?1 RETURNING length(body), count");
  sqlite3_bind_int64(del.get(), 1, static_cast<int64_t>(d.seq));
  const int rc = sqlite3_step(del.get());
  if (rc == SQLITE_ROW) {  // else set aside already (the reader saw it twice)
    const uint64_t len = static_cast<uint64_t>(sqlite3_column_int64(del.get(), 0));
    uint64_t events = static_cast<uint64_t>(sqlite3_column_int64(del.get(), 1));
    if (auto it = done_.find(d.seq); it != done_.end()) {
      events -= std::min<uint64_t>(events, it->second);
      done_.erase(it);
    }
    sqlite3_step(del.get());
    stored_bytes_ -= len;
    stored_events_ -= events;
    if (!options_.standalone) {
      queue_bytes_ -= len;
      queue_depth_ -= events;
    }
    damaged_events_ += events;
  } else if (rc != SQLITE_DONE) {
    return SqlError(db_, "set aside");
  }
  return absl::OkStatus();
}

absl::Status Spool::PersistRecentIds(const std::string& keys) {
  if (keys.empty()) return absl::OkStatus();
  Stmt ins(db_, "INSERT INTO recent_ids(ids) VALUES (?1)");
  sqlite3_bind_blob(ins.get(), 1, keys.data(), static_cast<int>(keys.size()), SQLITE_STATIC);
  if (sqlite3_step(ins.get()) != SQLITE_DONE) return SqlError(db_, "recent ids");
  persisted_ids_ += keys.size() / 16;
  // Only the window is worth keeping: older ids are forgotten in memory too.
  while (persisted_ids_ > recent_.capacity()) {
    Stmt old(db_,
             "DELETE FROM recent_ids WHERE seq = (SELECT min(seq) FROM recent_ids) "
             "RETURNING length(ids)");
    const int rc = sqlite3_step(old.get());
    if (rc != SQLITE_ROW) {
      if (rc != SQLITE_DONE) return SqlError(db_, "trim recent ids");
      persisted_ids_ = 0;
      break;
    }
    persisted_ids_ -= static_cast<uint64_t>(sqlite3_column_int64(old.get(), 0)) / 16;
    sqlite3_step(old.get());
  }
  return absl::OkStatus();
}

absl::Status Spool::ApplyBatch(std::vector<Op>& ops) {
  Stmt insert(db_, "INSERT INTO chunks(count, body, created_ms) VALUES (?1, ?2, ?3)");
  Stmt head(db_,
            "INSERT INTO chain_heads(session_id, agent_id, last_hash, events, updated_ms) "
            "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(session_id) DO UPDATE SET "
            "last_hash = excluded.last_hash, events = events + excluded.events, "
            "updated_ms = excluded.updated_ms");
  Stmt dead(db_,
            "INSERT INTO dead_letters(seq, event_id, session_id, http_status, code, message,"
            " created_ms, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
  if (!insert.ok() || !head.ok() || !dead.ok()) return SqlError(db_, "prepare");
  const int64_t now = Millis(clock_->Now());

  struct HeadUpdate {
    std::string agent_id;
    std::string hash;
    int64_t events = 0;
  };
  std::unordered_map<std::string, HeadUpdate> heads;
  auto step_done = [&](sqlite3_stmt* st, const char* what) -> absl::Status {
    const int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return SqlError(db_, what);
    return absl::OkStatus();
  };
  auto bind_text = [](sqlite3_stmt* st, int i, const std::string& v) {
    sqlite3_bind_text(st, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  };
  auto insert_chunk = [&](uint32_t count, const std::string& blob) -> absl::Status {
    sqlite3_bind_int64(insert.get(), 1, count);
    sqlite3_bind_blob(insert.get(), 2, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
    sqlite3_bind_int64(insert.get(), 3, now);
    if (absl::Status s = step_done(insert.get(), "insert"); !s.ok()) return s;
    stored_bytes_ += blob.size();
    stored_events_ += count;
    if (!options_.standalone) {
      queue_bytes_ += blob.size();
      queue_depth_ += count;
    }
    return absl::OkStatus();
  };

  // Live tails: copies of the new events, tagged with their chunk's seq once it is inserted.
  const bool tap = tapping_.load(std::memory_order_acquire);
  tapped_.clear();
  size_t untagged = 0;
  auto tag_tapped = [&] {
    const uint64_t seq = static_cast<uint64_t>(sqlite3_last_insert_rowid(db_));
    for (; untagged < tapped_.size(); ++untagged) tapped_[untagged].seq = seq;
  };

  std::string blob, chunk;
  std::string recent_keys;  // ids remembered by this commit, to persist with it
  uint32_t chunk_events = 0;
  for (Op& op : ops) {
    MaybeYield();
    switch (op.kind) {
      case Op::kAppend: {
        // The appends of one group commit share chunks of up to kChunkBytes: few rows however
        // small the requests (single-event Records, recorded Checks), and chunks small enough
        // that reading one back for shipping stays cheap in memory.
        if (chunk_events > 0 && chunk.size() + op.bytes > kChunkBytes) {
          if (absl::Status s = insert_chunk(chunk_events, chunk); !s.ok()) return s;
          tag_tapped();
          chunk.clear();
          chunk_events = 0;
        }
        HeadUpdate* h = nullptr;
        const std::string* session = nullptr;
        uint32_t linked = 0;
        for (const auto& ev : op.events) {
          // A resend of an event stored recently (its acknowledgement was lost) is durable
          // already: acknowledged again, not stored twice with a different previousHash.
          if (ev.id_from_client) {
            chain::RecentIds::Key key;
            if (recent_.SeenOrRemember(ev.event_id, &key)) {
              ++deduplicated_;
              continue;
            }
            if (key.first != 0 || key.second != 0) chain::RecentIds::AppendKey(key, &recent_keys);
          }
          ++linked;
          // Length prefix, then the linked envelope written in place.
          const size_t at = chunk.size();
          chunk.append(4, '\0');
          chainer_.LinkAppend(ev, &chunk);
          const uint32_t n = static_cast<uint32_t>(chunk.size() - at - 4);
          for (int b = 0; b < 4; ++b) chunk[at + b] = static_cast<char>(n >> (8 * b));
          if (tap) tapped_.push_back({0, ev.agent_id, ev.session_id, chunk.substr(at + 4, n)});
          if (session == nullptr || *session != ev.session_id) {  // runs of one session are common
            h = &heads[ev.session_id];
            session = &ev.session_id;
            h->agent_id = ev.agent_id;
          }
          ++h->events;
        }
        chunk_events += linked;
        break;
      }
      case Op::kAck:
        for (const EventRef& ref : op.refs) {
          if (absl::Status s = Done(ref); !s.ok()) return s;
        }
        break;
      case Op::kDeadLetter:
        for (const DeadLetterInfo& d : op.letters) {
          // The ids are read back from the envelope: dead letters are rare.
          auto j = nlohmann::json::parse(d.body, nullptr, false);
          const std::string event_id = j.is_object() ? j.value("eventId", "") : "";
          const std::string session_id = j.is_object() ? j.value("sessionId", "") : "";
          sqlite3_bind_int64(dead.get(), 1, static_cast<int64_t>(d.ref.seq));
          bind_text(dead.get(), 2, event_id);
          bind_text(dead.get(), 3, session_id);
          sqlite3_bind_int(dead.get(), 4, d.http_status);
          bind_text(dead.get(), 5, d.code);
          bind_text(dead.get(), 6, d.message);
          sqlite3_bind_int64(dead.get(), 7, now);
          bind_text(dead.get(), 8, d.body);
          if (absl::Status s = step_done(dead.get(), "dead letter"); !s.ok()) return s;
          ++dead_letters_;
          if (absl::Status s = Done(d.ref); !s.ok()) return s;
        }
        break;
      case Op::kSetAside:
        for (const DamagedChunk& d : op.damaged) {
          if (absl::Status st = SetAsideOne(d, now); !st.ok()) return st;
        }
        break;
      case Op::kRetry:
      case Op::kPurge: {
        const std::string where = op.seqs.empty() ? "" : " WHERE id IN (" + IdList(op.seqs) + ")";
        const std::string q = "SELECT body FROM dead_letters" + where + " ORDER BY id";
        Stmt sel(db_, q.c_str());
        uint64_t n = 0;
        while (sqlite3_step(sel.get()) == SQLITE_ROW) {
          ++n;
          if (op.kind == Op::kRetry) {
            // Requeued as they were sent: same bytes, same eventId, one chunk each.
            blob.clear();
            EncodeEvent(Text(sel.get(), 0), &blob);
            if (absl::Status s = insert_chunk(1, blob); !s.ok()) return s;
          }
        }
        const std::string sql = "DELETE FROM dead_letters" + where;
        if (absl::Status s = Exec(sql.c_str()); !s.ok()) return s;
        dead_letters_ -= n;
        op.count = n;
        break;
      }
    }
  }
  if (chunk_events > 0) {
    if (absl::Status s = insert_chunk(chunk_events, chunk); !s.ok()) return s;
    tag_tapped();
  }
  if (absl::Status s = PersistRecentIds(recent_keys); !s.ok()) return s;
  for (auto& [session, h] : heads) {
    MaybeYield();
    h.hash = *chainer_.Head(session);
    bind_text(head.get(), 1, session);
    bind_text(head.get(), 2, h.agent_id);
    bind_text(head.get(), 3, h.hash);
    sqlite3_bind_int64(head.get(), 4, h.events);
    sqlite3_bind_int64(head.get(), 5, now);
    if (absl::Status s = step_done(head.get(), "chain head"); !s.ok()) return s;
  }
  return Evict();
}

void Spool::WriterLoop() {
  pthread_setname_np(pthread_self(), "tg-spool");
  std::vector<Op> batch;
  for (;;) {
    batch.clear();
    auto evict_at = IdleEvictionDue();
    {
      std::unique_lock<std::mutex> l(mu_);
      // Commit at once for urgent work; lazy work waits up to kLazyCommitDelay for company.
      for (;;) {
        if (closing_ || urgent_ops_ > 0) break;
        if (ops_.empty()) {
          if (!evict_at) {
            cv_.wait(l);
            continue;
          }
          // Idle with events stored: an empty commit now and then evicts those that expired
          // (Evict), as a commit of new events would.
          if (cv_.wait_until(l, *evict_at) == std::cv_status::timeout && ops_.empty()) break;
          continue;
        }
        const auto due = first_lazy_ + kLazyCommitDelay;
        if (std::chrono::steady_clock::now() >= due) break;
        cv_.wait_until(l, due);
      }
      if (ops_.empty() && closing_) break;
      size_t events = 0;
      background_batch_ = true;
      while (!ops_.empty() && (batch.empty() || events < options_.limits.commit_max_events)) {
        const Op& next = ops_.front();
        events += (next.build ? 1 : next.events.size()) + next.refs.size();
        batch.push_back(std::move(ops_.front()));
        ops_.pop_front();
        if (!batch.back().lazy) {
          --urgent_ops_;
          background_batch_ = false;  // somebody waits for this commit
        }
      }
    }
    last_yield_ = std::chrono::steady_clock::now();
    BuildDeferred(&batch);
    uint64_t batch_bytes = 0;
    for (const Op& op : batch) batch_bytes += op.bytes;

    auto is_append = [](const Op& op) { return op.kind == Op::kAppend; };
    const bool has_appends = std::any_of(batch.begin(), batch.end(), is_append);
    // Moves the ops that are not appends (acks, dead letters, admin ops) to `others`.
    auto split_others = [&](std::vector<Op>* others) {
      auto split = std::stable_partition(batch.begin(), batch.end(), is_append);
      others->assign(std::make_move_iterator(split), std::make_move_iterator(batch.end()));
      batch.erase(split, batch.end());
    };
    auto entering_full = [&](const std::string& why) {
      if (!disk_full_.exchange(true)) {
        LogWarn("spool: disk full, appends refused until space returns", {{"error", why}});
      }
    };

    absl::Status status;
    std::vector<Op> others;  // acks and admin ops committed apart while the disk is full
    absl::Status others_status;
    uint64_t available = 0;
    if (failed_.load()) {
      status = absl::UnavailableError("spool failed earlier and refuses writes: " + failure_);
    } else if (has_appends && !DiskHasRoom(&available)) {
      // Low on disk: appends wait (their clients retry on the hint), so that the space left
      // serves what frees space: the deletes of shipped chunks, checkpoints, and (standalone)
      // evictions, which run with the commit of the other ops even when there are none: under
      // a steady stream of refused appends the writer is never idle to evict by age.
      const std::string why = absl::StrCat(available, " bytes free, spool.min_free_disk is ",
                                           options_.limits.min_free_disk);
      entering_full(why);
      status = absl::ResourceExhaustedError(absl::StrCat(
          "disk full (", why, "); retry after ", options_.limits.retry_after.count(), " ms"));
      split_others(&others);
      if (!others.empty() || options_.standalone) others_status = Commit(others);
    } else {
      const bool idle_eviction = batch.empty();  // nothing refused if it fails
      status = Commit(batch);
      if (idle_eviction && !status.ok()) age_backlog_ = false;  // rolled back: no hurry
      if (absl::IsResourceExhausted(status) && !idle_eviction) {
        // SQLITE_FULL refuses the appends, not the acks and dead letters: nobody would send
        // those again, and deleting shipped chunks is what frees pages. They are retried alone,
        // after a checkpoint that lets the write-ahead log be reused from its start, and later
        // again while the disk stays full.
        split_others(&others);
        if (!others.empty()) {
          sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
          others_status = has_appends ? Commit(others) : status;
        }
        entering_full(std::string(status.message()));
        status = absl::ResourceExhaustedError(
            absl::StrCat("disk full (", status.message(), "); retry after ",
                         options_.limits.retry_after.count(), " ms"));
      } else if (status.ok() && has_appends && disk_full_.exchange(false)) {
        LogInfo("spool: disk space is back, appends accepted again");
      }
    }
    pending_bytes_ -= batch_bytes;
    if (absl::IsResourceExhausted(others_status)) {
      // Still full: back to the queue, retried with the next commit or within kFullRetryDelay.
      std::lock_guard<std::mutex> l(mu_);
      if (!closing_) {
        if (ops_.size() == urgent_ops_) {
          first_lazy_ = std::chrono::steady_clock::now() + kFullRetryDelay - kLazyCommitDelay;
        }
        for (auto it = others.rbegin(); it != others.rend(); ++it) {
          it->lazy = true;
          ops_.push_front(std::move(*it));
        }
        others.clear();
      }
    }
    Finish(batch, status);
    Finish(others, others_status);
    if ((status.ok() && !batch.empty()) || (others_status.ok() && !others.empty())) {
      if (commit_listener_) commit_listener_();
    }
    if (!tapped_.empty()) {  // only while tapping: the new events, now durable
      if (status.ok() && tap_) tap_(std::move(tapped_));
      tapped_.clear();
    }
  }
}

bool Spool::DiskHasRoom(uint64_t* available) {
  const uint64_t min_free = options_.limits.min_free_disk;
  if (min_free == 0) return true;
  struct statvfs fs {};
  if (::statvfs(dir_.c_str(), &fs) != 0) return true;  // unknown: SQLITE_FULL will tell
  *available = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (*available >= min_free) return true;
  // Free pages inside the file are used before the file grows: shipped chunks make room.
  Stmt free_pages(db_, "PRAGMA freelist_count");
  if (sqlite3_step(free_pages.get()) == SQLITE_ROW) {
    *available += static_cast<uint64_t>(sqlite3_column_int64(free_pages.get(), 0)) * page_size_;
  }
  return *available >= min_free;
}

absl::Status Spool::Commit(std::vector<Op>& ops) {
  // Counters change as rows are written; keep copies to undo a rollback. (Chain heads are
  // reloaded from the store instead: rollbacks are rare, commits are not.)
  const uint64_t saved[] = {stored_events_, stored_bytes_,  queue_depth_,
                            queue_bytes_,   dead_letters_,  evicted_,
                            deduplicated_,  persisted_ids_, damaged_events_};
  const auto saved_done = done_;
  recent_.Begin();
  absl::Status status = Exec("BEGIN IMMEDIATE");
  if (status.ok()) status = ApplyBatch(ops);
  if (status.ok()) {
    status = Exec("COMMIT");
    if (!status.ok() && !absl::IsResourceExhausted(status)) {
      // The commit (and its fsync) failed: what is on disk is unknown. Stop writing.
      failure_ = std::string(status.message());
      {
        std::lock_guard<std::mutex> l(mu_);
        failure_copy_ = failure_;
      }
      failed_ = true;
      LogError("spool commit failed; refusing further writes", {{"error", failure_}});
      if (failure_listener_) failure_listener_();
    }
  }
  if (!status.ok()) {
    Exec("ROLLBACK").IgnoreError();
    stored_events_ = saved[0];
    stored_bytes_ = saved[1];
    queue_depth_ = saved[2];
    queue_bytes_ = saved[3];
    dead_letters_ = saved[4];
    evicted_ = saved[5];
    deduplicated_ = saved[6];
    persisted_ids_ = saved[7];
    damaged_events_ = saved[8];
    LoadHeads();
    recent_.Rollback();
    done_ = saved_done;
    tapped_.clear();
  } else {
    recent_.Commit();
    ++commits_;
  }
  return status;
}

void Spool::Finish(std::vector<Op>& ops, const absl::Status& status) {
  for (Op& op : ops) {
    if (op.kind == Op::kAppend) {
      if (status.ok()) {
        appended_ += op.events.size();
      } else if (absl::IsResourceExhausted(status)) {
        rejected_full_ += op.events.size();
      }
      op.done(status);
    } else if (op.count_done) {
      op.count_done(status.ok() ? op.count : 0);
    }
  }
}

}  // namespace toolgate::spool
