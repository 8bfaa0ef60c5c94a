"""Remote and synced policies, the circuit breaker, failure modes, upstream approvals, and
Guardian.WatchPending — the real daemon against the fake upstream."""
import hashlib
import json
import os
import subprocess
import threading
import time

import grpc
import pytest

from conftest import TOOLGATED, wait_until
from toolgate.v1 import guardian_pb2, guardian_pb2_grpc, policy_pb2, policy_pb2_grpc


def remote_daemon(make_daemon, upstream, *settings, name="d"):
    args = ["--set", "policy.mode=remote"]
    for s in settings:
        args += ["--set", s]
    return make_daemon(args=args, upstream=upstream, name=name).start()


def check(d, operation="read", tool="db_query", session="s-r", tool_type="database",
          target="prod-db", args=None):
    stub = policy_pb2_grpc.PolicyStub(d.channel())
    return stub.Check(policy_pb2.CheckRequest(action=policy_pb2.Action(
        agent_id="agent-r", session_id=session, tool_name=tool, tool_type=tool_type,
        operation=operation, target_system=target, initiator_type="agent",
        arguments_json=json.dumps(args or {"sql": "select 1"}))), timeout=10)


def policy_checks(upstream):
    return [r for r in upstream.requests() if r["path"] == "/v1/policies/check"]


def test_remote_verdicts_are_honoured_and_cached(make_daemon, upstream):
    upstream.policy_verdict("DENY", "no deletes in production",
                            predicate=lambda b: b.get("operation") == "delete")
    d = remote_daemon(make_daemon, upstream, "policy.remote_cache_ttl=30s")
    r = check(d, operation="delete")
    assert r.decision == policy_pb2.DENY
    assert r.source == policy_pb2.REMOTE
    assert r.reason == "no deletes in production"
    assert r.decision_id and r.policy_revision == "remote"
    sent = policy_checks(upstream)
    assert len(sent) == 1
    # Exactly the four fields the upstream decides on: no arguments, no ids.
    assert json.loads(sent[0]["body"]) == {"toolType": "database", "operation": "delete",
                                           "targetSystem": "prod-db", "initiatorType": "agent"}
    assert sent[0]["headers"]["authorization"].startswith("Bearer ")

    assert check(d, operation="read").source == policy_pb2.REMOTE
    again = check(d, operation="delete", session="another")
    assert again.decision == policy_pb2.DENY and again.source == policy_pb2.REMOTE_CACHE
    assert len(policy_checks(upstream)) == 2  # the cached verdict asked nothing


def test_breaker_opens_after_three_failures_and_fails_closed(make_daemon, upstream):
    upstream.fail_policy_checks(seconds=3600, status=503)
    d = remote_daemon(make_daemon, upstream, "policy.remote_cache_ttl=0",
                      "policy.failure_mode=closed", "policy.breaker_reset=1s")
    for _ in range(3):
        r = check(d)
        assert r.decision == policy_pb2.DENY and r.source == policy_pb2.FAILED_CLOSED
        assert "HTTP 503" in r.reason and "failing closed" in r.reason
    assert len(policy_checks(upstream)) == 3
    assert d.status().breaker_state == "open"
    assert "remote policy breaker: open" in d.cli("status").stdout
    started = time.monotonic()
    r = check(d)
    assert time.monotonic() - started < 0.5  # an open breaker answers at once
    assert r.source == policy_pb2.FAILED_CLOSED and "circuit breaker open" in r.reason
    assert len(policy_checks(upstream)) == 3  # nothing sent while open

    # The upstream recovers; after breaker_reset one probe goes out and closes the breaker.
    upstream.clear_policy()
    time.sleep(1.1)
    r = check(d)
    assert r.decision == policy_pb2.ALLOW and r.source == policy_pb2.REMOTE
    assert d.status().breaker_state == "closed"

    # The failed-closed answers are in the audit chain, saying so.
    def sources():
        return [e["payload"].get("source") for e in upstream.events()
                if e["category"] == "approval" and e["sessionId"] == "s-r"]
    wait_until(lambda: len(sources()) == 5, what="5 check events upstream")
    assert sources().count("FAILED_CLOSED") == 4 and sources().count("REMOTE") == 1


