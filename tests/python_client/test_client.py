"""The Python client (client/python) against the real daemon: guard, approvals, restarts."""
import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import toolgate
from conftest import CLIENT_SRC, INSTALLED, ROOT, TOOLGATE_CLI, pip_install, wait_until
from toolgate.v1 import events_pb2

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def export(daemon, session):
    out = daemon.cli("export", session).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def jcs_sha256(obj):
    # Enough of RFC 8785 for objects of strings and integers: sorted keys, no spaces.
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def test_decorator_allows_runs_the_tool_and_records_it(daemon, client_for):
    client = client_for(session_id="s-allow")
    ran = []

    @client.guard(tool_name="send_payment", target_system="billing")
    def send_payment(to: str, amount: int, memo: str = "none") -> str:
        ran.append((to, amount))
        time.sleep(0.02)
        return f"paid {amount} to {to}"

    assert send_payment("c-19", 120) == "paid 120 to c-19"
    assert ran == [("c-19", 120)]
    assert client.flush(timeout=10)
    st = client.stats()
    assert (st.recorded, st.acked, st.dropped, st.rejected, st.buffered) == (1, 1, 0, 0, 0)

    events = export(daemon, "s-allow")
    checks = [e for e in events if e["category"] == "approval"]
    calls = [e for e in events if e["category"] == "tool_api"]
    assert len(checks) == 1 and len(calls) == 1
    assert checks[0]["payload"]["decision"] == "allow"
    call = calls[0]
    assert UUID.match(call["eventId"])
    assert call["agentId"] == "py-agent" and call["sessionId"] == "s-allow"
    assert call["targetSystem"] == "billing"
    assert call["payload"]["toolName"] == "send_payment"
    assert call["payload"]["responseStatus"] == "success"
    assert call["payload"]["durationMs"] >= 20
    # The bound arguments, defaults included, are what was checked and what was hashed.
    expected = jcs_sha256({"to": "c-19", "amount": 120, "memo": "none"})
    assert call["payload"]["argumentsHash"] == expected
    assert checks[0]["payload"]["argumentsHash"] == expected
    assert call["causationEventId"] == checks[0]["eventId"]  # the check caused the call
    assert "c-19" not in json.dumps(events)  # raw arguments never stored


def test_a_failing_tool_is_recorded_as_error_and_the_exception_propagates(daemon, client_for):
    client = client_for(session_id="s-fail")

    @client.guard
    def lookup(key: str) -> str:
        raise KeyError(key)

    with pytest.raises(KeyError):
        lookup("k1")
    with client.tool_call("fetch_page", {"url": "https://example.com"}) as call:
        call.status = "404"
        call.endpoint = "https://example.com"
    assert call.decision.verdict == toolgate.Verdict.ALLOW and UUID.match(call.event_id)
    assert client.flush(timeout=10)
    calls = {e["payload"]["toolName"]: e for e in export(daemon, "s-fail")
             if e["category"] == "tool_api"}
    assert calls["lookup"]["payload"]["responseStatus"] == "error"
    assert calls["fetch_page"]["payload"]["responseStatus"] == "404"
    assert calls["fetch_page"]["eventId"] == call.event_id


def test_decorator_denies_with_the_reason_and_does_not_run(daemon, client_for):
    client = client_for(session_id="s-deny")
    ran = []

    @client.guard(tool_name="send_payment")
    def send_payment(to: str, amount: int) -> str:
        ran.append(amount)
        return "paid"

    with pytest.raises(toolgate.Denied) as info:
        send_payment("c-19", 5000)
    e = info.value
    assert ran == []
    assert isinstance(e, toolgate.Blocked) and isinstance(e, toolgate.ToolgateError)
    assert e.reason == "payments over 1000 need a human"
    assert e.rule_id == "no-big-payments"
    assert e.policy_revision == "py-1"
    assert e.tool_name == "send_payment"
    assert UUID.match(e.decision_id)
    assert e.decision.verdict == toolgate.Verdict.DENY
    assert "payments over 1000 need a human" in str(e) and e.decision_id in str(e)

    # check() reports the same decision without raising.
    d = client.check("send_payment", {"to": "c-19", "amount": 5000})
    assert (d.verdict, d.rule_id, d.source) == (toolgate.Verdict.DENY, "no-big-payments",
                                               "local_rule")
    assert not d.allowed
    # The daemon records each check after answering it (asynchronously): await both records.
    wait_until(lambda: len(export(daemon, "s-deny")) == 2, timeout=10, what="the checks' records")
    events = export(daemon, "s-deny")
    assert [e["category"] for e in events] == ["approval", "approval"]  # no tool call recorded
    assert events[0]["payload"]["decisionId"] == e.decision_id
    assert events[0]["payload"]["decision"] == "deny"


