#include "toolgate/client.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/lib/convert.h"
#include "client/lib/event_streamer.h"
#include "client/lib/ids.h"
#include "toolgate/v1/events.pb.h"
#include "toolgate/v1/policy.grpc.pb.h"

namespace toolgate {
namespace {

using client_internal::EventStreamer;

// The daemon's default places (daemon/config: DefaultSocketPath), probed for a socket we may
// write to, as the toolgate CLI does.
std::string DefaultAddress() {
  if (const char* a = std::getenv("TOOLGATE_ADDRESS"); a != nullptr && *a != '\0') return a;
  std::vector<std::string> candidates;
  if (const char* r = std::getenv("RUNTIME_DIRECTORY"); r != nullptr && *r != '\0') {
    std::string dir(r);
    candidates.push_back(dir.substr(0, dir.find(':')) + "/toolgate.sock");
  }
  candidates.push_back("/run/toolgate/toolgate.sock");
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0') {
    candidates.push_back(std::string(x) + "/toolgate/toolgate.sock");
  }
  candidates.push_back("/tmp/toolgate-" + std::to_string(::getuid()) + "/toolgate.sock");
  for (const auto& c : candidates) {
    if (::access(c.c_str(), W_OK) == 0) return "unix:" + c;
  }
  return "127.0.0.1:7470";
}

absl::Status FromGrpc(const grpc::Status& s, const char* method) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(method, ": ", s.error_message()));
}

std::chrono::system_clock::time_point ToDeadline(absl::Time t) { return absl::ToChronoTime(t); }

absl::Status Validate(const ClientOptions& o) {
  auto bad = [](const char* field, const char* rule) {
    return absl::InvalidArgumentError(absl::StrCat("ClientOptions.", field, ": ", rule));
  };
  if (o.max_buffered_events == 0) return bad("max_buffered_events", "must be > 0");
  if (o.max_buffered_bytes == 0) return bad("max_buffered_bytes", "must be > 0");
  if (o.max_batch_events == 0) return bad("max_batch_events", "must be > 0");
  if (o.max_batch_bytes == 0) return bad("max_batch_bytes", "must be > 0");
  if (o.max_in_flight_batches == 0) return bad("max_in_flight_batches", "must be > 0");
  if (o.batch_delay < absl::ZeroDuration()) return bad("batch_delay", "must be >= 0");
  if (o.backoff_initial <= absl::ZeroDuration() || o.backoff_max < o.backoff_initial) {
    return bad("backoff_initial", "must be > 0 and <= backoff_max");
  }
  if (o.check_timeout <= absl::ZeroDuration()) return bad("check_timeout", "must be > 0");
  if (o.close_timeout < absl::ZeroDuration()) return bad("close_timeout", "must be >= 0");
  return absl::OkStatus();
}

}  // namespace

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Policy::Stub> policy;
  std::unique_ptr<EventStreamer> events;
};

std::string NewEventId() { return client_internal::NewUuidV4(); }

std::string Verdict::Explain() const {
  std::string rule = check.rule_id.empty() ? "" : absl::StrCat(" by rule ", check.rule_id);
  if (failed_open) return "allowed without an answer from toolgated (fail_open)";
  if (approval.has_value()) {
    const ApprovalResult& a = *approval;
    const std::string by = a.approver_id.empty() ? "" : absl::StrCat(" by ", a.approver_id);
    const std::string why = a.reason.empty() ? "" : absl::StrCat(": ", a.reason);
    const std::string held = absl::StrCat(" (held", rule, ": ", check.reason, ")");
    switch (a.status) {
      case ApprovalStatus::kApproved:
        return absl::StrCat("approved", by, why, held);
      case ApprovalStatus::kRejected:
        return absl::StrCat("rejected", by, why, held);
      case ApprovalStatus::kExpired:
        return absl::StrCat("approval expired, ", a.allowed ? "allowed" : "denied",
                            " by the rule's on_timeout", held);
      case ApprovalStatus::kPending:
        return absl::StrCat("approval pending", held);
    }
  }
  switch (check.decision) {
    case Decision::kAllow:
      return absl::StrCat("allowed", rule, ": ", check.reason);
    case Decision::kDeny:
      return absl::StrCat("denied", rule, ": ", check.reason);
    case Decision::kRequireApproval:
      return absl::StrCat("approval required", rule, ": ", check.reason);
    case Decision::kUnspecified:
      break;
  }
  return "no decision";
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (absl::Status s = Validate(options); !s.ok()) return s;
  if (options.address.empty()) options.address = DefaultAddress();
  grpc::ChannelArguments args;
  // gRPC's own reconnection backoff (default up to 120 s) would make our stream wait long after
  // a daemon restart; it follows ours instead.
  const int initial_ms = static_cast<int>(absl::ToInt64Milliseconds(options.backoff_initial));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::max(initial_ms, 1));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::max(initial_ms, 1));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              std::max(static_cast<int>(absl::ToInt64Milliseconds(options.backoff_max)), 1));
  auto impl = std::make_unique<Impl>();
  impl->channel =
      grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), args);
  if (impl->channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.address: cannot use '", options.address, "'"));
  }
  impl->policy = v1::Policy::NewStub(impl->channel);
  impl->options = std::move(options);
  impl->events = std::make_unique<EventStreamer>(impl->channel, impl->options);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() { (void)Close(absl::Now() + impl_->options.close_timeout); }

