"""Approvals end to end: Check → REQUIRE_APPROVAL → a waiting agent → a human decides."""
import hashlib
import json
import queue
import threading
import time

import grpc
import pytest

from conftest import wait_until
from toolgate.v1 import policy_pb2, policy_pb2_grpc

POLICY = """
revision: "g1"
default: allow
rules:
  - id: big-payment
    effect: require_approval
    reason: payment over 1000
    approval_timeout: 10m
    match:
      tool_name: send_payment
      arguments:
        - {pointer: /amount, ">": 1000}
  - id: quick-expiry
    effect: require_approval
    reason: needs a human, fast
    approval_timeout: 1s
    on_timeout: deny
    match:
      tool_name: wire_transfer
"""


@pytest.fixture
def daemon(make_daemon, tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return make_daemon(args=["--set", f"policy.file={p}"]).start()


ARG_MARKER = "raw-argument-marker-7f3e9a"


def ask(d, tool, amount=5000, session="s-g"):
    stub = policy_pb2_grpc.PolicyStub(d.channel())
    return stub.Check(policy_pb2.CheckRequest(action=policy_pb2.Action(
        agent_id="pay-agent", session_id=session, tool_name=tool,
        arguments_json=json.dumps({"amount": amount, "memo": ARG_MARKER}))), timeout=10)


def waiter(d, pending_id, out, heartbeat_ms=100):
    """Streams WaitForDecision in a thread; records every update and when it arrived."""
    def run():
        stub = policy_pb2_grpc.PolicyStub(d.channel())
        try:
            for u in stub.WaitForDecision(policy_pb2.WaitRequest(
                    pending_action_id=pending_id, heartbeat_ms=heartbeat_ms), timeout=60):
                out.append((time.monotonic(), u))
        except grpc.RpcError as e:
            out.append((time.monotonic(), e))
    t = threading.Thread(target=run)
    t.start()
    return t


def test_approve_wakes_the_waiting_agent_at_once(daemon):
    r = ask(daemon, "send_payment")
    assert r.decision == policy_pb2.REQUIRE_APPROVAL and r.pending_action_id and r.expires_at
    updates = []
    t = waiter(daemon, r.pending_action_id, updates)
    wait_until(lambda: len(updates) >= 3, what="heartbeats while pending")
    assert all(u.heartbeat and u.status == policy_pb2.PENDING for _, u in updates)
    listed = json.loads(daemon.cli("--output", "json", "pending").stdout)["actions"]
    assert [a["id"] for a in listed] == [r.pending_action_id]
    assert listed[0]["rule_id"] == "big-payment"
    assert ARG_MARKER not in json.dumps(listed)  # the arguments are not kept, only their hash
    # SHA-256 of the canonical arguments (RFC 8785: here, sorted keys and no spaces).
    assert listed[0]["arguments_hash"] == hashlib.sha256(json.dumps(
        {"amount": 5000, "memo": ARG_MARKER}, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    for f in daemon.data_dir.iterdir():
        assert ARG_MARKER.encode() not in f.read_bytes(), f
    decided_at = time.monotonic()
    out = daemon.cli("approve", r.pending_action_id, "--reason", "invoice checked",
                     "--approver", "alice")
    assert "approved by alice" in out.stdout
    t.join(timeout=10)
    when, final = updates[-1]
    assert final.status == policy_pb2.APPROVED and final.decision == policy_pb2.ALLOW
    assert final.approver_id == "alice" and final.reason == "invoice checked"
    assert when - decided_at < 1.0, "the decision is pushed, not polled"
    # The decision is an approval event in the session's chain.
    wait_until(lambda: any(json.loads(l)["payload"].get("pendingActionId") == r.pending_action_id
                           for l in daemon.cli("export", "s-g").stdout.splitlines()),
               what="decision event")
    events = [json.loads(l) for l in daemon.cli("export", "s-g").stdout.splitlines()]
    decision = [e for e in events if e["payload"].get("pendingActionId") == r.pending_action_id]
    assert decision[0]["category"] == "approval"
    assert decision[0]["payload"]["approverId"] == "alice"
    assert decision[0]["payload"]["decision"] == "approved"
    # Deciding again is refused.
    again = daemon.cli("reject", r.pending_action_id, "--reason", "no", check=False)
    assert again.returncode == 1 and "already approved by alice" in again.stderr


def test_reject_needs_a_reason_and_denies(daemon):
    r = ask(daemon, "send_payment")
    assert daemon.cli("reject", r.pending_action_id, check=False).returncode == 2
    updates = []
    t = waiter(daemon, r.pending_action_id, updates)
    daemon.cli("reject", r.pending_action_id, "--reason", "unknown payee", "--approver", "bob")
    t.join(timeout=10)
    final = updates[-1][1]
    assert final.status == policy_pb2.REJECTED and final.decision == policy_pb2.DENY
    assert final.reason == "unknown payee"


def test_timeout_denies_and_is_recorded_as_expired_never_approved(daemon):
    r = ask(daemon, "wire_transfer")
    updates = []
    t = waiter(daemon, r.pending_action_id, updates)
    t.join(timeout=15)
    final = updates[-1][1]
    assert final.status == policy_pb2.EXPIRED and final.decision == policy_pb2.DENY
    expired = json.loads(daemon.cli("--output", "json", "pending", "--status", "expired").stdout)
    assert [a["id"] for a in expired["actions"]] == [r.pending_action_id]
    assert daemon.cli("approve", r.pending_action_id, check=False).returncode == 1


def test_pending_action_survives_a_restart_and_a_reconnecting_agent_gets_its_decision(daemon):
    r = ask(daemon, "send_payment", session="s-restart")
    daemon.stop()
    daemon.start()
    pending = json.loads(daemon.cli("--output", "json", "pending").stdout)["actions"]
    assert [a["id"] for a in pending] == [r.pending_action_id]
    updates = []
    t = waiter(daemon, r.pending_action_id, updates)
    wait_until(lambda: len(updates) >= 1, what="the agent waits again")
    daemon.cli("approve", r.pending_action_id, "--approver", "dave")
    t.join(timeout=10)
    assert updates[-1][1].status == policy_pb2.APPROVED
    # An agent that only comes back after the decision gets it at once.
    late = []
    waiter(daemon, r.pending_action_id, late).join(timeout=10)
    assert len(late) == 1 and late[0][1].status == policy_pb2.APPROVED


def test_unknown_pending_action(daemon):
    out = []
    waiter(daemon, "00000000-0000-4000-8000-000000000000", out).join(timeout=10)
    assert isinstance(out[-1][1], grpc.RpcError)
    assert out[-1][1].code() == grpc.StatusCode.NOT_FOUND


def test_local_http_endpoints_need_the_admin_key(make_daemon, tmp_path):
    import urllib.error
    import urllib.request

    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    key = "local-admin-key-0123456789"
    d = make_daemon(args=["--set", f"policy.file={p}"], env={"TOOLGATE_ADMIN_KEY": key}).start()
    r = ask(d, "send_payment")
    base = d.http_address + "/v1/guardian/pending-actions"

    def call(path="", body=None, auth=key):
        req = urllib.request.Request(base + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None)
        if auth:
            req.add_header("Authorization", "Bearer " + auth)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert call(auth=None)[0] == 401
    status, body = call(auth="wrong")
    assert status == 401 and body["error"]["code"] == "AUTHENTICATION_FAILED"
    status, body = call()
    assert status == 200 and body["nextCursor"] is None
    assert [a["id"] for a in body["pendingActions"]] == [r.pending_action_id]
    assert body["pendingActions"][0]["status"] == "pending"
    decide = f"/{r.pending_action_id}/decide"
    assert call(decide, {"decision": "maybe", "approverId": "x"})[0] == 400
    assert call(decide, {"decision": "rejected", "approverId": "x"})[0] == 400  # no reason
    updates = []
    t = waiter(d, r.pending_action_id, updates)
    status, body = call(decide, {"decision": "approved", "reason": "ok", "approverId": "erin"})
    assert status == 200 and body["pendingAction"]["status"] == "approved"
    t.join(timeout=10)
    assert updates[-1][1].status == policy_pb2.APPROVED and updates[-1][1].approver_id == "erin"
    status, body = call(decide, {"decision": "approved", "approverId": "erin"})
    assert status == 409 and body["error"]["code"] == "CONFLICT"
    assert call("/nope/decide", {"decision": "approved", "approverId": "x"})[0] == 404
    assert key not in d.logs()


def test_local_http_endpoints_are_off_without_an_admin_key(daemon):
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(daemon.http_address + "/v1/guardian/pending-actions", timeout=10)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_an_abandoned_wait_ends_at_once_and_does_not_hold_shutdown(daemon):
    r = ask(daemon, "send_payment")
    stub = policy_pb2_grpc.PolicyStub(daemon.channel())
    with pytest.raises(grpc.RpcError) as e:
        for _ in stub.WaitForDecision(policy_pb2.WaitRequest(
                pending_action_id=r.pending_action_id, heartbeat_ms=60000), timeout=0.3):
            pass
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    started = time.monotonic()
    daemon.stop()
    # Without a cancel handler the call lingered until its next heartbeat (60 s here).
    assert time.monotonic() - started < 5
    stopped = [json.loads(l) for l in daemon.logs().splitlines() if '"stopped"' in l]
    assert stopped and stopped[-1]["drain_ms"] < 3000


def test_sigterm_ends_idle_streams_waits_and_watches_at_once(daemon):
    """Long-lived calls (an idle event stream, a wait, a watch) must not hold the drain."""
    from toolgate.v1 import events_pb2, events_pb2_grpc, guardian_pb2, guardian_pb2_grpc
    from conftest import tool_event
    r = ask(daemon, "send_payment")
    channel = grpc.insecure_channel("unix:" + str(daemon.socket))  # not closed by stop()
    outcomes = {}

    def run(name, call):
        try:
            for _ in call():
                pass
            outcomes[name] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            outcomes[name] = e.code()

    requests = queue.Queue()
    requests.put(events_pb2.StreamRequest(sequence=1, events=[tool_event()]))
    acks = []

    def stream():
        def gen():
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item
        for ack in events_pb2_grpc.EventsStub(channel).Stream(gen(), timeout=60):
            acks.append(ack)
            yield ack

    calls = {
        "stream": stream,
        "wait": lambda: policy_pb2_grpc.PolicyStub(channel).WaitForDecision(
            policy_pb2.WaitRequest(pending_action_id=r.pending_action_id, heartbeat_ms=60000),
            timeout=60),
        "watch": lambda: guardian_pb2_grpc.GuardianStub(channel).WatchPending(
            guardian_pb2.WatchPendingRequest(), timeout=60),
    }
    threads = [threading.Thread(target=run, args=(n, c), daemon=True) for n, c in calls.items()]
    for t in threads:
        t.start()
    wait_until(lambda: len(acks) == 1, what="the stream's first ack")
    time.sleep(0.3)  # the wait and the watch are open
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5
    for t in threads:
        t.join(timeout=10)
    requests.put(None)
    assert outcomes == {"stream": grpc.StatusCode.UNAVAILABLE,
                        "wait": grpc.StatusCode.UNAVAILABLE,
                        "watch": grpc.StatusCode.UNAVAILABLE}, outcomes
    assert acks[0].code == 0 and len(acks[0].event_ids) == 1
    stopped = [json.loads(l) for l in daemon.logs().splitlines() if '"stopped"' in l]
    assert stopped and stopped[-1]["drain_ms"] < 3000
    channel.close()