def test_check_of_bad_arguments_is_an_invalid_request(daemon, client_for):
    client = client_for()
    with pytest.raises(toolgate.InvalidRequest) as info:
        client.check("send_payment", "{not json")
    assert "arguments_json" in info.value.details


def pending_ids(daemon):
    listed = json.loads(daemon.cli("--output", "json", "pending").stdout)["actions"]
    return [a["id"] for a in listed]


def run_in_thread(fn):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
        out["at"] = time.monotonic()

    t = threading.Thread(target=target)
    t.start()
    return t, out


def test_waits_for_an_approval_decided_through_the_cli(daemon, client_for):
    client = client_for(session_id="s-approve")
    ran = []

    @client.guard(tool_name="wire_transfer")
    def wire_transfer(iban: str, amount: int) -> str:
        ran.append(amount)
        return "sent"

    t, out = run_in_thread(lambda: wire_transfer("DE00123", 700))
    wait_until(lambda: len(pending_ids(daemon)) == 1, timeout=20, what="the pending action")
    time.sleep(0.3)  # the agent keeps waiting while pending
    assert t.is_alive() and ran == []
    [pending_id] = pending_ids(daemon)
    decided_at = time.monotonic()
    daemon.cli("approve", pending_id, "--reason", "invoice checked", "--approver", "alice")
    t.join(timeout=20)
    assert not t.is_alive()
    assert "error" not in out, out.get("error")
    assert out["value"] == "sent" and ran == [700]
    assert out["at"] - decided_at < 2.0  # pushed, not polled

    # The context manager exposes the decision and the approval.
    t, out = run_in_thread(lambda: _guarded_call(client, "wire_transfer", {"amount": 1}))
    wait_until(lambda: len(pending_ids(daemon)) == 1, timeout=20, what="the second pending")
    daemon.cli("approve", pending_ids(daemon)[0], "--reason", "ok", "--approver", "bob")
    t.join(timeout=20)
    decision = out["value"]
    assert decision.verdict == toolgate.Verdict.REQUIRE_APPROVAL and decision.allowed
    assert decision.rule_id == "wire-needs-human"
    assert (decision.approval.status, decision.approval.approver_id,
            decision.approval.reason) == ("approved", "bob", "ok")
    assert client.flush(timeout=10)
    calls = [e for e in export(daemon, "s-approve") if e["category"] == "tool_api"]
    assert [c["payload"]["responseStatus"] for c in calls] == ["success", "success"]


def _guarded_call(client, tool, args):
    with client.tool_call(tool, args) as call:
        pass
    return call.decision


def test_a_rejection_through_the_cli_raises_with_the_humans_reason(daemon, client_for):
    client = client_for(session_id="s-reject")
    ran = []
    guarded = client.guard(tool_name="wire_transfer")(lambda amount: ran.append(amount))
    t, out = run_in_thread(lambda: guarded(9000))
    wait_until(lambda: len(pending_ids(daemon)) == 1, timeout=20, what="the pending action")
    pending_id = pending_ids(daemon)[0]
    daemon.cli("reject", pending_id, "--reason", "unknown payee", "--approver", "carol")
    t.join(timeout=20)
    e = out.get("error")
    assert isinstance(e, toolgate.ApprovalRejected), out
    assert ran == []
    assert (e.reason, e.approver_id, e.rule_id, e.pending_action_id) == (
        "unknown payee", "carol", "wire-needs-human", pending_id)
    assert e.decision.reason == "wire transfers need a human"
    assert "unknown payee" in str(e)


def test_an_expired_approval_raises_approval_expired(daemon, client_for):
    client = client_for()
    with pytest.raises(toolgate.ApprovalExpired) as info:
        with client.tool_call("urgent_wire", {"amount": 1}):
            pytest.fail("must not run")
    assert info.value.approval.status == "expired"
    assert info.value.rule_id == "quick-expiry"


def test_the_client_stops_waiting_after_approval_timeout(daemon, client_for):
    client = client_for()
    started = time.monotonic()
    with pytest.raises(toolgate.ApprovalWaitTimeout) as info:
        client.authorize("wire_transfer", {"amount": 5}, approval_timeout=0.5)
    assert time.monotonic() - started < 5
    assert info.value.pending_action_id in pending_ids(daemon)  # still pending on the daemon


def test_async_tools_are_guarded_too(daemon, client_for):
    client = client_for(session_id="s-async")

    @client.guard(tool_name="send_payment")
    async def send_payment(amount: int) -> str:
        await asyncio.sleep(0)
        return f"paid {amount}"

    assert asyncio.run(send_payment(10)) == "paid 10"
    with pytest.raises(toolgate.Denied):
        asyncio.run(send_payment(10_000))
    assert client.flush(timeout=10)
    calls = [e for e in export(daemon, "s-async") if e["category"] == "tool_api"]
    assert len(calls) == 1