absl::Status Client::Record(Event event, std::string* event_id) {
  if (event.agent_id.empty()) event.agent_id = impl_->options.agent_id;
  if (event.session_id.empty()) event.session_id = impl_->options.session_id;
  if (event.agent_id.empty()) {
    return absl::InvalidArgumentError(
        "event.agent_id: required (on the event or in ClientOptions.agent_id)");
  }
  if (event.session_id.empty()) {
    return absl::InvalidArgumentError(
        "event.session_id: required (on the event or in ClientOptions.session_id)");
  }
  // Stamped now, so that a resend after a reconnect is the same event.
  if (event.event_id.empty()) event.event_id = client_internal::NewUuidV4();
  if (event.source_timestamp.empty()) {
    event.source_timestamp = client_internal::FormatRfc3339(absl::Now());
  }
  if (event_id != nullptr) *event_id = event.event_id;
  v1::Event proto;
  client_internal::ToProto(std::move(event), &proto);
  const size_t bytes = proto.ByteSizeLong();
  return impl_->events->Add(std::move(proto), bytes);
}

absl::Status Client::Flush(absl::Time deadline) { return impl_->events->Flush(deadline); }

absl::Status Client::Close(absl::Time deadline) { return impl_->events->Close(deadline); }

ClientStats Client::stats() const {
  ClientStats s;
  impl_->events->Stats(&s);
  return s;
}

const ClientOptions& Client::options() const { return impl_->options; }

absl::StatusOr<CheckResult> Client::Check(const Action& action) {
  v1::CheckRequest request;
  client_internal::ToProto(action, request.mutable_action());
  auto* a = request.mutable_action();
  if (a->agent_id().empty()) a->set_agent_id(impl_->options.agent_id);
  if (a->session_id().empty()) a->set_session_id(impl_->options.session_id);
  grpc::ClientContext context;
  context.set_deadline(ToDeadline(absl::Now() + impl_->options.check_timeout));
  context.set_wait_for_ready(true);  // a sidecar starting after the agent: wait for it
  v1::CheckResponse response;
  const grpc::Status s = impl_->policy->Check(&context, request, &response);
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
      impl_->channel->GetState(false) != GRPC_CHANNEL_READY) {
    return absl::UnavailableError(absl::StrCat("Policy.Check: toolgated not reachable at ",
                                               impl_->options.address, " within ",
                                               absl::FormatDuration(impl_->options.check_timeout)));
  }
  if (!s.ok()) return FromGrpc(s, "Policy.Check");
  return client_internal::FromProto(response);
}

absl::StatusOr<ApprovalResult> Client::WaitForDecision(std::string_view pending_action_id,
                                                       absl::Time deadline) {
  if (pending_action_id.empty()) {
    return absl::InvalidArgumentError("pending_action_id: required");
  }
  absl::Duration backoff = impl_->options.backoff_initial;
  while (true) {
    grpc::ClientContext context;
    if (deadline != absl::InfiniteFuture()) context.set_deadline(ToDeadline(deadline));
    context.set_wait_for_ready(true);
    v1::WaitRequest request;
    request.set_pending_action_id(std::string(pending_action_id));
    std::unique_ptr<grpc::ClientReader<v1::WaitUpdate>> reader =
        impl_->policy->WaitForDecision(&context, request);
    v1::WaitUpdate update;
    std::optional<v1::WaitUpdate> decided;
    while (reader->Read(&update)) {
      if (!update.heartbeat() && update.status() != v1::PENDING) decided = update;
    }
    const grpc::Status s = reader->Finish();
    if (decided.has_value()) return client_internal::FromProto(*decided);
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("Policy.WaitForDecision: no decision on ",
                                                      std::string(pending_action_id),
                                                      " by the deadline"));
    }
    // The daemon went away (a restart) or ended the stream early: the action is still pending
    // in its store, so wait again.
    if (!s.ok() && s.error_code() != grpc::StatusCode::UNAVAILABLE &&
        s.error_code() != grpc::StatusCode::CANCELLED) {
      return FromGrpc(s, "Policy.WaitForDecision");
    }
    const absl::Duration pause = std::min(backoff, deadline - absl::Now());
    if (pause > absl::ZeroDuration()) absl::SleepFor(pause);
    backoff = std::min(backoff * 2, impl_->options.backoff_max);
  }
}

absl::StatusOr<Verdict> Client::Authorize(const Action& action, absl::Time approval_deadline) {
  absl::StatusOr<CheckResult> check = Check(action);
  if (!check.ok()) return check.status();
  Verdict v;
  v.check = *std::move(check);
  switch (v.check.decision) {
    case Decision::kAllow:
      v.allowed = true;
      return v;
    case Decision::kRequireApproval: {
      if (v.check.pending_action_id.empty()) {
        return absl::InternalError("Policy.Check: REQUIRE_APPROVAL without a pending_action_id");
      }
      absl::StatusOr<ApprovalResult> a =
          WaitForDecision(v.check.pending_action_id, approval_deadline);
      if (!a.ok()) return a.status();
      v.approval = *std::move(a);
      v.allowed = v.approval->allowed;
      return v;
    }
    case Decision::kDeny:
    case Decision::kUnspecified:
      v.allowed = false;
      return v;
  }
  return v;
}

}  // namespace toolgate