def test_fail_open_is_explicit_in_the_answer(make_daemon, upstream):
    upstream.fail_policy_checks(n=1, status=0)  # connection reset
    upstream.slow_policy_checks(2)
    d = remote_daemon(make_daemon, upstream, "policy.remote_cache_ttl=0",
                      "policy.failure_mode=open", "policy.remote_timeout=200ms")
    r = check(d)
    assert r.decision == policy_pb2.ALLOW and r.source == policy_pb2.FAILED_OPEN
    assert "failing open" in r.reason
    started = time.monotonic()
    r = check(d)  # the upstream is slow: the timeout answers
    assert time.monotonic() - started < 1.5
    assert r.decision == policy_pb2.ALLOW and r.source == policy_pb2.FAILED_OPEN
    assert "Timeout" in r.reason or "timed out" in r.reason


def payment_held_upstream(make_daemon, upstream, poll_interval):
    """A remote-mode daemon whose upstream wants a human for payments, and one payment's check:
    (daemon, answer); the action is held here and upstream."""
    upstream.policy_verdict("REQUIRE_APPROVAL", "payments need a human",
                            predicate=lambda b: b.get("operation") == "pay")
    d = remote_daemon(make_daemon, upstream, f"guardian.poll_interval={poll_interval}")
    r = check(d, operation="pay", tool="send_payment")
    assert r.decision == policy_pb2.REQUIRE_APPROVAL and r.pending_action_id
    return d, r


def test_remote_require_approval_is_decided_upstream(make_daemon, upstream):
    d, r = payment_held_upstream(make_daemon, upstream, "200ms")
    upstream_ids = list(upstream.pending_actions())
    assert len(upstream_ids) == 1
    pending = guardian_pb2_grpc.GuardianStub(d.channel()).ListPending(
        guardian_pb2.ListPendingRequest(), timeout=5).actions
    assert [(a.id, a.upstream_id) for a in pending] == [(r.pending_action_id, upstream_ids[0])]
    # Held locally with the hash of the canonical arguments, as a local rule's action is.
    assert pending[0].arguments_hash == hashlib.sha256(b'{"sql":"select 1"}').hexdigest()

    updates = []

    def wait():
        stub = policy_pb2_grpc.PolicyStub(d.channel())
        for u in stub.WaitForDecision(policy_pb2.WaitRequest(
                pending_action_id=r.pending_action_id, heartbeat_ms=100), timeout=30):
            updates.append(u)

    t = threading.Thread(target=wait)
    t.start()
    wait_until(lambda: updates, what="the first heartbeat")
    upstream.decide_pending(upstream_ids[0], "approved", "looks fine", "alice")
    t.join(10)
    final = updates[-1]
    assert final.status == policy_pb2.APPROVED and final.decision == policy_pb2.ALLOW
    assert final.approver_id == "upstream:alice" and final.reason == "looks fine"

    # A local decision on an upstream action is forwarded to the upstream.
    r2 = check(d, operation="pay", tool="send_payment", session="s-r2")
    up2 = [i for i in upstream.pending_actions() if i != upstream_ids[0]][0]
    d.cli("reject", r2.pending_action_id, "--reason", "not today")
    wait_until(lambda: upstream.pending_actions()[up2]["status"] == "rejected",
               what="the rejection forwarded upstream")
    assert upstream.pending_actions()[up2]["decisionReason"] == "not today"



def test_local_decisions_are_forwarded_upstream_even_with_polling_off(make_daemon, upstream):
    d, r = payment_held_upstream(make_daemon, upstream, "0")
    [up] = list(upstream.pending_actions())
    d.cli("approve", r.pending_action_id, "--reason", "checked by hand")
    wait_until(lambda: upstream.pending_actions()[up]["status"] == "approved",
               what="the approval forwarded upstream")
    assert upstream.pending_actions()[up]["decisionReason"] == "checked by hand"
    # Polling off: the upstream's decision list is never asked for.
    assert not any(q["path"].startswith("/v1/guardian/pending-actions?")
                   for q in upstream.requests())

