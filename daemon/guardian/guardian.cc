#include "daemon/guardian/guardian.h"

#include <pthread.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/common/crypto.h"
#include "daemon/common/log.h"
#include "daemon/common/time_util.h"

namespace toolgate::guardian {
namespace {

using toolgate::v1::PendingStatus;

int64_t ToMs(SystemTime t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::string MsToText(int64_t ms) {
  return FormatRfc3339(SystemTime(std::chrono::milliseconds(ms)));
}

int64_t TextToMs(const std::string& text) {
  auto t = ParseRfc3339(text);
  return t.ok() ? ToMs(*t) : 0;
}

absl::Status SqlError(sqlite3* db, const char* what) {
  return absl::UnavailableError(absl::StrCat("guardian: ", what, ": ", sqlite3_errmsg(db)));
}

}  // namespace

const char* StatusWord(PendingStatus s) {
  switch (s) {
    case toolgate::v1::APPROVED:
      return "approved";
    case toolgate::v1::REJECTED:
      return "rejected";
    case toolgate::v1::EXPIRED:
      return "expired";
    default:
      return "pending";
  }
}

absl::StatusOr<std::unique_ptr<Guardian>> Guardian::Open(const std::string& path, Clock* clock,
                                                         AuditSink audit) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError("guardian: cannot open " + path + ": " + msg);
  }
  std::unique_ptr<Guardian> g(new Guardian(db, clock, std::move(audit)));
  if (absl::Status s = g->Init(); !s.ok()) return s;
  g->expiry_ = std::thread([p = g.get()] { p->ExpiryLoop(); });
  return g;
}

Guardian::Guardian(sqlite3* db, Clock* clock, AuditSink audit)
    : db_(db), clock_(clock), audit_(std::move(audit)) {}

Guardian::~Guardian() {
  Close();
  sqlite3_close(db_);
}

absl::Status Guardian::Init() {
  sqlite3_busy_timeout(db_, 5000);
  const char* sql =
      // WAL with synchronous=NORMAL: a daemon crash loses nothing (the WAL is in the OS's
      // cache); power loss may lose the last pending actions, whose waiters then get NOT_FOUND,
      // i.e. no approval. Creating one therefore costs no fsync on the Check path.
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
      "CREATE TABLE IF NOT EXISTS pending(id TEXT PRIMARY KEY, status INTEGER NOT NULL,"
      " created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, body BLOB NOT NULL);"
      "CREATE INDEX IF NOT EXISTS pending_status ON pending(status, created_ms);";
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return SqlError(db_, "schema");
  }
  if (absl::Status m = AddUpstreamIdColumn(); !m.ok()) return m;
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_, "SELECT id, expires_ms FROM pending WHERE status = ?1", -1, &s, nullptr);
  sqlite3_bind_int(s, 1, toolgate::v1::PENDING);
  while (sqlite3_step(s) == SQLITE_ROW) {
    expiries_.emplace(sqlite3_column_int64(s, 1),
                      reinterpret_cast<const char*>(sqlite3_column_text(s, 0)));
  }
  sqlite3_finalize(s);
  if (!expiries_.empty()) {
    LogInfo("guardian: pending actions restored", {{"pending", expiries_.size()}});
  }
  return absl::OkStatus();
}

absl::Status Guardian::AddUpstreamIdColumn() {
  // Databases made before the column: add it, fill it from the bodies (once), index it.
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_, "SELECT 1 FROM pragma_table_info('pending') WHERE name = 'upstream_id'",
                     -1, &s, nullptr);
  const bool has_column = sqlite3_step(s) == SQLITE_ROW;
  sqlite3_finalize(s);
  if (!has_column) {
    if (sqlite3_exec(db_, "BEGIN; ALTER TABLE pending ADD COLUMN upstream_id TEXT", nullptr,
                     nullptr, nullptr) != SQLITE_OK) {
      return SqlError(db_, "schema (upstream_id)");
    }
    std::vector<std::pair<std::string, std::string>> ids;  // id, upstream id
    sqlite3_prepare_v2(db_, "SELECT id, body FROM pending", -1, &s, nullptr);
    while (sqlite3_step(s) == SQLITE_ROW) {
      PendingAction a;
      if (a.ParseFromArray(sqlite3_column_blob(s, 1), sqlite3_column_bytes(s, 1)) &&
          !a.upstream_id().empty()) {
        ids.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)), a.upstream_id());
      }
    }
    sqlite3_finalize(s);
    sqlite3_prepare_v2(db_, "UPDATE pending SET upstream_id = ?2 WHERE id = ?1", -1, &s, nullptr);
    int rc = SQLITE_DONE;
    for (const auto& [id, upstream] : ids) {
      sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
      sqlite3_bind_text(s, 2, upstream.data(), static_cast<int>(upstream.size()), SQLITE_TRANSIENT);
      if ((rc = sqlite3_step(s)) != SQLITE_DONE) break;
      sqlite3_reset(s);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE || sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      const absl::Status e = SqlError(db_, "schema (upstream_id)");
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      return e;
    }
  }
  if (sqlite3_exec(db_,
                   "CREATE INDEX IF NOT EXISTS pending_upstream ON pending(upstream_id) "
                   "WHERE upstream_id IS NOT NULL",
                   nullptr, nullptr, nullptr) != SQLITE_OK) {
    return SqlError(db_, "schema (upstream_id index)");
  }
  return absl::OkStatus();
}

