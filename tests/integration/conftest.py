"""Harness for the integration tests: runs the real toolgated and toolgate binaries.

The binaries and the generated Python stubs come from the build (ctest passes their paths in
TOOLGATED, TOOLGATE_CLI and TOOLGATE_PYTHON_STUBS). Every daemon gets a temporary data
directory, a Unix socket in it, and port 0 for TCP and HTTP; the bound addresses are read from
its "toolgated started" log line.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
TOOLGATED = os.environ.get("TOOLGATED", str(BUILD / "daemon" / "toolgated"))
TOOLGATE_CLI = os.environ.get("TOOLGATE_CLI", str(BUILD / "client" / "toolgate"))
sys.path.insert(0, os.environ.get("TOOLGATE_PYTHON_STUBS", str(BUILD / "python")))
sys.path.insert(0, str(ROOT / "tests" / "fake_upstream"))

import grpc  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402
from toolgate.v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc  # noqa: E402

API_KEY = "al_test_integration_secret_0123456789"
# Generous: under TSan the daemon and the CLI run ~10x slower; a hang still fails, later.
CLI_TIMEOUT = 120


class Daemon:
    """One toolgated process. Restartable on the same data directory."""

    def __init__(self, workdir: Path, args=(), env=None, config=None):
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.socket = workdir / "tg.sock"
        self.log_path = workdir / "toolgated.log"
        self.args = list(args)
        self.env = dict(env or {})
        self.config = config
        self.proc = None
        self.grpc_address = None
        self.http_address = None
        self._channel = None

    def start(self, timeout=20.0):
        cmd = [TOOLGATED, "--data-dir", str(self.data_dir), "--socket", str(self.socket),
               "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"] + self.args
        if self.config is not None:
            cfg = self.workdir / "toolgate.yaml"
            cfg.write_text(self.config)
            cmd += ["--config", str(cfg)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
        env.update(self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, env=env)
        started = threading.Event()

        def pump():
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                if b'"toolgated started"' in line:
                    info = json.loads(line)
                    self.grpc_address = info.get("grpc")
                    self.http_address = info.get("http")
                    started.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + timeout
        while not started.wait(0.05):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("toolgated did not start:\n" + self.log_path.read_text())
        self._channel = None
        return self

    def channel(self):
        if self._channel is None:
            self._channel = grpc.insecure_channel("unix:" + str(self.socket))
        return self._channel

    def events(self):
        return events_pb2_grpc.EventsStub(self.channel())

    def admin(self):
        return admin_pb2_grpc.AdminStub(self.channel())

    def status(self):
        return self.admin().Status(admin_pb2.StatusRequest(), timeout=10)

    def cli_command(self):
        return [TOOLGATE_CLI, "--address", "unix:" + str(self.socket)]

    def cli(self, *args, check=True):
        r = subprocess.run([*self.cli_command(), *args],
                           capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if check and r.returncode != 0:
            raise AssertionError(f"toolgate {args} exited {r.returncode}: {r.stderr}")
        return r

    def logs(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=timeout)
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)


def tool_event(agent="agent-1", session="s-1", tool="search", args='{"q": "x"}', **kw):
    ev = events_pb2.Event(agent_id=agent, session_id=session, **kw)
    ev.tool_call.tool_name = tool
    ev.tool_call.arguments_json = args
    return ev


def wait_until(cond, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def upstream():
    up = FakeUpstream(api_key=API_KEY).start()
    yield up
    up.stop()


@pytest.fixture
def make_daemon(tmp_path):
    daemons = []

    def make(args=(), env=None, config=None, upstream=None, name="d"):
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        env = dict(env or {})
        args = list(args)
        if upstream is not None:
            args += ["--upstream-url", upstream.url]
            env.setdefault("TOOLGATE_API_KEY", API_KEY)
        d = Daemon(workdir, args=args, env=env, config=config)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        try:
            d.stop()
        except Exception:  # noqa: BLE001 - teardown must go on
            if d.proc:
                d.proc.kill()
    # Under the sanitizer builds, a report in any daemon's log fails the test.
    for d in daemons:
        logs = d.logs()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "WARNING: ThreadSanitizer"):
            if marker in logs:
                # Whole report: both stacks of a race (the second one decides a suppression).
                report = logs[logs.index(marker):]
                end = report.find("==================", 1)
                report = report[:end if 0 < end < 20000 else 20000]
                pytest.fail(f"{marker} in {d.log_path}:\n{report}")
