"""Policy decisions with the real daemon: Check, its audit event, hot reload, the CLI."""
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time

import grpc
import pytest

from conftest import TOOLGATE_CLI, TOOLGATED, tool_event, wait_until
from toolgate.v1 import admin_pb2, events_pb2, policy_pb2, policy_pb2_grpc

POLICY_A = """
revision: "A"
default: allow
rules:
  - id: deny-rm-rf
    effect: deny
    reason: recursive delete
    match:
      tool_name: "shell*"
      arguments:
        - {pointer: /command, regex: "rm\\\\s+-rf"}
  - id: big-payment
    effect: require_approval
    reason: payment over 1000
    match:
      tool_name: send_payment
      arguments:
        - {pointer: /amount, ">": 1000}
  - id: shadow-email
    effect: deny
    shadow: true
    reason: would block e-mail
    match:
      tool_name: send_email
  - id: arguments-object
    effect: deny
    reason: the arguments are a JSON object
    match:
      tool_name: root_probe
      arguments:
        - {pointer: "", exists: true}
"""

POLICY_B = POLICY_A.replace('revision: "A"', 'revision: "B"')


def action(tool, args=None, session="s-1", agent="agent-1"):
    return policy_pb2.Action(agent_id=agent, session_id=session, tool_name=tool,
                             arguments_json=json.dumps(args or {}))


def check(d, act, timeout=5):
    return policy_pb2_grpc.PolicyStub(d.channel()).Check(policy_pb2.CheckRequest(action=act),
                                                         timeout=timeout)


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_A)
    return path


