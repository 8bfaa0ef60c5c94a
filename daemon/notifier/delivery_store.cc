#include "daemon/notifier/delivery_store.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace toolgate::notifier {
namespace {

// A prepared statement, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { ok_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) == 0; }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return ok_; }
  Stmt& Text(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Blob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Int(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  int Step() { return ok_ ? sqlite3_step(s_) : SQLITE_ERROR; }
  std::string ColText(int i) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, i));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, i))) : std::string();
  }
  std::string ColBlob(int i) {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(s_, i));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, i))) : std::string();
  }
  int64_t ColInt(int i) { return sqlite3_column_int64(s_, i); }

 private:
  sqlite3_stmt* s_ = nullptr;
  bool ok_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeliveryStore>> DeliveryStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("notifier: cannot open ", path, ": ", msg));
  }
  std::unique_ptr<DeliveryStore> store(new DeliveryStore(db));
  if (absl::Status s = store->Init(); !s.ok()) return s;
  return store;
}

DeliveryStore::~DeliveryStore() { sqlite3_close(db_); }

std::string DeliveryStore::Error(const char* what) const {
  return absl::StrCat("notifier store: ", what, ": ", sqlite3_errmsg(db_));
}

absl::Status DeliveryStore::Exec(const char* what, const char* sql) {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return absl::UnavailableError(Error(what));
  }
  return absl::OkStatus();
}

absl::Status DeliveryStore::Init() {
  sqlite3_busy_timeout(db_, 5000);
  // synchronous=FULL: webhooks are rare (session starts and ends, handoffs), so an fsync per
  // write costs nothing that matters, and a stored delivery survives a power loss.
  return Exec("schema",
              "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
              "CREATE TABLE IF NOT EXISTS deliveries("
              " id INTEGER PRIMARY KEY AUTOINCREMENT,"
              " idempotency_key TEXT NOT NULL, url TEXT NOT NULL, event TEXT NOT NULL,"
              " body BLOB NOT NULL, attempts INTEGER NOT NULL, next_ms INTEGER NOT NULL,"
              " created_ms INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0,"
              " last_error TEXT NOT NULL DEFAULT '');"
              "CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(dead, id);"
              "CREATE TABLE IF NOT EXISTS executions(agent_id TEXT NOT NULL,"
              " session_id TEXT NOT NULL, started_at TEXT NOT NULL, seen_ms INTEGER NOT NULL,"
              " PRIMARY KEY(agent_id, session_id));"
              "CREATE TABLE IF NOT EXISTS agents(agent_id TEXT PRIMARY KEY, name TEXT NOT NULL);");
}

absl::Status DeliveryStore::Insert(std::vector<Delivery>* deliveries) {
  if (deliveries->empty()) return absl::OkStatus();
  if (absl::Status s = Exec("begin", "BEGIN IMMEDIATE"); !s.ok()) return s;
  for (Delivery& d : *deliveries) {
    Stmt st(db_,
            "INSERT INTO deliveries(idempotency_key, url, event, body, attempts, next_ms,"
            " created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    st.Text(1, d.idempotency_key)
        .Text(2, d.url)
        .Text(3, d.event)
        .Blob(4, d.body)
        .Int(5, d.attempts)
        .Int(6, d.next_ms)
        .Int(7, d.created_ms);
    if (st.Step() != SQLITE_DONE) {
      absl::Status err = absl::UnavailableError(Error("insert"));
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      return err;
    }
    d.id = sqlite3_last_insert_rowid(db_);
  }
  if (absl::Status s = Exec("commit", "COMMIT"); !s.ok()) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }
  return absl::OkStatus();
}

absl::Status DeliveryStore::Reschedule(const Delivery& d) {
  Stmt st(db_, "UPDATE deliveries SET attempts = ?2, next_ms = ?3, last_error = ?4 WHERE id = ?1");
  st.Int(1, d.id).Int(2, d.attempts).Int(3, d.next_ms).Text(4, d.last_error);
  if (st.Step() != SQLITE_DONE) return absl::UnavailableError(Error("reschedule"));
  return absl::OkStatus();
}

absl::Status DeliveryStore::Remove(int64_t id) {
  Stmt st(db_, "DELETE FROM deliveries WHERE id = ?1");
  st.Int(1, id);
  if (st.Step() != SQLITE_DONE) return absl::UnavailableError(Error("remove"));
  return absl::OkStatus();
}

