#include "daemon/agents/registry.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "daemon/common/crypto.h"
#include "daemon/common/time_util.h"
#include "daemon/normalize/jcs.h"

namespace toolgate::agents {
namespace {

absl::Status Invalid(const std::string& field, const std::string& rule) {
  return absl::InvalidArgumentError("snapshot_json" + field + ": " + rule);
}

absl::Status SqlError(sqlite3* db, const char* what) {
  return absl::UnavailableError(absl::StrCat("agents: ", what, ": ", sqlite3_errmsg(db)));
}

}  // namespace

absl::StatusOr<Snapshot> ParseSnapshot(const std::string& json, size_t max_bytes) {
  Snapshot out;
  const std::string text = json.empty() ? "{}" : json;
  if (text.size() > max_bytes) return Invalid("", "larger than ingest.max_argument_bytes");
  auto doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Invalid("", "must be JSON");
  if (!doc.is_object()) return Invalid("", "must be a JSON object {nodes, edges, tools, metadata}");
  for (const char* list : {"nodes", "edges", "tools"}) {
    auto it = doc.find(list);
    if (it == doc.end()) continue;
    if (!it->is_array()) return Invalid(std::string(".") + list, "must be an array");
    for (size_t i = 0; i < it->size(); ++i) {
      if (!(*it)[i].is_object()) {
        return Invalid(absl::StrCat(".", list, "[", i, "]"), "must be an object");
      }
    }
  }
  if (auto tools = doc.find("tools"); tools != doc.end()) {
    std::set<std::string> seen;
    for (size_t i = 0; i < tools->size(); ++i) {
      auto name = (*tools)[i].find("name");
      if (name == (*tools)[i].end() || !name->is_string() || name->get<std::string>().empty()) {
        return Invalid(absl::StrCat(".tools[", i, "].name"), "required (a non-empty string)");
      }
      if (seen.insert(*name).second) out.tool_names.push_back(*name);
    }
  }
  auto canonical = normalize::CanonicalizeJson(text);
  if (!canonical.ok()) return Invalid("", std::string(canonical.status().message()));
  out.hash = Sha256Hex(*canonical);
  return out;
}

absl::StatusOr<std::unique_ptr<AgentRegistry>> AgentRegistry::Open(const std::string& path,
                                                                   Clock* clock) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError("agents: cannot open " + path + ": " + msg);
  }
  std::unique_ptr<AgentRegistry> r(new AgentRegistry(db, clock));
  if (absl::Status s = r->Init(); !s.ok()) return s;
  return r;
}

AgentRegistry::~AgentRegistry() { sqlite3_close(db_); }

absl::Status AgentRegistry::Init() {
  sqlite3_busy_timeout(db_, 5000);
  const char* sql =
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
      "CREATE TABLE IF NOT EXISTS agents(agent_id TEXT PRIMARY KEY, info BLOB NOT NULL,"
      " request BLOB NOT NULL, upstream INTEGER NOT NULL DEFAULT 0);";
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return SqlError(db_, "schema");
  }
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_, "SELECT info FROM agents", -1, &s, nullptr);
  std::lock_guard<std::mutex> l(mu_);
  while (sqlite3_step(s) == SQLITE_ROW) {
    toolgate::v1::AgentInfo info;
    if (!info.ParseFromArray(sqlite3_column_blob(s, 0), sqlite3_column_bytes(s, 0))) continue;
    tools_[info.agent_id()] = std::make_shared<const ToolSet>(
        std::vector<std::string>(info.tool_names().begin(), info.tool_names().end()));
  }
  sqlite3_finalize(s);
  return absl::OkStatus();
}

