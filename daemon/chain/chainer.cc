#include "daemon/chain/chainer.h"

#include "daemon/common/crypto.h"

namespace toolgate::chain {

void AppendAssembled(const normalize::NormalizedEvent& ev, const std::string& previous_hash,
                     std::string* out) {
  out->append(ev.head());
  if (!previous_hash.empty()) {
    out->append(",\"previousHash\":\"");
    out->append(previous_hash);
    out->push_back('"');
  }
  out->append(ev.tail());
}

const std::string& Chainer::LinkAppend(const normalize::NormalizedEvent& ev, std::string* out) {
  auto [it, inserted] = heads_.try_emplace(ev.session_id);
  const size_t start = out->size();
  AppendAssembled(ev, it->second, out);  // a new session's empty head means "no previousHash"
  it->second = Sha256Hex(std::string_view(*out).substr(start));
  return it->second;
}

const std::string* Chainer::Head(const std::string& session_id) const {
  auto it = heads_.find(session_id);
  return it == heads_.end() ? nullptr : &it->second;
}

void Chainer::SetHead(const std::string& session_id, std::string hash) {
  heads_[session_id] = std::move(hash);
}

}  // namespace toolgate::chain
