// Spool: the durable queue between ingest and the shipper, and the local audit store.
//
// Appends are acknowledged only after their transaction is committed (and fsynced, with
// spool.sync): many appends share one transaction (group commit, one writer thread, as
// LevelDB's writer queue). The events of one group commit are stored as one row, a *chunk*
// (as Fluent Bit's chunks), so SQLite's per-row cost is paid once per commit, not once per
// event or request: see docs/architecture.md. A chunk leaves the queue when all its events are
// acked or dead-lettered; a chunk partly delivered before a crash is sent again whole (same
// eventIds). The chain stage runs on that writer thread too, so that each session's order is the
// commit order and its head is stored in the same transaction. That thread also recognises a
// resend (same eventId as one of the last 65,536 stored, chain/recent_ids.h): a client that lost
// an acknowledgement sends again, and the copy is acknowledged without being stored twice. The
// window survives a restart: the ids are stored with the commit that remembers them (table
// recent_ids). Only ids the agent chose are looked up: an id the daemon drew cannot be resent.
//
// Bounded by bytes: in upstream mode an append that would take unshipped bytes past
// spool.max_bytes fails with RESOURCE_EXHAUSTED (the client retries; nothing is dropped).
// In standalone mode nothing ships and the oldest events are evicted by retention instead.
//
// At open, a file SQLite cannot read (garbage, truncated) is moved aside and the spool starts
// empty instead of failing (recovery.h): a daemon that refuses to start would crash-loop.
//
// After a failed commit the store's state is unknown, so the error is sticky (as LevelDB's
// background error): every later append fails with UNAVAILABLE. SQLITE_FULL is the exception:
// the transaction is rolled back cleanly and the appends get RESOURCE_EXHAUSTED, while the acks
// and dead letters of that commit are kept and retried until they commit (they free space).
// Appends are refused the same way, before the disk is completely full, while free space (plus
// free pages in the file) is below spool.min_free_disk: what is left is kept for those deletes
// and for checkpoints, which need room to free any.
//
// Thread-safe. Callbacks run on the writer thread and must not block.
#ifndef TOOLGATE_DAEMON_SPOOL_SPOOL_H_
#define TOOLGATE_DAEMON_SPOOL_SPOOL_H_

#include <sqlite3.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/chain/chainer.h"
#include "daemon/chain/recent_ids.h"
#include "daemon/common/clock.h"
#include "daemon/config/config.h"
#include "daemon/normalize/normalizer.h"