def write_atomically(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_check_decides_explains_and_records(make_daemon, policy_file):
    d = make_daemon(args=["--set", f"policy.file={policy_file}"]).start()
    deny = check(d, action("shell_exec", {"command": "sudo rm  -rf /"}))
    assert deny.decision == policy_pb2.DENY
    assert deny.rule_id == "deny-rm-rf" and deny.reason == "recursive delete"
    assert deny.policy_revision == "A" and deny.source == policy_pb2.LOCAL_RULE
    assert len(deny.decision_id) == 36 and len(deny.event_id) == 36
    approval = check(d, action("send_payment", {"amount": 1500}))
    assert approval.decision == policy_pb2.REQUIRE_APPROVAL and approval.rule_id == "big-payment"
    small = check(d, action("send_payment", {"amount": 10}))
    assert small.decision == policy_pb2.ALLOW and small.source == policy_pb2.LOCAL_DEFAULT
    shadow = check(d, action("send_email", {"to": "x@y"}))
    assert shadow.decision == policy_pb2.ALLOW and shadow.shadow
    assert shadow.shadow_decision == policy_pb2.DENY
    # Every check is an approval event in the session's chain, with the decision and its id.
    wait_until(lambda: d.status().stored_events == 4, what="4 check events")
    exported = [json.loads(l) for l in d.cli("export", "s-1").stdout.splitlines()]
    by_decision = {e["payload"]["decisionId"]: e for e in exported}
    ev = by_decision[deny.decision_id]
    assert ev["category"] == "approval" and ev["eventId"] == deny.event_id
    assert ev["payload"]["decision"] == "deny" and ev["payload"]["ruleId"] == "deny-rm-rf"
    assert ev["payload"]["approverId"] == "toolgate-policy"
    assert ev["payload"]["policyRevision"] == "A"
    # The hash is of the canonical arguments (RFC 8785: here, sorted keys and no spaces).
    assert ev["payload"]["argumentsHash"] == hashlib.sha256(
        b'{"command":"sudo rm  -rf /"}').hexdigest()
    assert by_decision[approval.decision_id]["payload"]["argumentsHash"] == hashlib.sha256(
        b'{"amount":1500}').hexdigest()
    assert sorted(ev["payload"]) == ["approverId", "argumentsHash", "decision", "decisionId",
                                     "policyRevision", "reason", "ruleId", "scope"]
    assert ev["payload"]["scope"] == "shell_exec" and ev["payload"]["reason"] == "recursive delete"
    shadowed = by_decision[shadow.decision_id]["payload"]
    assert shadowed["decision"] == "allow" and shadowed["shadowDecision"] == "DENY"
    assert "source" not in shadowed  # said only when not the local rules (REMOTE, FAILED_…)
    assert "rm  -rf" not in json.dumps(exported)  # arguments are hashed, never stored
    r = subprocess.run([TOOLGATE_CLI, "verify", "-"], input=d.cli("export", "s-1").stdout,
                       text=True, capture_output=True)
    assert r.returncode == 0, r.stdout
    assert d.status().policy_revision == "A"


def test_absent_arguments_are_an_empty_object_to_the_rules(make_daemon, policy_file):
    d = make_daemon(args=["--set", f"policy.file={policy_file}"]).start()
    r = check(d, policy_pb2.Action(agent_id="a", session_id="s", tool_name="root_probe"))
    assert r.decision == policy_pb2.DENY and r.rule_id == "arguments-object"


def test_a_check_is_chained_before_what_the_agent_records_after_its_answer(make_daemon,
                                                                           policy_file):
    # The record of a check is built after the answer, but its place in the chain is taken
    # before: the tool call the agent records once allowed always comes after its approval.
    d = make_daemon(args=["--set", f"policy.file={policy_file}"]).start()
    for i in range(50):
        allowed = check(d, action("search", {"q": i}, session="s-order"))
        ev = tool_event(session="s-order", tool="search", args=json.dumps({"q": i}))
        ev.event_id = f"00000000-0000-4000-8000-{i:012d}"
        d.events().Record(events_pb2.RecordRequest(events=[ev]), timeout=10)
        assert allowed.decision == policy_pb2.ALLOW
    wait_until(lambda: d.status().stored_events == 100, what="100 events")
    exported = [json.loads(l) for l in d.cli("export", "s-order").stdout.splitlines()]
    kinds = ["check" if e["category"] == "approval" else "tool" for e in exported]
    assert kinds == ["check", "tool"] * 50
    # Only the agent's own ids are remembered for recognising resends; a check's event id is
    # the daemon's, and nobody sends it again.
    d.stop()
    db = sqlite3.connect(str(d.data_dir / "spool.db"))
    remembered = db.execute("SELECT coalesce(sum(length(ids)), 0) / 16 FROM recent_ids").fetchone()
    db.close()
    assert remembered[0] == 50


def test_check_without_a_policy_allows_and_bad_requests_are_refused(make_daemon):
    d = make_daemon().start()
    r = check(d, action("anything"))
    assert r.decision == policy_pb2.ALLOW and r.source == policy_pb2.LOCAL_DEFAULT
    for bad, field in [(action("t", session=""), "action.session_id"),
                       (policy_pb2.Action(agent_id="a", session_id="s"), "action.tool_name"),
                       (policy_pb2.Action(agent_id="a", session_id="s", tool_name="t",
                                          arguments_json="{nope"), "action.arguments_json")]:
        with pytest.raises(grpc.RpcError) as e:
            check(d, bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()


def test_a_policy_that_does_not_compile_stops_the_start(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - id: x\n    effect: maybe\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    r = subprocess.run([TOOLGATED, "--data-dir", str(tmp_path / "d"), "--socket", "none",
                        "--listen", "127.0.0.1:0", "--http-listen", "",
                        "--set", f"policy.file={path}"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 2
    assert "bad.yaml:3" in r.stderr and "effect" in r.stderr


def test_hot_reload_under_load_keeps_answering(make_daemon, policy_file):
    d = make_daemon(args=["--set", f"policy.file={policy_file}",
                          "--set", "policy.reload_interval=0",
                          "--set", "policy.record_checks=false"]).start()
    stop = threading.Event()
    revisions, failures, calls = set(), [], [0]

    def client(i):
        stub = policy_pb2_grpc.PolicyStub(d.channel())
        while not stop.is_set():
            try:
                r = stub.Check(policy_pb2.CheckRequest(
                    action=action("shell_exec", {"command": "rm -rf /"}, session=f"s{i}")),
                    timeout=5)
                revisions.add(r.policy_revision)
                if r.decision != policy_pb2.DENY:
                    failures.append(f"decision {r.decision}")
                calls[0] += 1
            except grpc.RpcError as e:  # noqa: PERF203
                failures.append(str(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    admin = d.admin()
    for flip in range(100):
        write_atomically(policy_file, POLICY_B if flip % 2 == 0 else POLICY_A)
        r = admin.ReloadPolicies(admin_pb2.ReloadPoliciesRequest(), timeout=5)
        assert r.error == "" and r.revision == ("B" if flip % 2 == 0 else "A")
    # A broken file: the last good revision stays, and says why.
    write_atomically(policy_file, "rules: [ {id: broken, effect: ")
    r = admin.ReloadPolicies(admin_pb2.ReloadPoliciesRequest(), timeout=5)
    assert r.error and r.revision == "A" and not r.changed
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert revisions <= {"A", "B"} and calls[0] > 100
    assert check(d, action("x")).policy_revision == "A"
    out = d.cli("policy", "reload", check=False)
    assert out.returncode == 1 and "not reloaded" in out.stdout


def test_file_change_and_sighup_reload(make_daemon, policy_file):
    d = make_daemon(args=["--set", f"policy.file={policy_file}",
                          "--set", "policy.reload_interval=100ms"]).start()
    write_atomically(policy_file, POLICY_B)
    wait_until(lambda: check(d, action("x")).policy_revision == "B", timeout=10,
               what="reload on file change")
    d2 = make_daemon(args=["--set", f"policy.file={policy_file}",
                           "--set", "policy.reload_interval=0"], name="d2").start()
    write_atomically(policy_file, POLICY_A)
    time.sleep(0.3)
    assert check(d2, action("x")).policy_revision == "B"  # no polling: unchanged
    d2.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: check(d2, action("x")).policy_revision == "A", timeout=10,
               what="reload on SIGHUP")


def test_policy_lint_and_test_cli(tmp_path, policy_file):
    ok = subprocess.run([TOOLGATE_CLI, "policy", "lint", str(policy_file)], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "OK: 4 rule(s), revision A" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: allow\nrules:\n  - id: r1\n    effect: deny\n    match:\n"
                   "      tool_nme: x\n")
    r = subprocess.run([TOOLGATE_CLI, "policy", "lint", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "bad.yaml:6" in r.stdout and "tool_nme" in r.stdout
    act = tmp_path / "action.json"
    act.write_text(json.dumps({"agent_id": "a", "session_id": "s", "tool_name": "send_payment",
                               "arguments": {"amount": 5000}}))
    r = subprocess.run([TOOLGATE_CLI, "--output", "json", "policy", "test", str(policy_file),
                        str(act)], capture_output=True, text=True)
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"decision": "require_approval", "rule_id": "big-payment",
                                    "reason": "payment over 1000", "revision": "A"}
    # No arguments in the action file: `{}`, as the daemon takes a Check without them, so
    # `pointer: ""` exists offline too.
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"agent_id": "a", "session_id": "s", "tool_name": "root_probe"}))
    r = subprocess.run([TOOLGATE_CLI, "--output", "json", "policy", "test", str(policy_file),
                        str(bare)], capture_output=True, text=True)
    assert r.returncode == 0
    assert json.loads(r.stdout)["rule_id"] == "arguments-object"
