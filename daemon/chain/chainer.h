// Chainer: links each session's events with previousHash.
//
// previousHash of an event = lowercase hex SHA-256 of the RFC 8785 bytes of the session's
// previous event exactly as sent upstream (its own previousHash included). The first event of
// a session has none. The heads (last hash per session) are persisted by the spool in the same
// transaction as the events, so the chain survives restarts and crashes.
//
// Single-threaded: used only on the spool's writer thread, which orders all appends.
#ifndef TOOLGATE_DAEMON_CHAIN_CHAINER_H_
#define TOOLGATE_DAEMON_CHAIN_CHAINER_H_

#include <string>
#include <unordered_map>

#include "daemon/normalize/normalizer.h"

namespace toolgate::chain {

class Chainer {
 public:
  // Appends the event's final canonical bytes to `out` (the spool's chunk) and returns their
  // hash, which becomes the session's head.
  const std::string& LinkAppend(const normalize::NormalizedEvent& ev, std::string* out);

  // The session's head, or nullptr for a session with no events yet.
  const std::string* Head(const std::string& session_id) const;
  void SetHead(const std::string& session_id, std::string hash);
  size_t sessions() const { return heads_.size(); }

 private:
  std::unordered_map<std::string, std::string> heads_;
};

// Appends the canonical envelope with the given previousHash ("" for the first event).
void AppendAssembled(const normalize::NormalizedEvent& ev, const std::string& previous_hash,
                     std::string* out);

}  // namespace toolgate::chain

#endif  // TOOLGATE_DAEMON_CHAIN_CHAINER_H_
