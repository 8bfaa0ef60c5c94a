#include "daemon/guardian/guardian_service.h"

#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

namespace toolgate::guardian {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

constexpr size_t kMaxWatchQueue = 1000;

}  // namespace

// One WatchPending call. The guardian's listener holds the shared state, not the reactor: a
// listener still running when the call ends finds `reactor` null (set under `mu` in OnDone).
struct WatchState {
  std::mutex mu;
  grpc::ServerWriteReactor<toolgate::v1::PendingAction>* reactor = nullptr;  // guarded by mu
  std::deque<PendingAction> queue;                                           // guarded by mu
  std::set<std::string> sent;              // pending ids already queued; guarded by mu
  PendingAction current;                   // guarded by mu
  bool writing = false, finished = false;  // guarded by mu
  bool ending = false;                     // Finish waits for the write in flight; guarded by mu
  grpc::Status end;                        // guarded by mu
  bool include_decisions = false;

  // Requires mu.
  void WriteNextLocked() {
    if (reactor == nullptr || writing || finished || ending || queue.empty()) return;
    current = std::move(queue.front());
    queue.pop_front();
    writing = true;
    reactor->StartWrite(&current);
  }
  // Requires mu.
  // Requires mu. One write in flight at a time, and Finish counts as one: with a write in
  // flight, it is called from OnWriteDone.
  void FinishLocked(const grpc::Status& s) {
    if (reactor == nullptr || finished || ending) return;
    ending = true;
    end = s;
    queue.clear();
    if (!writing) {
      finished = true;
      reactor->Finish(end);
    }
  }
  void Push(const PendingAction& a) {
    std::lock_guard<std::mutex> l(mu);
    if (finished || ending) return;
    if (a.status() == toolgate::v1::PENDING) {
      if (!sent.insert(a.id()).second) return;
    } else if (!include_decisions) {
      return;
    }
    if (queue.size() >= kMaxWatchQueue) {
      FinishLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "watcher too slow: more than 1000 updates queued"));
      return;
    }
    queue.push_back(a);
    WriteNextLocked();
  }
};

namespace {

class WatchReactor final : public grpc::ServerWriteReactor<toolgate::v1::PendingAction> {
 public:
  WatchReactor(Guardian* guardian, std::shared_ptr<WatchState> state, std::function<void()> on_done)
      : guardian_(guardian), state_(std::move(state)), on_done_(std::move(on_done)) {
    state_->reactor = this;
  }

  void Start() {
    // Listen first, then list, so that nothing created in between is missed; an action seen
    // both ways is sent once.
    token_ = guardian_->AddListener([state = state_](const PendingAction& a) { state->Push(a); });
    auto list = guardian_->List(toolgate::v1::PENDING, 10000);
    std::lock_guard<std::mutex> l(state_->mu);
    if (!list.ok()) {
      state_->FinishLocked(ToGrpc(list.status()));
      return;
    }
    std::vector<PendingAction> initial;  // oldest first, ahead of anything queued meanwhile
    for (auto it = list->rbegin(); it != list->rend(); ++it) {
      if (state_->sent.insert(it->id()).second) initial.push_back(std::move(*it));
    }
    state_->queue.insert(state_->queue.begin(), std::make_move_iterator(initial.begin()),
                         std::make_move_iterator(initial.end()));
    state_->WriteNextLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(state_->mu);
    state_->writing = false;
    if (state_->ending) {
      if (!state_->finished) {
        state_->finished = true;
        Finish(state_->end);
      }
      return;
    }
    if (!ok) {
      state_->FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    state_->WriteNextLocked();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> l(state_->mu);
    state_->FinishLocked(grpc::Status::CANCELLED);
  }
  void OnDone() override {
    guardian_->RemoveListener(token_);
    {
      std::lock_guard<std::mutex> l(state_->mu);
      state_->reactor = nullptr;
    }
    on_done_();
    delete this;
  }

 private:
  Guardian* const guardian_;
  std::shared_ptr<WatchState> state_;
  std::function<void()> on_done_;
  uint64_t token_ = 0;
};

const grpc::Status kShuttingDown(grpc::StatusCode::UNAVAILABLE,
                                 "toolgated is shutting down: watch again after it restarts");

}  // namespace

grpc::ServerUnaryReactor* GuardianService::ListPending(grpc::CallbackServerContext* ctx,
                                                       const toolgate::v1::ListPendingRequest* req,
                                                       toolgate::v1::ListPendingResponse* resp) {
  auto* r = ctx->DefaultReactor();
  auto list = guardian_->List(req->status(), req->limit() ? req->limit() : 100);
  if (!list.ok()) {
    r->Finish(ToGrpc(list.status()));
    return r;
  }
  for (auto& a : *list) *resp->add_actions() = std::move(a);
  r->Finish(grpc::Status::OK);
  return r;
}

grpc::ServerUnaryReactor* GuardianService::Decide(grpc::CallbackServerContext* ctx,
                                                  const toolgate::v1::DecideRequest* req,
                                                  toolgate::v1::DecideResponse* resp) {
  auto* r = ctx->DefaultReactor();
  if (req->id().empty()) {
    r->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "id: required"));
    return r;
  }
  if (req->approver_id().empty()) {
    r->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                           "approver_id: required (who decided is part of the audit trail)"));
    return r;
  }
  if (!req->approve() && req->reason().empty()) {
    r->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "reason: required to reject an action"));
    return r;
  }
  auto decided = guardian_->Decide(req->id(), req->approve(), req->reason(), req->approver_id());
  if (!decided.ok()) {
    r->Finish(ToGrpc(decided.status()));
    return r;
  }
  *resp->mutable_action() = std::move(*decided);
  r->Finish(grpc::Status::OK);
  return r;
}

grpc::ServerWriteReactor<toolgate::v1::PendingAction>* GuardianService::WatchPending(
    grpc::CallbackServerContext*, const toolgate::v1::WatchPendingRequest* req) {
  auto state = std::make_shared<WatchState>();
  state->include_decisions = req->include_decisions();
  auto* reactor = new WatchReactor(guardian_, state, [this, state] {
    std::lock_guard<std::mutex> l(watches_mu_);
    watches_.erase(state);
  });
  reactor->Start();
  std::lock_guard<std::mutex> l(watches_mu_);
  watches_.insert(state);
  if (stopping_) {
    std::lock_guard<std::mutex> sl(state->mu);
    state->FinishLocked(kShuttingDown);
  }
  return reactor;
}

void GuardianService::StopWatches() {
  std::lock_guard<std::mutex> l(watches_mu_);
  stopping_ = true;
  for (const auto& state : watches_) {
    std::lock_guard<std::mutex> sl(state->mu);
    state->FinishLocked(kShuttingDown);
  }
}

}  // namespace toolgate::guardian