absl::StatusOr<toolgate::v1::AgentInfo> AgentRegistry::Register(
    const toolgate::v1::RegisterAgentRequest& req, const Snapshot& snapshot) {
  toolgate::v1::AgentInfo info;
  info.set_agent_id(req.agent_id());
  info.set_name(req.name());
  info.set_framework(req.framework());
  info.set_version(req.version());
  info.set_snapshot_hash(snapshot.hash);
  for (const auto& t : snapshot.tool_names) info.add_tool_names(t);
  info.set_registered_at(FormatRfc3339(clock_->Now()));
  toolgate::v1::RegisterAgentRequest stored = req;
  stored.clear_snapshot_json();  // the hash and the tool names are what is kept
  const std::string info_blob = info.SerializeAsString();
  const std::string req_blob = stored.SerializeAsString();
  std::lock_guard<std::mutex> l(mu_);
  sqlite3_stmt* s = nullptr;
  // A new snapshot or identity must be told to the upstream again only if it never knew the
  // agent: POST /v1/agents creates, and its record has no snapshot.
  sqlite3_prepare_v2(db_,
                     "INSERT INTO agents(agent_id, info, request, upstream) VALUES (?1, ?2, ?3, 0)"
                     " ON CONFLICT(agent_id) DO UPDATE SET info = excluded.info,"
                     " request = excluded.request",
                     -1, &s, nullptr);
  sqlite3_bind_text(s, 1, req.agent_id().data(), static_cast<int>(req.agent_id().size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_blob(s, 2, info_blob.data(), static_cast<int>(info_blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_blob(s, 3, req_blob.data(), static_cast<int>(req_blob.size()), SQLITE_TRANSIENT);
  const int rc = sqlite3_step(s);
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) return SqlError(db_, "register");
  tools_[req.agent_id()] = std::make_shared<const ToolSet>(snapshot.tool_names);
  return info;
}

absl::Status AgentRegistry::MarkUpstreamRegistered(const std::string& agent_id) {
  std::lock_guard<std::mutex> l(mu_);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_, "UPDATE agents SET upstream = 1 WHERE agent_id = ?1", -1, &s, nullptr);
  sqlite3_bind_text(s, 1, agent_id.data(), static_cast<int>(agent_id.size()), SQLITE_TRANSIENT);
  const int rc = sqlite3_step(s);
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) return SqlError(db_, "mark");
  return absl::OkStatus();
}

absl::StatusOr<toolgate::v1::AgentInfo> AgentRegistry::Get(const std::string& agent_id) {
  std::lock_guard<std::mutex> l(mu_);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_, "SELECT info FROM agents WHERE agent_id = ?1", -1, &s, nullptr);
  sqlite3_bind_text(s, 1, agent_id.data(), static_cast<int>(agent_id.size()), SQLITE_TRANSIENT);
  toolgate::v1::AgentInfo info;
  const int rc = sqlite3_step(s);
  bool found = false;
  if (rc == SQLITE_ROW) {
    found = info.ParseFromArray(sqlite3_column_blob(s, 0), sqlite3_column_bytes(s, 0));
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db_, "get");
  if (!found) return absl::NotFoundError("agent " + agent_id + " is not registered");
  return info;
}

std::vector<toolgate::v1::RegisterAgentRequest> AgentRegistry::NotUpstream() {
  std::vector<toolgate::v1::RegisterAgentRequest> out;
  std::lock_guard<std::mutex> l(mu_);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db_, "SELECT request FROM agents WHERE upstream = 0", -1, &s, nullptr);
  while (sqlite3_step(s) == SQLITE_ROW) {
    toolgate::v1::RegisterAgentRequest r;
    if (r.ParseFromArray(sqlite3_column_blob(s, 0), sqlite3_column_bytes(s, 0))) {
      out.push_back(std::move(r));
    }
  }
  sqlite3_finalize(s);
  return out;
}

std::shared_ptr<const ToolSet> AgentRegistry::Tools(const std::string& agent_id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = tools_.find(agent_id);
  return it == tools_.end() ? nullptr : it->second;
}

size_t AgentRegistry::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return tools_.size();
}

}  // namespace toolgate::agents
