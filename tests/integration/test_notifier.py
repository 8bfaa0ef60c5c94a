"""Webhooks with the real daemon: outbound agent execution webhooks reach a local receiver,
signed, retried and durable; inbound upstream webhooks are verified before they decide."""
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from conftest import wait_until
from toolgate.v1 import events_pb2, policy_pb2, policy_pb2_grpc

SECRET = "whsec_integration_5f1e0c"
INBOUND_SECRET = "kaplaix_channel_secret_77a1"

ARG_MARKER = "raw-argument-marker-41c9d2"

POLICY = """
revision: "n1"
default: allow
rules:
  - id: big-payment
    effect: require_approval
    reason: payment over 1000
    approval_timeout: 10m
    match:
      tool_name: send_payment
"""


class Receiver:
    """A webhook receiver on a free loopback port; can go away and come back on the same port."""

    def __init__(self, port=0, status=200):
        self.port = port
        self.status = status
        self.requests = []  # (headers with lower-case names, body bytes)
        self.lock = threading.Lock()
        self.server = None

    def start(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = outer.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hook"

    def got(self):
        with self.lock:
            return list(self.requests)


def free_port():
    r = Receiver().start()
    port = r.port
    r.stop()
    return port


def secret_file(tmp_path, name, value):
    p = tmp_path / name
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return p


def config(tmp_path, url, retry_delays="10s,40s,90s", inbound=False, policy=True):
    text = f"""
notifier:
  endpoints:
    - url: {url}
      secret_file: {secret_file(tmp_path, "webhook.secret", SECRET)}
  retry_delays: "{retry_delays}"
"""
    if inbound:
        text += f"  inbound_secret_file: {secret_file(tmp_path, 'inbound.secret', INBOUND_SECRET)}\n"
    if policy:
        p = tmp_path / "policy.yaml"
        p.write_text(POLICY)
        text += f"policy:\n  file: {p}\n"
    return text


def metric(d, name):
    text = urllib.request.urlopen(d.http_address + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def event(session, agent="agent-1", **kind):
    ev = events_pb2.Event(agent_id=agent, session_id=session)
    for k, v in kind.items():
        getattr(ev, k).CopyFrom(v)
    return ev


def start(session, agent="agent-1"):
    return event(session, agent, session_start=events_pb2.SessionStart())


def end(session, agent="agent-1", failed=False, message="", error_type=""):
    outcome = events_pb2.SessionEnd.FAILED if failed else events_pb2.SessionEnd.COMPLETED
    return event(session, agent, session_end=events_pb2.SessionEnd(
        outcome=outcome, error_message=message, error_type=error_type))


def check_signed(headers, body):
    assert headers["content-type"] == "application/json"
    want = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-webhook-signature"] == want
    payload = json.loads(body)
    assert headers["x-webhook-event"] == payload["event"]
    uuid.UUID(headers["x-idempotency-key"])
    return payload


def ask_payment(d, session="s-pay"):
    stub = policy_pb2_grpc.PolicyStub(d.channel())
    return stub.Check(policy_pb2.CheckRequest(action=policy_pb2.Action(
        agent_id="agent-1", session_id=session, tool_name="send_payment",
        arguments_json=json.dumps({"amount": 5000, "memo": ARG_MARKER}))), timeout=10)


# --- outbound ---------------------------------------------------------------------------------

def test_lifecycle_webhooks_reach_the_receiver_signed(make_daemon, tmp_path):
    rx = Receiver().start()
    try:
        d = make_daemon(config=config(tmp_path, rx.url)).start()
        ident = event("s-ok", identity=events_pb2.Identity(agent_name="Billing Agent"))
        tool = event("s-ok", tool_call=events_pb2.ToolCall(tool_name="search",
                                                           arguments_json='{"q": 1}'))
        d.events().Record(events_pb2.RecordRequest(events=[ident, start("s-ok"), tool]),
                          timeout=10)
        d.events().Record(events_pb2.RecordRequest(events=[end("s-ok")]), timeout=10)
        d.events().Record(events_pb2.RecordRequest(events=[
            start("s-bad"), end("s-bad", failed=True, message="tool crashed",
                                error_type="RuntimeError")]), timeout=10)
        r = ask_payment(d, session="s-ok")
        assert r.decision == policy_pb2.REQUIRE_APPROVAL
        wait_until(lambda: len(rx.got()) >= 5, what="five webhooks")

        by_key = {}
        keys = set()
        for headers, body in rx.got():
            p = check_signed(headers, body)
            keys.add(headers["x-idempotency-key"])
            by_key[(p["event"], p["agent_execution"]["id"])] = p
        assert len(keys) == 5  # one key per delivery
        assert set(by_key) == {
            ("agent_execution_started", "s-ok"), ("agent_execution_ended", "s-ok"),
            ("agent_execution_started", "s-bad"), ("agent_execution_failed", "s-bad"),
            ("agent_execution_handoff", "s-ok")}

        started = by_key[("agent_execution_started", "s-ok")]
        assert started["agent_execution"]["status"] == "started"
        assert started["agent_execution"]["ended_at"] is None
        assert started["agent_execution"]["agent_id"] == "agent-1"
        assert started["agent"] == {"id": "agent-1", "name": "Billing Agent"}
        ended = by_key[("agent_execution_ended", "s-ok")]
        assert ended["agent_execution"]["status"] == "completed"
        assert ended["agent_execution"]["started_at"] == started["agent_execution"]["started_at"]
        assert ended["agent_execution"]["ended_at"] >= ended["agent_execution"]["started_at"]
        failed = by_key[("agent_execution_failed", "s-bad")]
        assert failed["agent_execution"]["status"] == "failed"
        assert failed["failure"]["error"] == {"message": "tool crashed", "type": "RuntimeError"}
        assert failed["failure"]["failed_at"] == failed["agent_execution"]["ended_at"]
        handoff = by_key[("agent_execution_handoff", "s-ok")]
        assert handoff["agent_execution"]["status"] == "handoff"
        assert handoff["handoff"]["node_name"] == "send_payment"
        assert handoff["handoff"]["handoff_reason"] == "payment over 1000"
        assert handoff["handoff"]["pending_action_id"] == r.pending_action_id
        assert handoff["handoff"]["handoff_datetime"]
        for _, body in rx.got():
            assert ARG_MARKER.encode() not in body  # arguments never leave in a webhook

        wait_until(lambda: metric(d, "toolgate_webhooks_delivered_total") == 5,
                   what="delivered metric")
        assert metric(d, "toolgate_webhooks_pending") == 0
        assert SECRET not in d.logs()
    finally:
        rx.stop()


def test_endpoint_event_filter(make_daemon, tmp_path):
    rx = Receiver().start()
    try:
        text = config(tmp_path, rx.url).replace(
            f"      secret_file:", "      events: [agent_execution_failed]\n      secret_file:")
        d = make_daemon(config=text).start()
        # Through Events.Stream this time: webhooks follow the acknowledged batches too.
        acks = list(d.events().Stream(iter([events_pb2.StreamRequest(sequence=7, events=[
            start("f1"), end("f1"), start("f2"), end("f2", failed=True, message="x")])]),
            timeout=10))
        assert [(a.sequence, a.code) for a in acks] == [(7, 0)]
        wait_until(lambda: len(rx.got()) >= 1, what="the failed webhook")
        wait_until(lambda: metric(d, "toolgate_webhooks_pending") == 0, what="nothing pending")
        events = [json.loads(b)["event"] for _, b in rx.got()]
        assert events == ["agent_execution_failed"]
    finally:
        rx.stop()


def test_receiver_down_is_retried_with_the_same_key(make_daemon, tmp_path):
    rx = Receiver(status=503).start()
    port = rx.port
    d = make_daemon(config=config(tmp_path, rx.url, retry_delays="2s,2s,2s,2s")).start()
    d.events().Record(events_pb2.RecordRequest(events=[start("s-retry")]), timeout=10)
    wait_until(lambda: len(rx.got()) == 1, what="the first attempt")
    rx.stop()  # answered 503 once; now the receiver is gone: connections are refused
    first_headers, first_body = rx.got()[0]
    wait_until(lambda: (metric(d, "toolgate_webhooks_retried_total") or 0) >= 2,
               what="a retry against the dead receiver")
    assert metric(d, "toolgate_webhooks_delivered_total") == 0
    assert metric(d, "toolgate_webhooks_pending") == 1
    back = Receiver(port=port).start()  # back, on the same URL
    try:
        wait_until(lambda: metric(d, "toolgate_webhooks_delivered_total") == 1, timeout=20,
                   what="delivery once the receiver is back")
        got = back.got()
        assert len(got) == 1
        headers, body = got[0]
        assert headers["x-idempotency-key"] == first_headers["x-idempotency-key"]
        assert body == first_body
        check_signed(headers, body)
        assert metric(d, "toolgate_webhooks_pending") == 0
        assert metric(d, "toolgate_webhooks_failed_total") == 0
    finally:
        back.stop()


def test_gives_up_after_the_last_retry(make_daemon, tmp_path):
    rx = Receiver(status=500).start()
    try:
        d = make_daemon(config=config(tmp_path, rx.url, retry_delays="200ms,200ms")).start()
        d.events().Record(events_pb2.RecordRequest(events=[start("s-dead")]), timeout=10)
        wait_until(lambda: metric(d, "toolgate_webhooks_failed_total") == 1, what="dead")
        assert len(rx.got()) == 3  # the attempt and two retries
        assert metric(d, "toolgate_webhooks_retried_total") == 2
        assert metric(d, "toolgate_webhooks_pending") == 0
        assert "delivery failed for good" in d.logs()
    finally:
        rx.stop()


def test_pending_delivery_survives_a_crash(make_daemon, tmp_path):
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}/hook"
    d = make_daemon(config=config(tmp_path, url, retry_delays="1s,1s,1s")).start()
    d.events().Record(events_pb2.RecordRequest(events=[start("s-crash")]), timeout=10)
    wait_until(lambda: (metric(d, "toolgate_webhooks_retried_total") or 0) >= 1,
               what="a failed first attempt")
    d.kill9()
    rx = Receiver(port=port).start()
    try:
        d.start()
        wait_until(lambda: len(rx.got()) >= 1, timeout=20, what="delivery after the restart")
        wait_until(lambda: metric(d, "toolgate_webhooks_delivered_total") == 1,
                   what="delivered metric")
        headers, body = rx.got()[0]
        payload = check_signed(headers, body)
        assert payload["event"] == "agent_execution_started"
        assert payload["agent_execution"]["id"] == "s-crash"
        assert len(rx.got()) == 1
        assert metric(d, "toolgate_webhooks_pending") == 0
        assert "notifier: deliveries restored" in d.logs()
    finally:
        rx.stop()


# --- inbound ----------------------------------------------------------------------------------

def post_inbound(d, body, header=None):
    req = urllib.request.Request(d.http_address + "/v1/webhooks/kaplaix", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    if header is not None:
        req.add_header("x-kaplaix-signature", header)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def sign(body, t=None, secret=INBOUND_SECRET):
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def decision_body(pending_id, decision="approved"):
    return json.dumps({"type": "guardian.decision", "pendingActionId": pending_id,
                       "decision": decision, "reason": "checked by the upstream",
                       "approverId": "upstream-alice"}).encode()


def pending_status(d, pending_id):
    out = json.loads(d.cli("--output", "json", "pending", "--status", "pending").stdout)
    return "pending" if pending_id in [a["id"] for a in out.get("actions", [])] else "decided"


@pytest.fixture
def inbound_daemon(make_daemon, tmp_path):
    rx = Receiver().start()
    d = make_daemon(config=config(tmp_path, rx.url, inbound=True)).start()
    yield d
    rx.stop()


def test_inbound_bad_signatures_are_refused_and_change_nothing(inbound_daemon):
    d = inbound_daemon
    r = ask_payment(d)
    assert r.decision == policy_pb2.REQUIRE_APPROVAL
    body = decision_body(r.pending_action_id)
    now = int(time.time())
    cases = {
        "missing header": None,
        "empty header": "",
        "wrong secret": sign(body, secret="not-the-channel-secret"),
        "stale timestamp": sign(body, t=now - 301),
        "future timestamp": sign(body, t=now + 301),
        "body changed": sign(body + b" "),
        "no v1": f"t={now}",
        "no t": sign(body).split(",")[1],
        "malformed": "garbage",
    }
    for name, header in cases.items():
        status, answer = post_inbound(d, body, header)
        assert status == 401, name
        assert answer["error"]["code"] == "AUTHENTICATION_FAILED", name
    assert pending_status(d, r.pending_action_id) == "pending"
    assert metric(d, "toolgate_inbound_webhooks_rejected_total") == len(cases)
    assert metric(d, "toolgate_inbound_webhooks_decisions_total") == 0


def test_inbound_signed_decision_wakes_the_waiting_agent(inbound_daemon):
    d = inbound_daemon
    r = ask_payment(d)
    updates = []

    def wait():
        stub = policy_pb2_grpc.PolicyStub(d.channel())
        try:
            for u in stub.WaitForDecision(policy_pb2.WaitRequest(
                    pending_action_id=r.pending_action_id, heartbeat_ms=100), timeout=60):
                updates.append(u)
        except grpc.RpcError as e:
            updates.append(e)

    t = threading.Thread(target=wait)
    t.start()
    wait_until(lambda: len(updates) >= 1, what="a heartbeat")
    body = decision_body(r.pending_action_id)
    status, answer = post_inbound(d, body, sign(body))
    assert status == 200, answer
    assert answer["status"] == "applied" and answer["decision"] == "approved"
    t.join(timeout=10)
    assert not t.is_alive()
    last = updates[-1]
    assert not isinstance(last, grpc.RpcError), last
    assert last.status == policy_pb2.APPROVED and not last.heartbeat
    approved = json.loads(d.cli("--output", "json", "pending", "--status", "approved").stdout)
    [a] = [a for a in approved["actions"] if a["id"] == r.pending_action_id]
    assert a["approver_id"] == "upstream-alice"
    # The same webhook again (the upstream retried): no second decision.
    status, answer = post_inbound(d, body, sign(body))
    assert status == 200 and answer["status"] == "already_decided"
    assert metric(d, "toolgate_inbound_webhooks_decisions_total") == 1


def test_inbound_other_bodies_are_acknowledged(inbound_daemon):
    body = json.dumps({"type": "session.risk_changed", "sessionId": "s"}).encode()
    status, answer = post_inbound(inbound_daemon, body, sign(body))
    assert status == 202 and answer["status"] == "ignored"


def test_inbound_off_without_a_secret(make_daemon, tmp_path):
    d = make_daemon().start()
    body = b"{}"
    status, answer = post_inbound(d, body, sign(body))
    assert status == 404 and answer["error"]["code"] == "NOT_FOUND"


# --- configuration ----------------------------------------------------------------------------

def test_webhook_secrets_are_checked_at_start(make_daemon, tmp_path):
    import subprocess
    from conftest import TOOLGATED

    def run(cfg_text):
        p = tmp_path / "bad.yaml"
        p.write_text(cfg_text)
        return subprocess.run([TOOLGATED, "--config", str(p), "--print-config"],
                              capture_output=True, text=True, timeout=30,
                              env={k: v for k, v in os.environ.items()
                                   if not k.startswith("TOOLGATE_")})

    r = run("notifier:\n  endpoints:\n    - url: http://127.0.0.1:1/h\n      secret: s3cr3t\n")
    assert r.returncode == 2 and "notifier.endpoints[0].secret" in r.stderr
    assert "s3cr3t" not in r.stderr
    open_file = tmp_path / "open.secret"
    open_file.write_text("x")
    os.chmod(open_file, 0o644)
    r = run(f"notifier:\n  endpoints:\n    - url: http://h/\n      secret_file: {open_file}\n")
    assert r.returncode == 2 and "world-readable" in r.stderr
    r = run("notifier:\n  endpoints:\n    - url: http://h/\n")
    assert r.returncode == 2 and "signing secret" in r.stderr
    r = run("notifier:\n  endpoints:\n    - {url: http://h/, secret_env: HOOK_KEY,"
            " events: [agent_execution_paused]}\n")
    assert r.returncode == 2 and "unknown event" in r.stderr
    good = secret_file(tmp_path, "ok.secret", "very-secret-value")
    r = run(f"notifier:\n  endpoints:\n    - url: http://h/\n      secret_file: {good}\n"
            f"  retry_delays: 1s,2s\n")
    assert r.returncode == 0, r.stderr
    assert "very-secret-value" not in r.stdout and "webhook secrets: 1 set" in r.stdout