absl::Status DeliveryStore::MarkDead(const Delivery& d) {
  {
    Stmt st(db_, "UPDATE deliveries SET dead = 1, attempts = ?2, last_error = ?3 WHERE id = ?1");
    st.Int(1, d.id).Int(2, d.attempts).Text(3, d.last_error);
    if (st.Step() != SQLITE_DONE) return absl::UnavailableError(Error("mark dead"));
  }
  Stmt trim(db_,
            "DELETE FROM deliveries WHERE dead = 1 AND id NOT IN"
            " (SELECT id FROM deliveries WHERE dead = 1 ORDER BY id DESC LIMIT ?1)");
  trim.Int(1, kMaxDeadKept);
  if (trim.Step() != SQLITE_DONE) return absl::UnavailableError(Error("trim dead"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Delivery>> DeliveryStore::LoadPending() {
  Stmt st(db_,
          "SELECT id, idempotency_key, url, event, body, attempts, next_ms, created_ms,"
          " last_error FROM deliveries WHERE dead = 0 ORDER BY id");
  std::vector<Delivery> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    Delivery d;
    d.id = st.ColInt(0);
    d.idempotency_key = st.ColText(1);
    d.url = st.ColText(2);
    d.event = st.ColText(3);
    d.body = st.ColBlob(4);
    d.attempts = static_cast<int>(st.ColInt(5));
    d.next_ms = st.ColInt(6);
    d.created_ms = st.ColInt(7);
    d.last_error = st.ColText(8);
    out.push_back(std::move(d));
  }
  if (rc != SQLITE_DONE) return absl::UnavailableError(Error("load"));
  return out;
}

int64_t DeliveryStore::DeadCount() {
  Stmt st(db_, "SELECT COUNT(*) FROM deliveries WHERE dead = 1");
  return st.Step() == SQLITE_ROW ? st.ColInt(0) : 0;
}

absl::Status DeliveryStore::RememberStart(const std::string& agent_id,
                                          const std::string& session_id,
                                          const std::string& started_at, int64_t now_ms) {
  Stmt st(db_,
          "INSERT INTO executions(agent_id, session_id, started_at, seen_ms) VALUES (?1, ?2, ?3,"
          " ?4) ON CONFLICT(agent_id, session_id) DO UPDATE SET started_at = excluded.started_at,"
          " seen_ms = excluded.seen_ms");
  st.Text(1, agent_id).Text(2, session_id).Text(3, started_at).Int(4, now_ms);
  if (st.Step() != SQLITE_DONE) return absl::UnavailableError(Error("remember start"));
  return absl::OkStatus();
}

std::string DeliveryStore::StartedAt(const std::string& agent_id, const std::string& session_id) {
  Stmt st(db_, "SELECT started_at FROM executions WHERE agent_id = ?1 AND session_id = ?2");
  st.Text(1, agent_id).Text(2, session_id);
  return st.Step() == SQLITE_ROW ? st.ColText(0) : std::string();
}

absl::Status DeliveryStore::ForgetExecution(const std::string& agent_id,
                                            const std::string& session_id) {
  Stmt st(db_, "DELETE FROM executions WHERE agent_id = ?1 AND session_id = ?2");
  st.Text(1, agent_id).Text(2, session_id);
  if (st.Step() != SQLITE_DONE) return absl::UnavailableError(Error("forget execution"));
  return absl::OkStatus();
}

absl::Status DeliveryStore::PruneExecutions(int64_t older_than_ms) {
  Stmt st(db_, "DELETE FROM executions WHERE seen_ms < ?1");
  st.Int(1, older_than_ms);
  if (st.Step() != SQLITE_DONE) return absl::UnavailableError(Error("prune executions"));
  return absl::OkStatus();
}

absl::Status DeliveryStore::SetAgentName(const std::string& agent_id, const std::string& name) {
  Stmt st(db_,
          "INSERT INTO agents(agent_id, name) VALUES (?1, ?2) ON CONFLICT(agent_id) DO UPDATE"
          " SET name = excluded.name");
  st.Text(1, agent_id).Text(2, name);
  if (st.Step() != SQLITE_DONE) return absl::UnavailableError(Error("agent name"));
  return absl::OkStatus();
}

std::string DeliveryStore::AgentName(const std::string& agent_id) {
  Stmt st(db_, "SELECT name FROM agents WHERE agent_id = ?1");
  st.Text(1, agent_id);
  return st.Step() == SQLITE_ROW ? st.ColText(0) : std::string();
}

}  // namespace toolgate::notifier
