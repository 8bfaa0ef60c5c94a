#include "daemon/app/admin_service.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/common/time_util.h"

namespace toolgate::app {

using namespace toolgate::v1;

namespace {

grpc::Status Unavailable(const absl::Status& s) {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
}

std::string MsToRfc3339(int64_t ms) {
  return FormatRfc3339(SystemTime(std::chrono::milliseconds(ms)));
}

}  // namespace

AdminService::AdminService(spool::Spool* spool, StatusFiller fill_status, FlushHook flush,
                           ReloadHook reload)
    : spool_(spool),
      fill_status_(std::move(fill_status)),
      flush_(std::move(flush)),
      reload_(std::move(reload)) {}

grpc::ServerUnaryReactor* AdminService::ReloadPolicies(grpc::CallbackServerContext* ctx,
                                                       const ReloadPoliciesRequest*,
                                                       ReloadPoliciesResponse* resp) {
  // Compiling a policy takes milliseconds at most: done inline.
  const policy::ReloadResult r = reload_();
  resp->set_revision(r.revision);
  resp->set_changed(r.changed);
  resp->set_error(r.error);
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::Status(grpc::CallbackServerContext* ctx,
                                               const StatusRequest*, StatusResponse* resp) {
  fill_status_(resp);
  auto* r = ctx->DefaultReactor();
  r->Finish(grpc::Status::OK);
  return r;
}

grpc::ServerUnaryReactor* AdminService::Flush(grpc::CallbackServerContext* ctx,
                                              const FlushRequest* req, FlushResponse* resp) {
  auto* r = ctx->DefaultReactor();
  if (spool_->standalone()) {
    resp->set_complete(true);
    r->Finish(grpc::Status::OK);
    return r;
  }
  flush_();
  const auto timeout = std::chrono::milliseconds(req->timeout_ms() ? req->timeout_ms() : 10000);
  std::lock_guard<std::mutex> l(flush_mu_);
  const PendingFlush f{r, resp, std::chrono::steady_clock::now() + timeout};
  if (flushes_stopped_) {
    AnswerFlushLocked(f);
    return r;
  }
  // Waiting is a rare operator action: one thread of its own keeps gRPC's threads free.
  flushes_.push_back(f);
  if (!flush_thread_.joinable()) flush_thread_ = std::thread([this] { FlushWaitLoop(); });
  flush_cv_.notify_one();
  return r;
}

void AdminService::AnswerFlushLocked(const PendingFlush& f) {
  f.response->set_queue_depth(spool_->stats().queue_depth);
  f.response->set_complete(f.response->queue_depth() == 0);
  f.reactor->Finish(grpc::Status::OK);
}

void AdminService::FlushWaitLoop() {
  pthread_setname_np(pthread_self(), "tg-admin-flush");
  std::unique_lock<std::mutex> l(flush_mu_);
  while (!flushes_stopped_) {
    if (flushes_.empty()) {
      flush_cv_.wait(l);
      continue;
    }
    const bool drained = spool_->stats().queue_depth == 0;
    const auto now = std::chrono::steady_clock::now();
    auto done = [&](const PendingFlush& f) {
      if (!drained && now < f.deadline) return false;
      AnswerFlushLocked(f);
      return true;
    };
    flushes_.erase(std::remove_if(flushes_.begin(), flushes_.end(), done), flushes_.end());
    flush_cv_.wait_for(l, std::chrono::milliseconds(10));
  }
}

void AdminService::StopFlushes() {
  std::thread t;
  {
    std::lock_guard<std::mutex> l(flush_mu_);
    flushes_stopped_ = true;
    for (const PendingFlush& f : flushes_) AnswerFlushLocked(f);
    flushes_.clear();
    t = std::move(flush_thread_);
  }
  flush_cv_.notify_all();
  if (t.joinable()) t.join();
}

AdminService::~AdminService() { StopFlushes(); }

grpc::ServerUnaryReactor* AdminService::ListDeadLetters(grpc::CallbackServerContext* ctx,
                                                        const ListDeadLettersRequest* req,
                                                        ListDeadLettersResponse* resp) {
  auto* r = ctx->DefaultReactor();
  auto reader = spool_->NewReader();
  if (!reader.ok()) {
    r->Finish(Unavailable(reader.status()));
    return r;
  }
  std::vector<spool::DeadLetterRow> rows;
  const size_t limit = req->limit() ? std::min<uint32_t>(req->limit(), 10000) : 100;
  if (absl::Status s = (*reader)->ListDeadLetters(req->after_id(), limit, &rows); !s.ok()) {
    r->Finish(Unavailable(s));
    return r;
  }
  for (auto& row : rows) {
    DeadLetter* d = resp->add_dead_letters();
    d->set_id(row.id);
    d->set_event_id(row.event_id);
    d->set_session_id(row.session_id);
    d->set_http_status(row.http_status);
    d->set_code(row.code);
    d->set_message(row.message);
    d->set_created_at(MsToRfc3339(row.created_ms));
    d->set_event_json(std::move(row.body));
  }
  resp->set_total(spool_->stats().dead_letters);
  r->Finish(grpc::Status::OK);
  return r;
}

grpc::ServerUnaryReactor* AdminService::RetryDeadLetters(grpc::CallbackServerContext* ctx,
                                                         const RetryDeadLettersRequest* req,
                                                         RetryDeadLettersResponse* resp) {
  auto* r = ctx->DefaultReactor();
  spool_->RetryDeadLetters({req->ids().begin(), req->ids().end()}, [r, resp](uint64_t n) {
    resp->set_requeued(n);
    r->Finish(grpc::Status::OK);
  });
  return r;
}

grpc::ServerUnaryReactor* AdminService::PurgeDeadLetters(grpc::CallbackServerContext* ctx,
                                                         const PurgeDeadLettersRequest* req,
                                                         PurgeDeadLettersResponse* resp) {
  auto* r = ctx->DefaultReactor();
  spool_->PurgeDeadLetters({req->ids().begin(), req->ids().end()}, [r, resp](uint64_t n) {
    resp->set_purged(n);
    r->Finish(grpc::Status::OK);
  });
  return r;
}

grpc::ServerUnaryReactor* AdminService::ListSessions(grpc::CallbackServerContext* ctx,
                                                     const ListSessionsRequest* req,
                                                     ListSessionsResponse* resp) {
  auto* r = ctx->DefaultReactor();
  auto reader = spool_->NewReader();
  if (!reader.ok()) {
    r->Finish(Unavailable(reader.status()));
    return r;
  }
  std::vector<spool::SessionRow> rows;
  const size_t limit = req->limit() ? std::min<uint32_t>(req->limit(), 10000) : 100;
  if (absl::Status s = (*reader)->ListSessions(req->agent_id(), limit, &rows); !s.ok()) {
    r->Finish(Unavailable(s));
    return r;
  }
  for (auto& row : rows) {
    SessionInfo* s = resp->add_sessions();
    s->set_session_id(row.session_id);
    s->set_agent_id(row.agent_id);
    s->set_events(row.events);
    s->set_last_hash(row.last_hash);
    s->set_last_event_at(MsToRfc3339(row.updated_ms));
  }
  r->Finish(grpc::Status::OK);
  return r;
}

namespace {

// Streams one session's events a page of the spool at a time (Reader::ReadSessionPage), so
// that an export holds one page in memory however long the session. gRPC never runs two of a
// reactor's callbacks at once, but it runs them on different threads: mu_ also makes that
// hand-over visible to ThreadSanitizer (gRPC's own locks are not instrumented), which would
// otherwise report every event freed in OnDone.
class ExportWriter final : public grpc::ServerWriteReactor<StoredEvent> {
 public:
  // A call refused at once: `refused` is its status.
  explicit ExportWriter(grpc::Status refused) { Finish(std::move(refused)); }
  ExportWriter(std::unique_ptr<spool::Reader> reader, std::string session_id)
      : reader_(std::move(reader)), session_id_(std::move(session_id)) {
    std::lock_guard<std::mutex> l(mu_);
    Next();
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    Next();
  }
  void OnDone() override {
    { std::lock_guard<std::mutex> l(mu_); }  // orders the deletion after the last callback
    delete this;
  }

 private:
  // Requires mu_.
  void Next() {
    while (next_ == page_.size()) {
      if (end_) {
        Finish(grpc::Status::OK);
        return;
      }
      page_.clear();
      next_ = 0;
      if (absl::Status s = reader_->ReadSessionPage(session_id_, &after_, &page_, &end_); !s.ok()) {
        Finish(Unavailable(s));
        return;
      }
    }
    current_.set_seq(page_[next_].seq);
    current_.set_event_json(std::move(page_[next_].body));
    ++next_;
    StartWrite(&current_);
  }

  std::mutex mu_;
  std::unique_ptr<spool::Reader> reader_;  // guarded by mu_, as is everything below
  const std::string session_id_;
  uint64_t after_ = 0;
  bool end_ = false;
  std::vector<spool::StoredEvent> page_;
  size_t next_ = 0;
  StoredEvent current_;  // the message being written
};

}  // namespace

grpc::ServerWriteReactor<StoredEvent>* AdminService::ExportSession(
    grpc::CallbackServerContext* ctx, const ExportSessionRequest* req) {
  if (req->session_id().empty()) {
    return new ExportWriter(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "session_id: required"));
  }
  auto reader = spool_->NewReader();
  if (!reader.ok()) return new ExportWriter(Unavailable(reader.status()));
  return new ExportWriter(std::move(*reader), req->session_id());
}

// One Tail call. The spool's tap reaches it through tails_, not through the reactor: a tap
// still running when the call ends finds `reactor` null (set under `mu` in OnDone).
struct AdminService::TailState {
  std::string session_id, agent_id;  // filters (empty = any); set before the state is shared