namespace toolgate::spool {

struct SpoolOptions {
  std::string path;        // the SQLite file
  bool standalone = true;  // no upstream: keep events, evict by retention
  config::SpoolOptions limits;
  // Test seam: caps the database at this many pages (SQLite's max_page_count), so that a
  // test sees SQLITE_FULL as on a full disk. 0 = no cap (the default, and the daemon's).
  uint64_t max_pages = 0;
};

// Where an event sits: its chunk and how many events that chunk holds.
struct EventRef {
  uint64_t seq = 0;
  uint32_t chunk_events = 0;
};

struct StoredEvent {
  uint64_t seq = 0;           // the chunk holding the event (increasing, never reused)
  uint32_t index = 0;         // position in the chunk
  uint32_t chunk_events = 0;  // events in the chunk
  std::string body;           // canonical JSON envelope, exactly as shipped
  EventRef ref() const { return {seq, chunk_events}; }
};

// An event as its commit made it durable, for live tails (Admin.Tail).
struct CommittedEvent {
  uint64_t seq = 0;  // its chunk, as StoredEvent::seq
  std::string agent_id, session_id;
  std::string body;  // canonical JSON envelope with previousHash, exactly as shipped
};

struct DeadLetterInfo {
  EventRef ref;
  std::string body;
  int http_status = 0;
  std::string code;
  std::string message;
};

struct DeadLetterRow {
  uint64_t id = 0;
  std::string event_id, session_id, code, message, body;
  int http_status = 0;
  int64_t created_ms = 0;
};

struct SessionRow {
  std::string session_id, agent_id, last_hash;
  uint64_t events = 0;
  int64_t updated_ms = 0;
};

struct Stats {
  uint64_t stored_events = 0;
  uint64_t stored_bytes = 0;
  uint64_t queue_depth = 0;  // events waiting to be shipped
  uint64_t queue_bytes = 0;
  uint64_t dead_letters = 0;
  uint64_t commits = 0;
  uint64_t appended = 0;
  uint64_t evicted = 0;
  uint64_t rejected_full = 0;
  uint64_t deduplicated = 0;    // resent events recognised by eventId and not stored again
  uint64_t writer_yields = 0;   // times the writer gave the CPU back during a lazy-only batch
  uint64_t damaged_events = 0;  // events of damaged chunks set aside (unreadable, not shipped)
  uint64_t corrupt_moved = 0;   // 1 when an unreadable file was moved aside at open (recovery.h)
  bool disk_full = false;       // the last commit with appends failed for a full disk
  bool failed = false;
};

// A stored chunk that cannot be split into its events (damaged on disk).
struct DamagedChunk {
  uint64_t seq = 0;
  uint32_t events = 0;  // as its row says
};

// A read-only connection, for one thread at a time (the shipper's, or one admin call's).
class Reader {
 public:
  ~Reader();
  // Events with seq > after, in order, at most max_events / about max_bytes. A damaged chunk
  // is skipped (none of its events can be read) and listed for TakeDamaged: one bad row must
  // not stop everything behind it.
  absl::Status ReadAfter(uint64_t after, size_t max_events, size_t max_bytes,
                         std::vector<StoredEvent>* out);
  // The damaged chunks ReadAfter skipped since the last call (for Spool::SetAside).
  std::vector<DamagedChunk> TakeDamaged() { return std::move(damaged_); }
  // One page of a session's events: those among the next kSessionPageEvents stored after
  // *after, in order. Advances *after past the page; *end once nothing is left to read.
  absl::Status ReadSessionPage(const std::string& session_id, uint64_t* after,
                               std::vector<StoredEvent>* out, bool* end);
  static constexpr size_t kSessionPageEvents = 4096;
  absl::Status ListDeadLetters(uint64_t after_id, size_t limit, std::vector<DeadLetterRow>* out);
  absl::Status ListSessions(const std::string& agent_id, size_t limit,
                            std::vector<SessionRow>* out);

 private:
  friend class Spool;
  explicit Reader(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  sqlite3_stmt* read_after_ = nullptr;
  std::vector<DamagedChunk> damaged_;
};

class Spool {
 public:
  using AppendDone = std::function<void(const absl::Status&)>;

  static absl::StatusOr<std::unique_ptr<Spool>> Open(SpoolOptions options, Clock* clock);
  ~Spool();

  // The page size of a new spool file. Every commit appends each page it touched to the
  // write-ahead log, whole and checksummed: a commit of check records touches a handful of
  // pages (the chunk, its table's interior page, chain heads, the header) whatever their size,
  // and an audit chunk of up to 256 KiB spans a few pages either way. 16 KiB pages write a third
  // fewer bytes per event than 64 KiB and cost the writer less per check, at the same CPU per
  // audit event (docs/performance.md, "Spool pages"); 4 KiB cost 20 % more writer time per
  // event than 64 KiB (chunks in long overflow chains). Existing files keep their page size.
  static constexpr uint64_t kPageSize = 16 * 1024;
  // The write-ahead log is checkpointed once it holds this much (in whole pages).
  static constexpr uint64_t kWalBoundBytes = 16 * 1024 * 1024;