SYNCED = [
    {"id": "pol-1", "name": "prod safety", "status": "active", "default": "allow",
     "rules": [{"id": "no-prod-delete", "effect": "deny", "reason": "no deletes in prod",
                "match": {"operation": "delete", "target_system": "prod-*"}}]},
    {"id": "pol-old", "status": "archived",
     "rules": [{"id": "old", "effect": "deny", "reason": "archived rule"}]},
]


def test_sync_mode_fetches_rules_and_keeps_them_offline(make_daemon, upstream):
    upstream.set_policies(SYNCED)
    d = make_daemon(args=["--set", "policy.mode=sync"], upstream=upstream)
    d.start()
    wait_until(lambda: d.status().policy_revision.startswith("upstream:"), what="first sync")
    r = check(d, operation="delete")
    assert r.decision == policy_pb2.DENY and r.rule_id == "no-prod-delete"
    assert r.source == policy_pb2.LOCAL_RULE
    assert check(d, operation="read").decision == policy_pb2.ALLOW  # archived rule not applied
    first = d.status().policy_revision
    assert not any(r["path"] == "/v1/policies/check" for r in upstream.requests())

    # A change upstream is taken on reload (SIGHUP / Admin.ReloadPolicies / policy reload).
    changed = json.loads(json.dumps(SYNCED))
    changed[0]["rules"][0]["effect"] = "require_approval"
    upstream.set_policies(changed)
    out = json.loads(d.cli("--output", "json", "policy", "reload").stdout)
    assert out["revision"] != first and out["changed"]

    # Restarted while the upstream is down: the last synced rules are still enforced.
    d.stop()
    upstream.stop()
    d.start()
    r = check(d, operation="delete")
    assert r.decision == policy_pb2.REQUIRE_APPROVAL and r.rule_id == "no-prod-delete"
    upstream.start()


def test_sync_mode_without_any_rules_fails_closed(make_daemon, upstream):
    upstream.stop()
    d = make_daemon(args=["--set", "policy.mode=sync"], upstream=upstream)
    d.start()
    r = check(d)
    assert r.decision == policy_pb2.DENY and r.source == policy_pb2.FAILED_CLOSED
    assert "no rules synced" in r.reason
    upstream.start()


@pytest.mark.parametrize("settings,needle", [
    (["policy.mode=remote"], "policy.mode: remote needs an upstream"),
    (["policy.mode=sync", "upstream.url=http://127.0.0.1:9", "policy.file=/x.yaml"],
     "policy.file: only with policy.mode local"),
    (["policy.failure_mode=maybe"], "policy.failure_mode"),
    (["policy.breaker_failures=0"], "policy.breaker_failures"),
])
def test_remote_mode_config_errors(tmp_path, settings, needle):
    args = [TOOLGATED, "--data-dir", str(tmp_path / "d"), "--socket", "none",
            "--listen", "127.0.0.1:0", "--http-listen", ""]
    for s in settings:
        args += ["--set", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env["TOOLGATE_API_KEY"] = "k"
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr


WATCH_POLICY = """
default: allow
rules:
  - id: needs-human
    effect: require_approval
    reason: a human must look
    match: {tool_name: deploy}
"""


def test_watch_pending_streams_existing_new_and_decided(make_daemon, tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text(WATCH_POLICY)
    d = make_daemon(args=["--set", f"policy.file={p}"]).start()
    first = check(d, tool="deploy", session="w1")
    seen = []
    call = guardian_pb2_grpc.GuardianStub(d.channel()).WatchPending(
        guardian_pb2.WatchPendingRequest(include_decisions=True), timeout=30)

    def read():
        try:
            for a in call:
                seen.append(a)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=read)
    t.start()
    wait_until(lambda: len(seen) >= 1, what="the action pending before the watch")
    assert seen[0].id == first.pending_action_id and seen[0].status == policy_pb2.PENDING
    second = check(d, tool="deploy", session="w2")
    wait_until(lambda: len(seen) >= 2, what="a new pending action")
    assert seen[1].id == second.pending_action_id
    d.cli("approve", second.pending_action_id)
    wait_until(lambda: len(seen) >= 3, what="the decision")
    assert seen[2].id == second.pending_action_id and seen[2].status == policy_pb2.APPROVED
    call.cancel()
    t.join(5)