absl::Status Guardian::Store(const PendingAction& a) {
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_,
                     "INSERT INTO pending(id, status, created_ms, expires_ms, body, upstream_id) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO UPDATE SET "
                     "status = excluded.status, body = excluded.body",
                     -1, &s, nullptr);
  const std::string body = a.SerializeAsString();
  sqlite3_bind_text(s, 1, a.id().data(), static_cast<int>(a.id().size()), SQLITE_TRANSIENT);
  sqlite3_bind_int(s, 2, a.status());
  sqlite3_bind_int64(s, 3, TextToMs(a.created_at()));
  sqlite3_bind_int64(s, 4, TextToMs(a.expires_at()));
  sqlite3_bind_blob(s, 5, body.data(), static_cast<int>(body.size()), SQLITE_TRANSIENT);
  if (!a.upstream_id().empty()) {
    sqlite3_bind_text(s, 6, a.upstream_id().data(), static_cast<int>(a.upstream_id().size()),
                      SQLITE_TRANSIENT);
  }  // else NULL: out of the index
  const int rc = sqlite3_step(s);
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) return SqlError(db_, "store");
  return absl::OkStatus();
}

absl::StatusOr<PendingAction> Guardian::Load(const std::string& id) {
  return LoadOne("SELECT body FROM pending WHERE id = ?1", id);
}

absl::StatusOr<PendingAction> Guardian::LoadOne(const char* sql, const std::string& id) {
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_, sql, -1, &s, nullptr);
  sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
  PendingAction a;
  const int rc = sqlite3_step(s);
  bool found = false;
  if (rc == SQLITE_ROW) {
    found = a.ParseFromArray(sqlite3_column_blob(s, 0), sqlite3_column_bytes(s, 0));
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db_, "load");
  if (!found) return absl::NotFoundError("pending action " + id + " not found");
  return a;
}

absl::StatusOr<PendingAction> Guardian::Create(
    const toolgate::v1::Action& action, const std::string& arguments_hash,
    const std::string& rule_id, const std::string& reason, std::chrono::milliseconds timeout,
    toolgate::v1::Decision on_timeout, const std::string& upstream_id) {
  PendingAction a;
  a.set_id(NewUuid());
  a.set_upstream_id(upstream_id);
  *a.mutable_action() = action;
  a.mutable_action()->clear_arguments_json();  // never stored
  a.set_arguments_hash(arguments_hash);
  a.set_rule_id(rule_id);
  a.set_reason(reason);
  const int64_t now = ToMs(clock_->Now());
  a.set_created_at(MsToText(now));
  a.set_expires_at(MsToText(now + timeout.count()));
  a.set_status(toolgate::v1::PENDING);
  a.set_on_timeout(on_timeout == toolgate::v1::ALLOW ? toolgate::v1::ALLOW : toolgate::v1::DENY);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (absl::Status s = Store(a); !s.ok()) return s;
    expiries_.emplace(now + timeout.count(), a.id());
  }
  cv_.notify_all();
  Notify(a);
  return a;
}

uint64_t Guardian::AddListener(Listener listener) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  const uint64_t token = next_listener_++;
  listeners_.emplace(token, std::make_shared<Listener>(std::move(listener)));
  return token;
}

void Guardian::RemoveListener(uint64_t token) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  listeners_.erase(token);
}

void Guardian::Notify(const PendingAction& a) {
  std::vector<std::shared_ptr<Listener>> copy;
  {
    std::lock_guard<std::mutex> l(listeners_mu_);
    for (const auto& [token, listener] : listeners_) copy.push_back(listener);
  }
  for (const auto& listener : copy) (*listener)(a);
}

absl::Status Guardian::Finalize(PendingAction* a, std::vector<Waiter>* to_call) {
  if (absl::Status s = Store(*a); !s.ok()) return s;
  for (auto it = expiries_.begin(); it != expiries_.end(); ++it) {
    if (it->second == a->id()) {
      expiries_.erase(it);
      break;
    }
  }
  auto w = waiters_.find(a->id());
  if (w != waiters_.end()) {
    for (auto& [token, waiter] : w->second) {
      token_ids_.erase(token);
      to_call->push_back(std::move(waiter));
    }
    waiters_.erase(w);
  }
  return absl::OkStatus();
}

