"""Secrets never leak: a full daemon session with every secret set, every output searched.

The API key, the HMAC key and the admin key are read from files (mode 0600); the session ships
events (and hits a 401 and a 503 on the way), streams, asks Check, waits for an approval decided
over the admin HTTP endpoints (with a wrong key first), reloads the policy and stops. Every log
line (stderr, at debug level), `--print-config` (secrets from files and from the environment),
the admin answers and the files of the data directory are searched for each secret. Positive
controls make sure each secret was really in use: the upstream saw the API key as the Bearer
token, argumentsHash is the HMAC with the key, the admin key opened the endpoints.
"""
import hashlib
import hmac
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import TOOLGATED, tool_event, wait_until
from fake_upstream import FakeUpstream
from toolgate.v1 import events_pb2, policy_pb2, policy_pb2_grpc

API = "al_live_secret_api_key_7f3c1d9e5b2a4680"
HMAC_KEY = "hmac-secret-key-0c8e6a4f2d1b3957"
ADMIN = "admin-secret-key-9a7b5c3d1e2f4068"
SECRETS = {"api key": API, "hmac key": HMAC_KEY, "admin key": ADMIN}

POLICY = """
revision: "s1"
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
"""


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def secret_file(path, value):
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def admin_request(daemon, method, path, key, body=None):
    req = urllib.request.Request(daemon.http_address + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if key is not None:
        req.add_header("Authorization", "Bearer " + key)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def assert_no_secret(text, where):
    for name, value in SECRETS.items():
        # The whole secret, and its distinctive middle, in case of truncation or masking.
        for needle in (value, value[8:24]):
            assert needle not in text, f"the {name} appears in {where}"


@pytest.fixture
def upstream():
    up = FakeUpstream(api_key=API).start()  # demands this session's key
    yield up
    up.stop()


def test_no_secret_in_any_log_line_printed_config_or_file(make_daemon, upstream, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    files = {
        "upstream.api_key_file": secret_file(tmp_path / "api.key", API),
        "hash.hmac_key_file": secret_file(tmp_path / "hmac.key", HMAC_KEY),
        "admin_key_file": secret_file(tmp_path / "admin.key", ADMIN),
    }
    args = ["--upstream-url", upstream.url, "--log-level", "debug",
            "--set", f"policy.file={policy}", "--set", "upstream.backoff_initial=50ms",
            "--set", "upstream.backoff_max=200ms", "--set", "upstream.auth_failure_pause=300ms",
            "--set", "batch.max_delay=20ms"]
    for key, path in files.items():
        args += ["--set", f"{key}={path}"]
    d = make_daemon(args=args).start()

    # Events, unary and streamed, through a 401 and a 503.
    upstream.fail_next(1, status=401)
    upstream.fail_next(1, status=503)
    arguments = {"q": "quarterly report", "n": 3}
    r = d.events().Record(events_pb2.RecordRequest(
        events=[tool_event(args=json.dumps(arguments))]), timeout=10)
    acks = list(d.events().Stream(iter([events_pb2.StreamRequest(
        sequence=1, events=[tool_event(session="s-2") for _ in range(5)])]), timeout=10))
    assert acks[0].code == 0
    # Check, a pending action, and its decision over HTTP with a wrong key, then the right one.
    policy_stub = policy_pb2_grpc.PolicyStub(d.channel())
    action = policy_pb2.Action(agent_id="agent-1", session_id="s-3", tool_name="send_payment",
                               arguments_json='{"amount": 5000}')
    check = policy_stub.Check(policy_pb2.CheckRequest(action=action), timeout=10)
    assert check.pending_action_id
    status, _ = admin_request(d, "GET", "/v1/guardian/pending-actions", "wrong-" + ADMIN[6:])
    assert status == 401
    status, body = admin_request(d, "GET", "/v1/guardian/pending-actions", ADMIN)
    assert status == 200 and check.pending_action_id in body
    assert_no_secret(body, "an admin answer")
    status, body = admin_request(
        d, "POST", f"/v1/guardian/pending-actions/{check.pending_action_id}/decide", ADMIN,
        {"decision": "approved", "reason": "checked", "approverId": "alice"})
    assert status == 200
    assert_no_secret(body, "an admin answer")
    d.proc.send_signal(signal.SIGHUP)  # a policy reload logs too
    wait_until(lambda: "SIGHUP" in d.logs(), what="the reload")
    assert upstream.wait_for_events(7, timeout=30)
    wait_until(lambda: d.status().queue_depth == 0, timeout=30, what="queue drained")
    status_text = d.cli("--output", "json", "status").stdout
    assert d.stop() == 0

    # Positive controls: each secret was in use.
    sent = [x for x in upstream.requests() if x["path"] == "/v1/events"]
    assert {x["status"] for x in sent} >= {401, 503, 202}
    assert all(x["headers"]["authorization"] == "Bearer " + API for x in sent)
    first = [e for e in upstream.events() if e["eventId"] == r.event_ids[0]][0]
    assert first["payload"]["argumentsHash"] == hmac.new(
        HMAC_KEY.encode(), canonical(arguments).encode(), hashlib.sha256).hexdigest()
    logs = d.logs()
    assert "upstream refused the API key" in logs  # the 401 was logged, loudly

    # Nothing leaks: logs, status, the data directory.
    assert_no_secret(logs, "the daemon's log")
    assert_no_secret(status_text, "toolgate status")
    for path in d.data_dir.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes().decode("latin-1"), str(path))

    # --print-config: secrets from files, then from the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    out = subprocess.run([TOOLGATED, "--print-config", *args], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "api key: set" in out.stdout and "hmac key: set" in out.stdout
    assert "admin key: set" in out.stdout
    assert_no_secret(out.stdout + out.stderr, "--print-config (key files)")
    env.update({"TOOLGATE_API_KEY": API, "TOOLGATE_HMAC_KEY": HMAC_KEY,
                "TOOLGATE_ADMIN_KEY": ADMIN})
    out = subprocess.run([TOOLGATED, "--print-config", "--upstream-url", upstream.url],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": set") >= 3
    assert_no_secret(out.stdout + out.stderr, "--print-config (environment)")