def test_an_invalid_event_is_rejected_alone(daemon, client_for):
    client = client_for(session_id="s-invalid")
    ids = []
    for i in range(20):
        ev = events_pb2.Event()
        ev.tool_call.tool_name = f"t{i}"
        if i == 7:
            ev.attribution.initiator_type = "robot"  # must be human, agent or system
        ids.append(client.record(ev))
    assert client.flush(timeout=10)
    st = client.stats()
    assert (st.acked, st.rejected, st.dropped) == (19, 1, 0)
    assert "initiator_type" in st.last_error
    stored = [e["eventId"] for e in export(daemon, "s-invalid")]
    assert sorted(stored) == sorted(ids[:7] + ids[8:])


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_records_survive_a_daemon_restart_mid_stream(daemon, client_for, how):
    """Stop the daemon while the client streams, restart it on the same data directory: every
    recorded event is stored, under its own eventId, none lost; the agent never blocks."""
    # The buffer must hold what the agent records while the daemon is away: the stop, the
    # start-up and the resend take seconds under the sanitizers on a loaded 2-core machine
    # (CI saw 10,000 events fill the default buffer at TSan's pace). Its size is what this
    # test sets; what it checks is that nothing held is lost and the agent never waits.
    client = client_for(session_id="s-restart", max_buffered=200_000)
    recorded = []
    slowest = [0.0]
    done = threading.Event()

    def agent():  # records all along, paced: at most about 5 events per millisecond
        i = 0
        while not done.is_set():
            ev = events_pb2.Event()
            ev.tool_call.tool_name = "step"
            ev.tool_call.arguments_json = json.dumps({"i": i})
            t0 = time.monotonic()
            event_id = client.record(ev)
            slowest[0] = max(slowest[0], time.monotonic() - t0)
            assert event_id is not None, (i, client.stats())
            recorded.append(event_id)
            i += 1
            if i % 5 == 0:
                time.sleep(0.001)

    t = threading.Thread(target=agent)
    t.start()
    try:
        wait_until(lambda: client.stats().acked > 500, what="acknowledgements before the stop")
        assert daemon.stop(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL) is not None
        at_stop = len(recorded)
        wait_until(lambda: len(recorded) > at_stop + 200, what="recording while down")
        assert client.stats().buffered > 200  # held for the daemon's return
        daemon.start()
        at_start = len(recorded)
        wait_until(lambda: len(recorded) > at_start + 200, what="recording after the restart")
    finally:
        done.set()
        t.join(timeout=60)
    assert not t.is_alive()
    total = len(recorded)
    assert client.flush(timeout=60), client.stats()
    st = client.stats()
    assert (st.recorded, st.acked, st.dropped, st.rejected, st.buffered) == (total, total, 0, 0, 0)
    assert st.reconnects >= 1
    assert slowest[0] < 0.25, f"record() blocked for {slowest[0]:.3f}s"

    stored = [e for e in export(daemon, "s-restart") if e["category"] == "tool_api"]
    counts = Counter(e["eventId"] for e in stored)
    assert set(counts) == set(recorded)  # every event, none foreign
    # A batch that was durable but whose acknowledgement the stop lost is resent under the same
    # ids: duplicates are recognisable by eventId, and carry the same content.
    by_id = {}
    for e in stored:
        key = (e["payload"]["argumentsHash"], e["sourceTimestamp"])
        assert by_id.setdefault(e["eventId"], key) == key
    duplicates = sum(counts.values()) - len(counts)
    print(f"{how}: {total} events, {st.resent} resent, {duplicates} stored twice, "
          f"{st.reconnects} reconnect(s), slowest record() {slowest[0] * 1000:.2f} ms")
    # The chain runs on across the restart: each stored event names the one stored before it
    # (the export is in chain order and its lines are the canonical bytes that were hashed).
    lines = [line for line in daemon.cli("export", "s-restart").stdout.splitlines() if line]
    for before, after in zip(lines, lines[1:]):
        assert json.loads(after)["previousHash"] == hashlib.sha256(before.encode()).hexdigest()
    if duplicates == 0:
        chain = subprocess.run([TOOLGATE_CLI, "verify", "-"], input="\n".join(lines) + "\n",
                               capture_output=True, text=True)
        assert chain.returncode == 0, chain.stdout + chain.stderr
    # Else `toolgate verify` reports the second copies as "eventId seen before with different
    # content": the daemon chains a resent event again (new previousHash) instead of
    # recognising its eventId. That is the daemon's ingest, not the client.


