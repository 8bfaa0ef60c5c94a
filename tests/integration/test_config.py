"""Configuration errors are fatal and name the key; secrets never reach the logs or argv."""
import os
import subprocess

import pytest

from conftest import API_KEY, TOOLGATED, tool_event
from toolgate.v1 import events_pb2


def run(args, env=None, tmp_path=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    e.update(env or {})
    return subprocess.run([TOOLGATED, *args], capture_output=True, text=True, env=e, timeout=30)


@pytest.mark.parametrize("yaml,needle", [
    ("upstream:\n  urll: http://x\n", "unknown key 'upstream.urll'"),
    ("batch:\n  max_events: lots\n", "batch.max_events"),
    ("upstream:\n  ingest_format: xml\n", "upstream.ingest_format"),
    ("listen: [a, b]\n", "listen"),
])
def test_bad_config_file_exits_non_zero_naming_the_key(tmp_path, yaml, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml)
    r = run(["--config", str(cfg), "--data-dir", str(tmp_path / "d")])
    assert r.returncode == 2
    assert needle in r.stderr


def test_bad_environment_and_flags(tmp_path):
    r = run(["--data-dir", str(tmp_path)], env={"TOOLGATE_BATCH_MAX_DELAY": "soon"})
    assert r.returncode == 2 and "TOOLGATE_BATCH_MAX_DELAY" in r.stderr
    r = run(["--no-such-flag"])
    assert r.returncode == 2 and "--no-such-flag" in r.stderr
    r = run(["--api-key", API_KEY])
    assert r.returncode == 2 and "command line" in r.stderr
    assert API_KEY not in r.stderr


def test_unreadable_or_world_readable_key_file(tmp_path):
    r = run(["--upstream-url", "http://127.0.0.1:9", "--api-key-file", str(tmp_path / "missing"),
             "--data-dir", str(tmp_path / "d")])
    assert r.returncode == 2 and "upstream.api_key_file" in r.stderr
    key = tmp_path / "key"
    key.write_text(API_KEY + "\n")
    key.chmod(0o644)
    r = run(["--upstream-url", "http://127.0.0.1:9", "--api-key-file", str(key),
             "--data-dir", str(tmp_path / "d")])
    assert r.returncode == 2 and "world-readable" in r.stderr
    assert API_KEY not in r.stderr


def test_api_key_never_in_logs_or_printed_config(make_daemon, upstream, tmp_path):
    key = tmp_path / "key"
    key.write_text(API_KEY + "\n")
    key.chmod(0o600)
    d = make_daemon(args=["--upstream-url", upstream.url, "--api-key-file", str(key),
                          "--log-level", "debug"]).start()
    d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    assert upstream.wait_for_events(1)
    upstream.fail_next(1, status=401)
    d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    d.stop()
    assert "API key" in d.logs()  # the 401 is reported loudly ...
    assert API_KEY not in d.logs()  # ... without the key
    r = run(["--print-config", "--upstream-url", upstream.url, "--api-key-file", str(key)])
    assert r.returncode == 0 and API_KEY not in r.stdout and "api key: set" in r.stdout


def test_help_and_version():
    r = run(["--help"])
    assert r.returncode == 0 and "--upstream-url" in r.stdout and "upstream.max_in_flight" in r.stdout
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("toolgated ")


def test_secure_defaults_loopback_only_and_a_0660_socket(make_daemon, tmp_path):
    """Without configuration, gRPC and HTTP listen on loopback only, the Unix socket is 0660
    (the daemon's user and group) and the data directory 0700."""
    import stat
    r = run(["--print-config"])
    assert r.returncode == 0, r.stderr
    lines = dict(l.split(": ", 1) for l in r.stdout.splitlines() if l and not l.startswith(" ")
                 and ": " in l)
    assert lines["listen"] == '"127.0.0.1:7470"'
    assert lines["http_listen"] == '"127.0.0.1:7471"'
    assert lines["socket_mode"] == '"0660"'
    d = make_daemon().start()
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o660
    # The spool is the daemon's alone: the socket's group may talk to it, not read its store.
    assert stat.S_IMODE(os.stat(d.data_dir).st_mode) == 0o700
    assert d.grpc_address.startswith("127.0.0.1:")
    assert d.http_address.startswith("http://127.0.0.1:")
