// example_agent: a tiny agent that records its session with toolgate and runs its one tool
// (send_invoice) only when the policy allows it.
//
//   example_agent [ADDRESS [SESSION_ID]]
//
// ADDRESS is unix:PATH or HOST:PORT (default: $TOOLGATE_ADDRESS, else the daemon's default
// socket). Exit code 0 when the invoice was sent and every event acknowledged, 1 otherwise.
// The part between the readme markers is the "Use it from C++" section of README.md, checked
// by client/tests/readme_test.cc; client/tests/daemon_test.cc runs this program.
#include <iostream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "toolgate/client.h"
#include "toolgate/guarded_call.h"

namespace {

// The agent's real tool would call a billing API here.
absl::StatusOr<std::string> SendInvoice(const std::string& customer, double amount) {
  return absl::StrCat("invoice for ", customer, ": ", amount);
}

}  // namespace

int main(int argc, char** argv) {
  // [START readme]
  toolgate::ClientOptions options;
  options.address = argc > 1 ? argv[1] : "";  // "" = $TOOLGATE_ADDRESS or the default socket
  options.agent_id = "billing-agent";
  options.session_id = argc > 2 ? argv[2] : "run-42";
  absl::StatusOr<std::unique_ptr<toolgate::Client>> client = toolgate::Client::Create(options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  // Returns at once: events wait in a bounded buffer and go out on a background stream. Its
  // error says the event was invalid or dropped (buffer full; counted in stats().dropped).
  (*client)->Record(toolgate::SessionStart{}).IgnoreError();

  toolgate::Action action;
  action.tool_name = "send_invoice";
  action.arguments_json = R"({"customer": "c-19", "amount": 120.5})";
  // Policy.Check (and a human's approval when the policy asks for one), then the tool, then a
  // tool_call event with its outcome and duration.
  absl::StatusOr<std::string> invoice =
      toolgate::GuardedCall(**client, action, [] { return SendInvoice("c-19", 120.5); });
  if (invoice.ok()) {
    std::cout << *invoice << "\n";
  } else {
    std::cerr << invoice.status() << "\n";  // PERMISSION_DENIED: toolgate: … and the reason
  }

  (*client)->Record(toolgate::SessionEnd{}).IgnoreError();
  absl::Status closed = (*client)->Close(absl::Now() + absl::Seconds(5));  // flushes
  toolgate::ClientStats stats = (*client)->stats();
  std::cout << "recorded " << stats.recorded << ", acknowledged " << stats.acked << ", dropped "
            << stats.dropped << "\n";
  // [END readme]
  return invoice.ok() && closed.ok() ? 0 : 1;
}