def test_recording_never_blocks_and_counts_drops_without_a_daemon(tmp_path):
    client = toolgate.Client("py-agent", address="unix:" + str(tmp_path / "nobody.sock"),
                             max_buffered=50)
    started = time.monotonic()
    ids = [client.record_tool_call("t", {"i": i}) for i in range(200)]
    assert time.monotonic() - started < 1.0
    assert sum(i is not None for i in ids) == 50
    assert client.stats().dropped == 150 and client.stats().buffered == 50
    assert client.flush(timeout=0.2) is False
    assert client.close(timeout=0.2) is False
    st = client.stats()
    assert (st.dropped, st.buffered, st.acked) == (200, 0, 0)
    assert client.record_tool_call("t") is None  # closed


def test_fail_closed_by_default_and_fail_open_on_request(tmp_path):
    client = toolgate.Client("py-agent", address="unix:" + str(tmp_path / "nobody.sock"),
                             check_timeout=0.3)
    ran = []
    tool = client.guard(tool_name="search")(lambda q: ran.append(q) or "ok")
    with pytest.raises(toolgate.Unavailable):
        tool("x")
    assert ran == []
    open_tool = client.guard(tool_name="search", fail_open=True)(lambda q: ran.append(q) or "ok")
    assert open_tool("y") == "ok" and ran == ["y"]
    with client.tool_call("search", {"q": "z"}, fail_open=True) as call:
        pass
    assert call.decision.source == "failed_open" and call.decision.allowed
    client.close(timeout=0.1)


def test_address_resolution(monkeypatch, tmp_path):
    from toolgate._address import resolve_address
    monkeypatch.delenv("TOOLGATE_ADDRESS", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "none"))
    assert resolve_address("10.0.0.1:7470") == "10.0.0.1:7470"
    assert resolve_address("/run/x.sock") == "unix:/run/x.sock"
    monkeypatch.setenv("TOOLGATE_ADDRESS", "unix:/a.sock")
    assert resolve_address() == "unix:/a.sock"
    monkeypatch.delenv("TOOLGATE_ADDRESS")
    sock = tmp_path / "toolgate.sock"
    sock.write_text("")  # any writable file in the first default place
    assert resolve_address() == "unix:" + str(sock)
    # systemd joins several runtime directories with ':'; the first is the daemon's.
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}:{tmp_path / 'other'}")
    assert resolve_address() == "unix:" + str(sock)


def code_block(markdown: str, lang: str, after: str = "") -> str:
    text = markdown[markdown.index(after):] if after else markdown
    m = re.search(r"```" + lang + r"\n(.*?)```", text, re.S)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


def test_pip_install_into_a_target_and_the_readme_example_runs(make_daemon, tmp_path):
    example = CLIENT_SRC / "examples" / "quickstart.py"
    policy = CLIENT_SRC / "examples" / "policy.yaml"
    # The READMEs show exactly the code that runs here.
    readme = (CLIENT_SRC / "README.md").read_text()
    assert code_block(readme, "python") == example.read_text()
    assert code_block(readme, "yaml") == policy.read_text()
    top = (ROOT / "README.md").read_text()
    assert code_block(top, "python", "## Use it from Python") == example.read_text()

    # A fresh install into an empty target, offline: the stubs are generated by the build.
    target = tmp_path / "target"
    r = pip_install(target)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("client.py", "py.typed", "v1/events_pb2.py", "v1/policy_pb2_grpc.py",
                 "v1/admin_pb2.py"):
        assert (target / "toolgate" / name).is_file(), name
    assert not (CLIENT_SRC / "toolgate" / "v1").exists()  # generated into the build only

    d = make_daemon(args=["--set", f"policy.file={policy}"], name="quickstart").start()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target),
           "TOOLGATE_ADDRESS": "unix:" + str(d.socket), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "paid 120.5 to c-19"
    m = re.fullmatch(r"denied: payments over 1000 need a human no-big-payments (\S+)", lines[1])
    assert m and UUID.match(m.group(1)), lines

    sessions = json.loads(d.cli("--output", "json", "sessions").stdout)["sessions"]
    [s] = [s for s in sessions if s["agent_id"] == "billing-agent"]
    events = export(d, s["session_id"])
    decisions = [e["payload"]["decision"] for e in events if e["category"] == "approval"]
    calls = [e["payload"] for e in events if e["category"] == "tool_api"]
    assert decisions == ["allow", "deny"]
    assert [(c["toolName"], c["responseStatus"]) for c in calls] == [("send_payment", "success")]
    assert any(e["payload"].get("decisionId") == m.group(1) for e in events)


def test_the_installed_package_is_the_one_under_test():
    assert Path(toolgate.__file__).parent == INSTALLED / "toolgate"
    assert Path(events_pb2.__file__).parent == INSTALLED / "toolgate" / "v1"