  // Queues events for the next group commit; `done` runs once they are durable (OK) or
  // could not be stored (RESOURCE_EXHAUSTED: full; UNAVAILABLE: the store failed). Either
  // all events of one call are stored, or none.
  //
  // A `lazy` append (records nobody waits on, such as a Check's audit event) does not start a
  // commit by itself: it joins the next commit, or one started within kLazyCommitDelay. This
  // keeps a stream of tiny records from costing one commit (and fsync) each.
  void Append(std::vector<normalize::NormalizedEvent> events, AppendDone done, bool lazy = false);
  static constexpr std::chrono::milliseconds kLazyCommitDelay{20};
  // While the writer builds and chains a batch of lazy appends only (nobody waits for that
  // commit), it gives the CPU back (sched_yield) after each kYieldEvery of work: a burst of
  // ~100 check records is a millisecond of CPU, which would otherwise hold one of the host's
  // cores while the request threads that answer checks wait for it. Measured in
  // docs/performance.md ("The writer's burst").
  static constexpr std::chrono::microseconds kYieldEvery{50};

  // A lazy append whose events are built later, on the writer thread, just before they are
  // chained: the caller's place in the queue (and so in its sessions' chains) is taken now,
  // and the work of building the events is not done on the caller's thread. Until they are
  // built, `estimated_bytes` counts against the spool's limit. An error from `build` goes to
  // `done` and nothing of that append is stored. `build` must not block.
  using Build = std::function<absl::Status(std::vector<normalize::NormalizedEvent>*)>;
  void AppendDeferred(Build build, uint64_t estimated_bytes, AppendDone done);
  // While the disk is full, acks and dead letters that could not be committed are retried this
  // often (or sooner, with the next commit).
  static constexpr std::chrono::milliseconds kFullRetryDelay{200};
  // Standalone: events past spool.retention_max_age are evicted with the commits of new events
  // and, while the writer is idle, by an empty commit at least this often (every
  // retention_max_age if shorter): an expired event outlives its age by at most this much.
  static constexpr std::chrono::milliseconds kIdleAgeCheck{60'000};

  // From the shipper: delivered events leave the queue; refused ones become dead letters.
  void Ack(std::vector<EventRef> refs);
  void DeadLetter(std::vector<DeadLetterInfo> letters);

  // Moves damaged chunks out of the queue into table damaged_chunks (kept as they are, for
  // forensics), so that shipping goes on; their events count in Stats::damaged_events.
  void SetAside(std::vector<DamagedChunk> chunks);

  // Admin mutations; `done` gets the number of rows affected.
  void RetryDeadLetters(std::vector<uint64_t> ids, std::function<void(uint64_t)> done);
  void PurgeDeadLetters(std::vector<uint64_t> ids, std::function<void(uint64_t)> done);

  // Called on the writer thread after each commit (the shipper wakes up on it).
  void SetCommitListener(std::function<void()> listener);
  // Called once, on the writer thread, when the store fails and starts refusing writes.
  void SetFailureListener(std::function<void()> listener);
  // The tap: while tapping is on, the events appended by each commit are handed to `tap`, in
  // commit order, on the writer thread, once the commit is durable (after the appenders' acks).
  // While off it costs one atomic load per commit. `tap` must not block. Retried dead
  // letters are not new events and are not tapped.
  void SetTap(std::function<void(std::vector<CommittedEvent>)> tap);  // before traffic
  void SetTapping(bool on) { tapping_.store(on, std::memory_order_release); }

  absl::StatusOr<std::unique_ptr<Reader>> NewReader();
  Stats stats() const;
  bool standalone() const { return options_.standalone; }

  // Commits what is queued and stops the writer. Idempotent.
  void Close();

 private:
  struct Op;
  Spool(SpoolOptions options, Clock* clock, sqlite3* db);
  absl::Status Init();
  // (Re)loads the chain heads from the store: at start-up and after a rolled-back commit.
  void LoadHeads();
  // Remembers the ids of table recent_ids (RecentIds' window), at start-up.
  void LoadRecentIds();
  void Enqueue(Op op, bool lazy = false);
  // Counts `bytes` of `events` appended events as pending, unless that would pass the limit:
  // then `done` gets RESOURCE_EXHAUSTED (or UNAVAILABLE after a failure) and false is returned.
  bool Admit(uint64_t bytes, size_t events, const AppendDone& done);
  // Builds the deferred appends of `batch` in place; those that fail leave the batch.
  void BuildDeferred(std::vector<Op>* batch);
  // On the writer, between two pieces of a batch's work: yields once kYieldEvery has passed
  // since the batch began or the last yield, when the batch is background work.
  void MaybeYield();
  void WriterLoop();
  absl::Status ApplyBatch(std::vector<Op>& ops);
  // One transaction for `ops`; rolled back (counters and chain heads restored) on failure.
  absl::Status Commit(std::vector<Op>& ops);
  // Runs the callbacks of `ops` with the outcome of their commit.
  void Finish(std::vector<Op>& ops, const absl::Status& status);
  // Whether free disk space (plus free pages in the file) is at least spool.min_free_disk;
  // sets *available to what was found.
  bool DiskHasRoom(uint64_t* available);
  absl::Status Exec(const char* sql);
  absl::Status Evict();
  // Standalone, with an age limit and events stored: when the writer, idle, should look for
  // expired events (spool.retention_max_age from now, within 1 s and kIdleAgeCheck). nullopt:
  // never (it sleeps until there is work).
  std::optional<std::chrono::steady_clock::time_point> IdleEvictionDue() const;
  // One more event of chunk `ref` is done; deletes the chunk when all are.
  absl::Status Done(const EventRef& ref);
  // Moves one damaged chunk to damaged_chunks and out of the counters.
  absl::Status SetAsideOne(const DamagedChunk& d, int64_t now);
  // Stores the ids a commit remembered (16 bytes each), keeping only RecentIds' window.
  absl::Status PersistRecentIds(const std::string& keys);

  const SpoolOptions options_;
  Clock* const clock_;
  sqlite3* const db_;                            // writer thread only (and Init)
  const std::string dir_;                        // the directory holding the file
  uint64_t page_size_ = kPageSize;               // read back in Init
  chain::Chainer chainer_;                       // writer thread only
  chain::RecentIds recent_;                      // writer thread only (and Init)
  std::unordered_map<uint64_t, uint32_t> done_;  // chunk → events done; writer thread only

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> ops_;     // guarded by mu_
  size_t urgent_ops_ = 0;  // ops in ops_ that want a commit now; guarded by mu_
  std::chrono::steady_clock::time_point first_lazy_{};  // oldest lazy op queued; guarded by mu_
  bool closing_ = false;                                // guarded by mu_
  std::function<void()> commit_listener_;               // set before traffic
  std::function<void()> failure_listener_;              // set before traffic
  // The tap (set before traffic) and the events of the commit in progress (writer thread).
  std::function<void(std::vector<CommittedEvent>)> tap_;
  std::atomic<bool> tapping_{false};
  std::vector<CommittedEvent> tapped_;

  // Counters, written by the writer thread (pending_bytes_ by appenders too).
  std::atomic<uint64_t> stored_events_{0}, stored_bytes_{0}, queue_depth_{0}, queue_bytes_{0};
  std::atomic<uint64_t> dead_letters_{0}, commits_{0}, appended_{0}, evicted_{0};
  std::atomic<uint64_t> rejected_full_{0}, pending_bytes_{0}, deduplicated_{0};
  std::atomic<uint64_t> damaged_events_{0}, writer_yields_{0};
  std::atomic<bool> failed_{false};
  std::atomic<bool> disk_full_{false};  // written by the writer thread
  std::string failure_;                 // writer thread; copied under mu_ into failure_copy_
  std::string failure_copy_;            // guarded by mu_
  int64_t last_age_eviction_ms_ = 0;    // writer thread only
  bool age_backlog_ = false;       // the last age eviction stopped at its share; writer thread only
  uint64_t persisted_ids_ = 0;     // ids in the recent_ids table; writer thread only
  uint64_t corrupt_moved_ = 0;     // set in Open, before the writer starts
  bool background_batch_ = false;  // the batch in hand is lazy ops only; writer thread only
  std::chrono::steady_clock::time_point last_yield_{};  // writer thread only

  std::thread writer_;
};

}  // namespace toolgate::spool

#endif  // TOOLGATE_DAEMON_SPOOL_SPOOL_H_