  std::mutex mu;
  grpc::ServerWriteReactor<StoredEvent>* reactor = nullptr;  // guarded by mu
  std::deque<StoredEvent> queue;                             // guarded by mu
  StoredEvent current;  // the message being written; guarded by mu
  // `writing` also holds writes back until the initial metadata is sent.
  bool writing = false, finished = false;  // guarded by mu

  bool Wants(const spool::CommittedEvent& e) const {
    return (session_id.empty() || e.session_id == session_id) &&
           (agent_id.empty() || e.agent_id == agent_id);
  }
  // Requires mu.
  void WriteNextLocked() {
    if (reactor == nullptr || writing || finished || queue.empty()) return;
    current = std::move(queue.front());
    queue.pop_front();
    writing = true;
    reactor->StartWrite(&current);
  }
  // Requires mu.
  void FinishLocked(const grpc::Status& s) {
    if (reactor == nullptr || finished) return;
    finished = true;
    queue.clear();
    reactor->Finish(s);
  }
  // On the spool's writer thread: queues, never waits.
  void Push(const std::vector<spool::CommittedEvent>& events) {
    std::lock_guard<std::mutex> l(mu);
    if (finished) return;
    for (const auto& e : events) {
      if (!Wants(e)) continue;
      if (queue.size() >= kMaxTailQueue) {
        FinishLocked(grpc::Status(
            grpc::StatusCode::RESOURCE_EXHAUSTED,
            absl::StrCat("tail too slow: more than ", kMaxTailQueue, " events queued for it")));
        return;
      }
      StoredEvent& out = queue.emplace_back();
      out.set_seq(e.seq);
      out.set_event_json(e.body);
    }
    WriteNextLocked();
  }
};

class AdminService::TailReactor final : public grpc::ServerWriteReactor<StoredEvent> {
 public:
  TailReactor(AdminService* service, std::shared_ptr<TailState> state)
      : service_(service), state_(std::move(state)) {
    state_->reactor = this;
  }