absl::StatusOr<PendingAction> Guardian::Decide(const std::string& id, bool approve,
                                               const std::string& reason,
                                               const std::string& approver) {
  std::vector<Waiter> to_call;
  PendingAction a;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto loaded = Load(id);
    if (!loaded.ok()) return loaded.status();
    a = std::move(*loaded);
    if (a.status() != toolgate::v1::PENDING) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pending action ", id, " was already ", StatusWord(a.status()),
          a.approver_id().empty() ? "" : " by " + a.approver_id(), " at ", a.decided_at()));
    }
    a.set_status(approve ? toolgate::v1::APPROVED : toolgate::v1::REJECTED);
    a.set_approver_id(approver);
    a.set_decision_reason(reason);
    a.set_decided_at(FormatRfc3339(clock_->Now()));
    if (absl::Status s = Finalize(&a, &to_call); !s.ok()) return s;
  }
  LogInfo("guardian: decided", {{"id", id},
                                {"status", StatusWord(a.status())},
                                {"approver", approver},
                                {"rule", a.rule_id()}});
  audit_(a);
  for (auto& w : to_call) w(a);
  Notify(a);
  return a;
}

absl::StatusOr<PendingAction> Guardian::Get(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  return Load(id);
}

absl::StatusOr<PendingAction> Guardian::GetByUpstreamId(const std::string& upstream_id) {
  static const std::string* sql = new std::string(absl::StrCat(
      "SELECT body FROM pending WHERE upstream_id = ?1 ORDER BY status = ", toolgate::v1::PENDING,
      " DESC, created_ms DESC LIMIT 1"));
  std::lock_guard<std::mutex> l(mu_);
  return LoadOne(sql->c_str(), upstream_id);
}

absl::StatusOr<std::vector<PendingAction>> Guardian::List(toolgate::v1::PendingStatus status,
                                                          size_t limit) {
  if (status == toolgate::v1::PENDING_STATUS_UNSPECIFIED) status = toolgate::v1::PENDING;
  std::lock_guard<std::mutex> l(mu_);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_,
                     "SELECT body FROM pending WHERE status = ?1 ORDER BY created_ms DESC "
                     "LIMIT ?2",
                     -1, &s, nullptr);
  sqlite3_bind_int(s, 1, status);
  sqlite3_bind_int64(s, 2, static_cast<int64_t>(limit));
  std::vector<PendingAction> out;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    PendingAction a;
    if (a.ParseFromArray(sqlite3_column_blob(s, 0), sqlite3_column_bytes(s, 0))) {
      out.push_back(std::move(a));
    }
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) return SqlError(db_, "list");
  return out;
}

absl::StatusOr<uint64_t> Guardian::Wait(const std::string& id, Waiter waiter) {
  PendingAction a;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto loaded = Load(id);
    if (!loaded.ok()) return loaded.status();
    if (loaded->status() == toolgate::v1::PENDING) {
      const uint64_t token = next_token_++;
      waiters_[id].emplace(token, std::move(waiter));
      token_ids_[token] = id;
      return token;
    }
    a = std::move(*loaded);
  }
  waiter(a);  // decided already: answer at once
  return 0;
}

void Guardian::CancelWait(uint64_t token) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = token_ids_.find(token);
  if (it == token_ids_.end()) return;
  auto w = waiters_.find(it->second);
  if (w != waiters_.end()) {
    w->second.erase(token);
    if (w->second.empty()) waiters_.erase(w);
  }
  token_ids_.erase(it);
}

size_t Guardian::pending() const {
  std::lock_guard<std::mutex> l(mu_);
  return expiries_.size();
}

void Guardian::ExpiryLoop() {
  pthread_setname_np(pthread_self(), "tg-guardian");
  std::unique_lock<std::mutex> l(mu_);
  while (!closing_) {
    const int64_t now = ToMs(clock_->Now());
    if (!expiries_.empty() && expiries_.begin()->first <= now) {
      const std::string id = expiries_.begin()->second;
      expiries_.erase(expiries_.begin());
      auto loaded = Load(id);
      if (!loaded.ok() || loaded->status() != toolgate::v1::PENDING) continue;
      PendingAction a = std::move(*loaded);
      // Never "approved": the timeout's effect is recorded with the status EXPIRED.
      a.set_status(toolgate::v1::EXPIRED);
      a.set_approver_id("toolgate-timeout");
      a.set_decision_reason(std::string("no decision before ") + a.expires_at() + "; on_timeout " +
                            (a.on_timeout() == toolgate::v1::ALLOW ? "allow" : "deny"));
      a.set_decided_at(FormatRfc3339(clock_->Now()));
      std::vector<Waiter> to_call;
      if (absl::Status s = Finalize(&a, &to_call); !s.ok()) {
        LogError("guardian: cannot record an expiry",
                 {{"id", id}, {"error", std::string(s.message())}});
        continue;
      }
      l.unlock();
      LogInfo("guardian: expired", {{"id", id}, {"rule", a.rule_id()}});
      audit_(a);
      for (auto& w : to_call) w(a);
      Notify(a);
      l.lock();
      continue;
    }
    if (expiries_.empty()) {
      cv_.wait(l);
    } else {
      cv_.wait_for(
          l, std::chrono::milliseconds(std::min<int64_t>(expiries_.begin()->first - now, 1000)));
    }
  }
}

void Guardian::Close() {
  {
    std::lock_guard<std::mutex> l(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  if (expiry_.joinable()) expiry_.join();
}

}  // namespace toolgate::guardian
