// AgentRegistry: the agents that registered with this daemon (toolgate.v1.Agents), each with
// the hash of its snapshot (kaplaix-api.md, "Agent snapshots": nodes, edges, tools, metadata)
// and the names of its tools.
//
// Stored in DATA_DIR/agents.db (SQLite, WAL, synchronous=FULL: a registration is rare and must
// not be lost). Re-registering replaces the record; a different snapshot gives a different hash,
// which is what makes a change of an agent's tools visible in its audit trail (each
// registration emits an `identity` event carrying the hash). The tool names feed the policy
// condition `tool_in_snapshot` through Tools(), which is cheap (a shared, immutable set).
//
// Thread-safe.
#ifndef TOOLGATE_DAEMON_AGENTS_REGISTRY_H_
#define TOOLGATE_DAEMON_AGENTS_REGISTRY_H_

#include <sqlite3.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/common/clock.h"
#include "daemon/policy/policy.h"
#include "toolgate/v1/agents.pb.h"

namespace toolgate::agents {

// The tools of one registered snapshot; immutable once built.
class ToolSet final : public policy::ToolLookup {
 public:
  explicit ToolSet(std::vector<std::string> names) : names_(names.begin(), names.end()) {}
  bool Has(std::string_view tool) const override { return names_.find(tool) != names_.end(); }

 private:
  std::set<std::string, std::less<>> names_;
};

// What a snapshot says, once validated: its canonical hash and its tool names (in order,
// without duplicates).
struct Snapshot {
  std::string hash;
  std::vector<std::string> tool_names;
};

// Validates a snapshot (a JSON object; `nodes`, `edges`, `tools` arrays of objects when present;
// each tool with a non-empty string `name`) and hashes its RFC 8785 form. An empty text is an
// empty snapshot. InvalidArgument naming the field, e.g. "snapshot_json.tools[2].name: required".
absl::StatusOr<Snapshot> ParseSnapshot(const std::string& json, size_t max_bytes);

class AgentRegistry {
 public:
  static absl::StatusOr<std::unique_ptr<AgentRegistry>> Open(const std::string& path, Clock* clock);
  ~AgentRegistry();

  // Stores (or replaces) the agent; `snapshot` comes from ParseSnapshot.
  absl::StatusOr<toolgate::v1::AgentInfo> Register(const toolgate::v1::RegisterAgentRequest& req,
                                                   const Snapshot& snapshot);
  absl::Status MarkUpstreamRegistered(const std::string& agent_id);
  absl::StatusOr<toolgate::v1::AgentInfo> Get(const std::string& agent_id);
  // Registered agents the upstream does not know yet (to retry).
  std::vector<toolgate::v1::RegisterAgentRequest> NotUpstream();
  // The agent's registered tools; nullptr when it never registered.
  std::shared_ptr<const ToolSet> Tools(const std::string& agent_id) const;
  size_t size() const;

 private:
  AgentRegistry(sqlite3* db, Clock* clock) : db_(db), clock_(clock) {}
  absl::Status Init();

  sqlite3* const db_;
  Clock* const clock_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const ToolSet>, std::less<>> tools_;  // guarded by mu_
};

}  // namespace toolgate::agents

#endif  // TOOLGATE_DAEMON_AGENTS_REGISTRY_H_
