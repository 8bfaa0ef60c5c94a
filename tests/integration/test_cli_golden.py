"""Golden-output tests of the `toolgate` CLI, in both output modes, against the real daemon;
and the behaviour of `toolgate tail`, `--help` and usage errors.

Each golden case runs one command and compares its exit code, stdout and stderr, after
normalize(), with tests/integration/golden/<case>.txt. To accept a deliberate change of output,
run with TOOLGATE_UPDATE_GOLDEN=1: the files are rewritten (review the diff, then commit it).

normalize() replaces what changes from run to run, and nothing else:

    the test's temporary directory      -> <TMP>
    127.0.0.1:<port>                    -> 127.0.0.1:<PORT>
    UUIDs made by the daemon            -> xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (same width,
                                           so that table columns stay checked)
    RFC 3339 times made by the daemon   -> <TIME>
    uptime ("uptime: 3s", "uptime_s")   -> <N>
    toolgated's version                 -> <VERSION>

The test's events carry fixed ids (00000000-0000-4000-8000-…) and times (2026-01-02T03:04:…),
which are kept: with them, ids, hashes (argumentsHash, previousHash), counts and byte sizes are
compared exactly.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import API_KEY, TOOLGATE_CLI, Daemon, FakeUpstream, wait_until
from toolgate.v1 import admin_pb2, admin_pb2_grpc, events_pb2, policy_pb2, policy_pb2_grpc

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("TOOLGATE_UPDATE_GOLDEN") == "1"

POLICY = """
revision: "golden-1"
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
    approval_timeout: 10m
    match:
      tool_name: send_payment
      arguments:
        - {pointer: /amount, ">": 1000}
"""

BAD_POLICY = """
revision: "golden-bad"
rules:
  - id: broken
    effect: maybe
    match: {tool_name: x}
"""

FIXED_UUID = "00000000-0000-4000-8000-"
FIXED_TIME = "2026-01-02T03:04:"
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
_VOLATILE = [
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<PORT>"),
    (re.compile(r"uptime: \d+s"), "uptime: <N>s"),
    (re.compile(r'"uptime_s":"\d+"'), '"uptime_s":"<N>"'),
    (re.compile(r"^toolgated \d+\.\d+\.\d+\S*", re.M), "toolgated <VERSION>"),
    (re.compile(r'^\{"version":"[^"]*","mode":', re.M), '{"version":"<VERSION>","mode":'),
]


def normalize(text, tmp):
    """Replaces the volatile parts of CLI output (see the module's docstring)."""
    text = text.replace(str(tmp), "<TMP>")
    text = _UUID.sub(lambda m: m[0] if m[0].startswith(FIXED_UUID)
                     else "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", text)
    text = _TIME.sub(lambda m: m[0] if m[0].startswith(FIXED_TIME) else "<TIME>", text)
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text


def check_golden(name, text):
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} is missing: run with TOOLGATE_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert text == expected, (
        f"output differs from {path} (TOOLGATE_UPDATE_GOLDEN=1 rewrites it):\n"
        f"--- expected\n{expected}\n--- got\n{text}")


def run_cli(args, address=None, input=None):
    cmd = [TOOLGATE_CLI] + (["--address", address] if address else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=input)


def transcript(args, r, tmp):
    """What a golden file holds: the command (without --address), exit code, stdout, stderr."""
    return normalize(f"$ toolgate {' '.join(args)}\nexit: {r.returncode}\n--- stdout\n"
                     f"{r.stdout}--- stderr\n{r.stderr}", tmp)


def uuid(n):
    return f"00000000-0000-4000-8000-{n:012d}"


def stamp(n):
    return f"2026-01-02T03:04:{n:02d}.000001Z"


def ev(n, agent, session, **kind):
    e = events_pb2.Event(agent_id=agent, session_id=session, event_id=uuid(n),
                         source_timestamp=stamp(n))
    for field, value in kind.items():
        getattr(e, field).CopyFrom(value)
    return e