  // Registers the tail, then sends the initial metadata: a client that has it knows that every
  // event committed from then on reaches it.
  void Start() {
    state_->writing = true;  // no write before the initial metadata
    {
      std::lock_guard<std::mutex> l(service_->tails_mu_);
      if (service_->tails_stopped_) {
        std::lock_guard<std::mutex> sl(state_->mu);
        state_->FinishLocked(
            grpc::Status(grpc::StatusCode::UNAVAILABLE, "toolgated is shutting down"));
        return;
      }
      service_->tails_.push_back(state_);
      service_->spool_->SetTapping(true);
    }
    std::lock_guard<std::mutex> l(state_->mu);
    if (!state_->finished) StartSendInitialMetadata();
  }

  void OnSendInitialMetadataDone(bool ok) override {
    std::lock_guard<std::mutex> l(state_->mu);
    state_->writing = false;
    if (!ok) {
      state_->FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    state_->WriteNextLocked();
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(state_->mu);
    state_->writing = false;
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
    service_->RemoveTail(state_);
    {
      std::lock_guard<std::mutex> l(state_->mu);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  AdminService* const service_;
  const std::shared_ptr<TailState> state_;
};

grpc::ServerWriteReactor<StoredEvent>* AdminService::Tail(grpc::CallbackServerContext* ctx,
                                                          const TailRequest* req) {
  // Tells the client, with the initial metadata, that the tail is registered.
  ctx->AddInitialMetadata(kTailReadyKey, "1");
  auto state = std::make_shared<TailState>();
  state->session_id = req->session_id();
  state->agent_id = req->agent_id();
  auto* reactor = new TailReactor(this, std::move(state));
  reactor->Start();
  return reactor;
}

void AdminService::OnCommitted(std::vector<spool::CommittedEvent> events) {
  std::lock_guard<std::mutex> l(tails_mu_);
  for (const auto& tail : tails_) tail->Push(events);
}

void AdminService::RemoveTail(const std::shared_ptr<TailState>& tail) {
  std::lock_guard<std::mutex> l(tails_mu_);
  tails_.erase(std::remove(tails_.begin(), tails_.end(), tail), tails_.end());
  if (tails_.empty()) spool_->SetTapping(false);
}

void AdminService::StopTails() {
  std::lock_guard<std::mutex> l(tails_mu_);
  tails_stopped_ = true;
  for (const auto& tail : tails_) {
    std::lock_guard<std::mutex> sl(tail->mu);
    tail->FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "toolgated is shutting down"));
  }
}

}  // namespace toolgate::app