def tool(name, args, status="success"):
    return events_pb2.ToolCall(tool_name=name, arguments_json=json.dumps(args),
                               response_status=status)


def record(d, events):
    d.events().Record(events_pb2.RecordRequest(events=events), timeout=10)


def next_millisecond():
    """Sessions are listed by the millisecond of their last commit: keep them apart."""
    start = int(time.time() * 1000)
    wait_until(lambda: int(time.time() * 1000) >= start + 2, timeout=1, interval=0.001)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A standalone daemon with two sessions and a pending approval; a daemon shipping to a
    fake upstream that refused two events (dead letters); policy and verify input files."""
    tmp = tmp_path_factory.mktemp("cli_golden")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "bad-policy.yaml").write_text(BAD_POLICY)
    for name, action in {
        "deny": {"agent_id": "ops", "tool_name": "shell_exec",
                 "arguments": {"command": "rm -rf /var/data"}},
        "approval": {"agentId": "pay-agent", "toolName": "send_payment",
                     "arguments": {"amount": 5000}},
        "allow": {"agent_id": "pay-agent", "tool_name": "send_payment",
                  "arguments": {"amount": 20}},
    }.items():
        (tmp / f"action-{name}.json").write_text(json.dumps(action))

    (tmp / "standalone").mkdir()
    sa = Daemon(tmp / "standalone", args=[
        "--set", f"policy.file={tmp / 'policy.yaml'}", "--set", "policy.record_checks=false"])
    (tmp / "shipping").mkdir()
    up = FakeUpstream(api_key=API_KEY).start()
    sh = Daemon(tmp / "shipping", env={"TOOLGATE_API_KEY": API_KEY}, args=[
        "--upstream-url", up.url, "--set", "upstream.max_in_flight=1",
        "--set", "upstream.backoff_initial=100ms", "--set", "batch.max_delay=20ms"])
    try:
        sa.start()
        record(sa, [ev(1, "agent-a", "s-alpha", session_start=events_pb2.SessionStart()),
                    ev(2, "agent-a", "s-alpha", tool_call=tool("search", {"q": "weather"})),
                    ev(3, "agent-a", "s-alpha",
                       reasoning=events_pb2.Reasoning(summary="user wants the forecast"))])
        record(sa, [ev(4, "agent-a", "s-alpha",
                       tool_call=tool("send_email", {"to": "x@example.com"}, "error")),
                    ev(5, "agent-a", "s-alpha", session_end=events_pb2.SessionEnd(
                        outcome=events_pb2.SessionEnd.COMPLETED))])
        next_millisecond()
        record(sa, [ev(6, "agent-b", "s-beta", tool_call=tool("read_file", {"path": "/etc/x"})),
                    ev(7, "agent-b", "s-beta", data_movement=events_pb2.DataMovement(
                        operation="read", object_ids=["doc-1", "doc-2"]))])
        check = policy_pb2_grpc.PolicyStub(sa.channel()).Check(policy_pb2.CheckRequest(
            action=policy_pb2.Action(agent_id="pay-agent", session_id="s-pay",
                                     tool_name="send_payment",
                                     arguments_json='{"amount": 5000}')), timeout=10)
        assert check.decision == policy_pb2.REQUIRE_APPROVAL

        sh.start()
        up.reject_event(lambda e: e["payload"].get("toolName") == "forbidden-tool", status=422,
                        code="NORMALIZATION_FAILED",
                        message="toolName forbidden-tool is not allowed")
        up.reject_event(lambda e: e["payload"].get("toolName") == "too-big", status=413,
                        code="PAYLOAD_TOO_LARGE", message="event too large")
        record(sh, [ev(11, "agent-c", "s-ship", tool_call=tool("ok-tool", {})),
                    ev(12, "agent-c", "s-ship", tool_call=tool("forbidden-tool", {"a": 1})),
                    ev(13, "agent-c", "s-ship", tool_call=tool("too-big", {"b": 2}))])
        wait_until(lambda: sh.status().dead_letters == 2 and sh.status().queue_depth == 0,
                   what="two dead letters")

        export = run_cli(["export", "s-alpha"], "unix:" + str(sa.socket))
        assert export.returncode == 0, export.stderr
        (tmp / "export.jsonl").write_text(export.stdout)
        lines = export.stdout.splitlines()
        lines[1] = lines[1].replace('"toolName":"search"', '"toolName":"searcH"')
        (tmp / "tampered.jsonl").write_text("\n".join(lines) + "\n")
        yield {"tmp": tmp, "standalone": "unix:" + str(sa.socket),
               "shipping": "unix:" + str(sh.socket)}
    finally:
        for d in (sa, sh):
            try:
                d.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                if d.proc:
                    d.proc.kill()
        up.stop()


# (case name, daemon or None, arguments; {tmp} is the temporary directory)
CASES = [
    ("status", "standalone", ["status"]),
    ("sessions", "standalone", ["sessions"]),
    ("sessions-agent", "standalone", ["sessions", "--agent", "agent-b"]),
    ("export", "standalone", ["export", "s-alpha"]),
    ("verify", None, ["verify", "{tmp}/export.jsonl"]),
    ("verify-tampered", None, ["verify", "{tmp}/tampered.jsonl"]),
    ("pending", "standalone", ["pending"]),
    ("dead-letters-list", "shipping", ["dead-letters", "list"]),
    ("policy-lint", None, ["policy", "lint", "{tmp}/policy.yaml"]),
    ("policy-lint-bad", None, ["policy", "lint", "{tmp}/bad-policy.yaml"]),
    ("policy-test-deny", None, ["policy", "test", "{tmp}/policy.yaml", "{tmp}/action-deny.json"]),
    ("policy-test-approval", None,
     ["policy", "test", "{tmp}/policy.yaml", "{tmp}/action-approval.json"]),
    ("policy-test-allow", None,
     ["policy", "test", "{tmp}/policy.yaml", "{tmp}/action-allow.json"]),
]


@pytest.mark.parametrize("mode", ["table", "json"])
@pytest.mark.parametrize("name,daemon,args", CASES, ids=[c[0] for c in CASES])
def test_golden(world, name, daemon, args, mode):
    args = ["--output", mode] + [a.format(tmp=world["tmp"]) for a in args]
    r = run_cli(args, world[daemon] if daemon else None)
    check_golden(f"{name}.{mode}", transcript(args, r, world["tmp"]))


def test_golden_help():
    r = run_cli(["--help"])  # nothing volatile: compared as printed
    check_golden("help", f"$ toolgate --help\nexit: {r.returncode}\n--- stdout\n{r.stdout}"
                         f"--- stderr\n{r.stderr}")


def test_json_outputs_parse_and_agree_with_the_daemon(world):
    """The json mode is for scripts: each command prints JSON that says what the daemon says."""
    sa = world["standalone"]
    status = json.loads(run_cli(["--output", "json", "status"], sa).stdout)
    assert status["stored_events"] == "7" and status["pending_approvals"] == "1"
    sessions = json.loads(run_cli(["--output", "json", "sessions"], sa).stdout)["sessions"]
    assert [s["session_id"] for s in sessions] == ["s-beta", "s-alpha"]
    exported = [json.loads(l) for l in run_cli(["export", "s-alpha"], sa).stdout.splitlines()]
    assert [e["eventId"] for e in exported] == [uuid(n) for n in range(1, 6)]
    assert sessions[1]["last_hash"] == hashlib.sha256(
        run_cli(["export", "s-alpha"], sa).stdout.splitlines()[-1].encode()).hexdigest()
    dead = json.loads(run_cli(["--output", "json", "dead-letters"], world["shipping"]).stdout)
    assert [d["event_id"] for d in dead["dead_letters"]] == [uuid(12), uuid(13)]
    assert [d["http_status"] for d in dead["dead_letters"]] == [422, 413]


# ------------------------------------------------------------------------------------ tail

class Tail:
    """A `toolgate tail` subprocess; its stdout lines are collected by a thread."""

    def __init__(self, address, *args):
        self.proc = subprocess.Popen([TOOLGATE_CLI, "--address", address, "tail", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.stderr = ""
        self._ready = threading.Event()
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr += line
            if "following events" in line:
                self._ready.set()

    def wait_ready(self):
        """The daemon has registered the tail: every event committed from now on reaches it."""
        assert self._ready.wait(20), f"tail did not start: {self.stderr}"

    def stop(self, sig=signal.SIGINT):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait()

    def wait(self):
        rc = self.proc.wait(timeout=20)
        for t in self._threads:  # until they have read everything
            t.join(timeout=20)
        return rc


def tail_events():
    return [ev(21, "agent-t", "s-tail", session_start=events_pb2.SessionStart()),
            ev(22, "agent-t", "s-tail", tool_call=tool("search", {"q": "tail"})),
            ev(23, "agent-u", "s-other", tool_call=tool("search", {"q": "elsewhere"})),
            ev(24, "agent-t", "s-tail", identity=events_pb2.Identity(
                agent_name="tailer", version="2.1", capabilities=["search"])),
            ev(25, "agent-t", "s-tail", approval=events_pb2.Approval(
                approver_id="alice", scope="send_payment", decision="approved",
                reason="checked")),
            ev(26, "agent-t", "s-tail", session_end=events_pb2.SessionEnd(
                outcome=events_pb2.SessionEnd.FAILED, error_message="boom",
                error_type="RuntimeError"))]


def test_tail_streams_committed_events_in_order_with_their_chain(make_daemon, tmp_path):
    d = make_daemon().start()
    address = "unix:" + str(d.socket)
    record(d, [ev(20, "agent-t", "s-tail", tool_call=tool("before", {}))])  # not tailed
    tails = {"json": Tail(address, "--output", "json", "--session", "s-tail"),
             "table": Tail(address, "--session", "s-tail"),
             "all": Tail(address, "--output", "json"),
             "agent": Tail(address, "--output", "json", "--agent", "agent-u")}
    for t in tails.values():
        t.wait_ready()
    events = tail_events()
    record(d, events[:3])  # one commit holding two sessions
    record(d, events[3:4])
    record(d, events[4:])
    wait_until(lambda: len(tails["json"].lines) == 5 and len(tails["table"].lines) == 5
               and len(tails["all"].lines) == 6 and len(tails["agent"].lines) == 1,
               timeout=20, what="the tailed events")
    for t in tails.values():
        assert t.stop() == 0, t.stderr  # Ctrl-C ends a tail cleanly

    # In order, filtered, exactly the bytes stored (and shipped): the chain links them,
    # continuing from the event recorded before the tail started.
    exported = d.cli("export", "s-tail").stdout.splitlines()
    got = [l.rstrip("\n") for l in tails["json"].lines]
    assert got == exported[1:]
    assert [json.loads(l)["eventId"] for l in got] == [uuid(n) for n in (21, 22, 24, 25, 26)]
    prev = exported[0]
    for line in got:
        assert json.loads(line)["previousHash"] == hashlib.sha256(prev.encode()).hexdigest()
        prev = line
    assert [json.loads(l)["eventId"] for l in tails["all"].lines] == \
        [uuid(n) for n in range(21, 27)]
    assert json.loads(tails["agent"].lines[0])["sessionId"] == "s-other"

    for mode in ("table", "json"):
        t = tails[mode]
        out = "".join(t.lines)
        text = normalize(f"$ toolgate {'--output json ' if mode == 'json' else ''}tail "
                         f"--session s-tail\nexit: 0\n--- stdout\n{out}--- stderr\n{t.stderr}",
                         tmp_path)
        check_golden(f"tail.{mode}", text)


def test_tail_ends_quietly_when_its_reader_goes_away(make_daemon):
    """`toolgate tail | head -1`: the closed pipe ends the tail with exit code 0."""
    d = make_daemon().start()
    proc = subprocess.Popen([TOOLGATE_CLI, "--address", "unix:" + str(d.socket), "--output",
                             "json", "tail"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert b"following events" in proc.stderr.readline()
        record(d, [ev(31, "a", "s", tool_call=tool("x", {}))])
        assert uuid(31).encode() in proc.stdout.readline()
        proc.stdout.close()  # as `head -1` exits
        for n in range(32, 40):  # the next write finds the pipe closed
            record(d, [ev(n, "a", "s", tool_call=tool("x", {}))])
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tail_of_a_stopping_daemon_ends_and_does_not_delay_the_stop(make_daemon):
    d = make_daemon(args=["--set", "shutdown_timeout=30s"]).start()
    t = Tail("unix:" + str(d.socket))
    t.wait_ready()
    start = time.monotonic()
    assert d.stop() == 0
    # Without ending the tails first, the server would wait shutdown_timeout / 2 = 15 s.
    assert time.monotonic() - start < 5
    assert t.wait() == 3  # the daemon went away
    assert "shutting down" in t.stderr


def test_a_slow_tail_is_cut_off_and_never_slows_the_spool(make_daemon):
    d = make_daemon().start()
    stub = admin_pb2_grpc.AdminStub(d.channel())
    stream = stub.Tail(admin_pb2.TailRequest(), timeout=120)
    # The call is registered once its initial metadata arrives (the CLI waits the same way).
    stream.initial_metadata()
    # Nobody reads the stream: the daemon's queue for it fills up while appends go on.
    big = "y" * 200
    start = time.monotonic()
    for batch in range(30):
        record(d, [events_pb2.Event(agent_id="a", session_id="s-slow",
                                    tool_call=tool("x", {"pad": big, "i": i}))
                   for i in range(batch * 1000, batch * 1000 + 1000)])
    elapsed = time.monotonic() - start
    received, error = 0, None
    try:
        for _ in stream:
            received += 1
    except Exception as e:  # noqa: BLE001 - the status is what is checked
        error = e
    assert error is not None and error.code().name == "RESOURCE_EXHAUSTED", error
    assert "tail too slow" in error.details()
    assert 0 < received < 30000
    assert d.status().stored_events == 30000
    assert elapsed < 20, elapsed
    # The tap is off again once the tail is gone: later appends are unaffected.
    record(d, [ev(41, "a", "s-slow", tool_call=tool("x", {}))])


# -------------------------------------------------------------------------- help and usage

def commands_from_help():
    """The commands `toolgate --help` lists, e.g. "status", "dead-letters list"."""
    out = run_cli(["--help"]).stdout
    section = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            words = line.split()
            name = words[0]
            if name in ("dead-letters", "policy"):
                name += " " + words[1]
            names.append(name)
    return names


def test_every_command_and_group_answers_help():
    names = commands_from_help()
    assert {"status", "tail", "sessions", "export", "verify", "flush", "pending", "approve",
            "reject", "send", "dead-letters list", "dead-letters retry", "dead-letters purge",
            "policy lint", "policy test", "policy reload", "help"} <= set(names)
    for name in names + ["dead-letters", "policy"]:
        for flag in ("--help", "-h"):
            r = run_cli(name.split() + [flag])
            assert r.returncode == 0, (name, r.stderr)
            assert r.stdout.startswith("Usage: toolgate " + (name if name != "help" else "")), \
                (name, r.stdout)
            assert r.stderr == ""
    assert run_cli(["help", "policy", "test"]).stdout == \
        run_cli(["policy", "test", "--help"]).stdout
    assert "Exit codes:" in run_cli(["--help"]).stdout


@pytest.mark.parametrize("args,message", [
    ([], "no command given"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["--frob", "status"], "unknown flag '--frob'"),
    (["status", "--frob"], "status: unknown flag '--frob'"),
    (["status", "extra"], "status: unexpected argument 'extra'"),
    (["tail", "--session"], "tail: --session needs a value"),
    (["tail", "--follow"], "tail: unknown flag '--follow'"),
    (["export"], "export: missing arguments"),
    (["dead-letters", "frob"], "dead-letters: unknown action 'frob'"),
    (["dead-letters", "retry", "x1"], "ID must be a number"),
    (["policy"], "policy: needs an action"),
    (["policy", "test", "only-one-file"], "policy test: missing arguments"),
    (["sessions", "--limit", "lots"], "--limit must be a number"),
    (["--output", "yaml", "status"], "--output must be table or json"),
    (["reject", "some-id"], "--reason is required"),
])
def test_usage_errors_exit_2_with_the_usage_on_stderr(args, message):
    # No daemon listens there: a usage error is found before any call.
    r = run_cli(args, "unix:/nonexistent/toolgate.sock")
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert message in r.stderr
    assert r.stdout == ""


def test_unreachable_daemon_exits_3():
    for args in (["status"], ["tail"], ["sessions"], ["pending"]):
        r = run_cli(args, "unix:/nonexistent/toolgate.sock")
        assert r.returncode == 3, (args, r.stderr)
        assert "cannot reach toolgated" in r.stderr
        assert "following events" not in r.stderr


def test_the_default_address_takes_the_first_runtime_directory(make_daemon, tmp_path):
    """systemd joins several RuntimeDirectory= entries with ':'; the daemon puts its socket in
    the first, and the CLI looks there too."""
    d = make_daemon().start()
    rt = tmp_path / "rt"
    rt.mkdir()
    (rt / "toolgate.sock").symlink_to(d.socket)
    env = {k: v for k, v in os.environ.items() if k != "TOOLGATE_ADDRESS"}
    env["RUNTIME_DIRECTORY"] = f"{rt}:{tmp_path / 'other'}"
    r = subprocess.run([TOOLGATE_CLI, "status"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_an_unavailable_answer_about_the_store_exits_1_any_other_3(tmp_path):
    """UNAVAILABLE from the daemon about its store (here from a stand-in) is a problem it
    reports: exit 1 with its message. Any other UNAVAILABLE (a shutdown, a lost connection)
    means the daemon is not there to answer: "cannot reach", exit 3."""
    from concurrent import futures
    import grpc

    answer = {}

    class StandIn(admin_pb2_grpc.AdminServicer):
        def Status(self, request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, answer["message"])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    admin_pb2_grpc.add_AdminServicer_to_server(StandIn(), server)
    socket = tmp_path / "stand-in.sock"
    server.add_insecure_port("unix:" + str(socket))
    server.start()
    try:
        for message, code in (("spool failed earlier and refuses writes: disk I/O error", 1),
                              ("spool: shutting down", 3),
                              ("toolgated is shutting down", 3),
                              ("Socket closed", 3)):
            answer["message"] = message
            r = run_cli(["status"], "unix:" + str(socket))
            assert r.returncode == code, (message, r.stderr)
            assert message in r.stderr
            assert ("cannot reach" in r.stderr) == (code == 3), r.stderr
    finally:
        server.stop(None)


def test_readme_lists_every_command_and_the_exit_codes():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The `toolgate` command", 1)[1].split("\n## ", 1)[0]
    for name in commands_from_help():
        assert re.search(r"^  " + re.escape(name) + r"\b", section, re.M), \
            f"README's CLI section does not list `{name}`"
    for code in ("0", "1", "2", "3"):
        assert re.search(rf"^\| {code} \|", section, re.M), f"exit code {code} not in README"
