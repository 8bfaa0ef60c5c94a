"""Upstream faults: slow answers, resets mid-body, DNS failure, an unverifiable certificate, 401.

The real toolgated against the fake upstream. Whatever the upstream does, acknowledged events
stay in the spool until a 2xx, the failure is named in `toolgate status` and in the log, and an
eventId is only ever resent with the same bytes. (Resets before the answer and answers slower
than the timeout for one request are in test_audit_path.py; 503 for 20 s and 429 Retry-After
too.)
"""
import json
import selectors
import socket
import struct
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import API_KEY, tool_event, wait_until
from fake_upstream import FakeUpstream
from test_crash import check_duplicates_identical, verify_chains
from toolgate.v1 import events_pb2

FAST = ["--set", "upstream.backoff_initial=100ms", "--set", "upstream.backoff_max=1s",
        "--set", "batch.max_delay=20ms", "--set", "shutdown_timeout=1s"]


def record(daemon, n, session="s-up"):
    r = daemon.events().Record(events_pb2.RecordRequest(
        events=[tool_event(session=session, args=json.dumps({"i": i})) for i in range(n)]),
        timeout=10)
    return list(r.event_ids)


def metric(daemon, name):
    text = urllib.request.urlopen(daemon.http_address + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def log_lines(daemon):
    return [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]


def assert_delivered_once_or_identically(upstream, ids, tmp_path):
    wait_until(lambda: set(ids) <= set(upstream.event_ids()), timeout=60,
               what="every acknowledged event delivered")
    received = upstream.events()
    extra = check_duplicates_identical(received)
    verify_chains(received, tmp_path / "received.jsonl")
    return extra


# --- Slow answers -------------------------------------------------------------------------------


def test_10_second_answers_with_a_2s_timeout_are_retried_nothing_lost(make_daemon, upstream,
                                                                        tmp_path):
    d = make_daemon(upstream=upstream, args=FAST + [
        "--set", "upstream.timeout=2s", "--set", "upstream.ingest_format=array"]).start()
    upstream.slow(10)  # every answer takes 10 s (the fake records the events before waiting)
    ids = record(d, 12)
    wait_until(lambda: set(ids) <= set(upstream.event_ids()), timeout=30,
               what="the first (timed-out) copies to arrive")
    wait_until(lambda: "timed out" in d.status().upstream_last_error.lower(), timeout=30,
               what="the timeout reported")
    assert d.status().upstream_state == "retrying"
    assert d.status().queue_depth == 12  # nothing counted as delivered without an answer
    upstream.slow(0)
    wait_until(lambda: d.status().queue_depth == 0, timeout=60, what="queue drained")
    extra = assert_delivered_once_or_identically(upstream, ids, tmp_path)
    assert extra >= 12, "the timed-out batch was sent again whole"
    assert metric(d, "toolgate_upstream_requests_retried_total") >= 1
    assert d.status().upstream_state == "ok"


# --- Connections reset in the middle of a body -----------------------------------------------


class CuttingProxy:
    """A TCP proxy in front of an HTTP/1.1 server that cuts chosen exchanges with an RST.

    Requests and answers are stored and forwarded whole (both carry Content-Length), except:
    cut_requests(n): the next n requests are forwarded up to the middle of their body, then both
    connections are reset (the server never gets a whole request); cut_answers(n): the next n
    answers are forwarded up to the middle of their body, then the client's connection is reset
    (the server has done the work; the client cannot know). Thread-safe.
    """

    def __init__(self, target_port):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pending = {"request": 0, "answer": 0}
        self.cut = {"request": 0, "answer": 0}
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def cut_requests(self, n):
        with self._lock:
            self._pending["request"] += n

    def cut_answers(self, n):
        with self._lock:
            self._pending["answer"] += n

    def cuts(self):
        with self._lock:
            return dict(self.cut)

    def close(self):
        self._closed = True
        self._listener.close()

    def _take(self, kind):
        with self._lock:
            if self._pending[kind] > 0:
                self._pending[kind] -= 1
                self.cut[kind] += 1
                return True
            return False

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client, server), daemon=True).start()

    @staticmethod
    def _reset(*socks):
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            s.close()

    @staticmethod
    def _frame(buf):
        """(message length, header length) of the first whole message in buf, or (None, None)."""
        if b"\r\n\r\n" not in buf:
            return None, None
        head_end = buf.index(b"\r\n\r\n") + 4
        length = 0
        for line in buf[:head_end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(buf) < head_end + length:
            return None, None
        return head_end + length, head_end

    def _serve(self, client, server):
        # One thread per connection pair, so that a reset is never delayed by a blocked read.
        peer = {client: server, server: client}
        kind = {client: "request", server: "answer"}
        bufs = {client: b"", server: b""}
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ)
        sel.register(server, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in sel.select():
                    src = key.fileobj
                    data = src.recv(65536)
                    if not data:
                        raise EOFError
                    bufs[src] += data
                    while True:
                        size, head = self._frame(bufs[src])
                        if size is None:
                            break
                        message, bufs[src] = bufs[src][:size], bufs[src][size:]
                        body = size - head
                        if body >= 2 and self._take(kind[src]):
                            peer[src].sendall(message[:head + body // 2])
                            time.sleep(0.05)  # let the half body arrive before the reset
                            sel.close()
                            self._reset(client, server)
                            return
                        peer[src].sendall(message)
        except (OSError, EOFError, ValueError):
            sel.close()
            client.close()
            server.close()


def test_connections_reset_mid_request_body_and_mid_answer_body_lose_nothing(make_daemon,
                                                                              upstream, tmp_path):
    proxy = CuttingProxy(upstream.port)
    try:
        d = make_daemon(args=FAST + ["--upstream-url", proxy.url, "--set",
                                     "upstream.max_in_flight=2"],
                        env={"TOOLGATE_API_KEY": API_KEY}).start()
        proxy.cut_requests(3)
        proxy.cut_answers(3)
        ids = record(d, 10) + record(d, 10, session="s-up-2")
        wait_until(lambda: d.status().queue_depth == 0, timeout=60, what="queue drained")
        assert proxy.cuts() == {"request": 3, "answer": 3}
        extra = assert_delivered_once_or_identically(upstream, ids, tmp_path)
        # A cut answer leaves the upstream with a copy the daemon cannot know of: it resends.
        assert extra >= 3
        assert metric(d, "toolgate_upstream_requests_retried_total") >= 6
        # The request cut in its body never reached the upstream's handler as an event.
        assert len([r for r in upstream.requests() if r["path"] == "/v1/events"]) >= 20
    finally:
        proxy.close()


# --- DNS ----------------------------------------------------------------------------------------


def test_dns_failure_is_named_events_kept_and_delivered_once_the_url_is_fixed(make_daemon,
                                                                               upstream, tmp_path):
    d = make_daemon(args=FAST + ["--upstream-url", "http://upstream.invalid:8080",
                                 "--set", "upstream.connect_timeout=2s"],
                    env={"TOOLGATE_API_KEY": API_KEY}, name="dns").start()
    ids = record(d, 5)
    wait_until(lambda: "upstream.invalid" in d.status().upstream_last_error, timeout=30,
               what="the DNS failure reported")
    st = d.status()
    assert "resolve" in st.upstream_last_error.lower(), st.upstream_last_error
    assert st.upstream_state == "retrying" and st.queue_depth == 5
    failed = [x for x in log_lines(d) if x["msg"] == "upstream request failed; will retry"]
    assert failed and "upstream.invalid" in failed[0]["error"]
    assert metric(d, "toolgate_upstream_up") == 0
    assert d.stop() == 0
    # The URL is configuration: fixed, and the daemon restarted on the same data directory.
    d2 = make_daemon(upstream=upstream, args=FAST, name="dns").start()
    ids += record(d2, 2)
    assert_delivered_once_or_identically(upstream, ids, tmp_path)
    wait_until(lambda: d2.status().queue_depth == 0, what="queue drained")


# --- TLS ----------------------------------------------------------------------------------------


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A private CA and a certificate for 127.0.0.1 signed by it (openssl CLI, EC P-256)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=toolgate test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                               "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


@pytest.fixture
def tls_upstream(tls_files):
    up = FakeUpstream(api_key=API_KEY, tls=(str(tls_files / "server.pem"),
                                            str(tls_files / "server.key"))).start()
    yield up
    up.stop()


def test_unverifiable_certificate_is_named_and_works_once_ca_file_points_at_the_ca(
        make_daemon, tls_upstream, tls_files, tmp_path):
    assert tls_upstream.url.startswith("https://")
    d = make_daemon(upstream=tls_upstream, args=FAST, name="tls").start()
    ids = record(d, 4)
    wait_until(lambda: "certificate" in d.status().upstream_last_error, timeout=30,
               what="the certificate problem reported")
    st = d.status()
    assert "SSL certificate problem" in st.upstream_last_error, st.upstream_last_error
    assert st.upstream_state == "retrying" and st.queue_depth == 4
    assert tls_upstream.event_ids() == []  # nothing went over an unverified connection
    failed = [x for x in log_lines(d) if x["msg"] == "upstream request failed; will retry"]
    assert failed and "certificate" in failed[0]["error"]
    assert not [x for x in log_lines(d) if "TLS verification" in x["msg"]]
    assert d.stop() == 0

    d2 = make_daemon(upstream=tls_upstream, name="tls", args=FAST + [
        "--set", f"upstream.ca_file={tls_files / 'ca.pem'}"]).start()
    ids += record(d2, 2)
    assert_delivered_once_or_identically(tls_upstream, ids, tmp_path)
    wait_until(lambda: d2.status().upstream_state == "ok", what="upstream ok")


def test_tls_verification_is_off_only_by_the_explicit_option_with_a_warning(make_daemon,
                                                                            tls_upstream):
    d = make_daemon(upstream=tls_upstream, args=FAST + [
        "--set", "upstream.insecure_skip_verify=true"]).start()
    warnings = [x for x in log_lines(d) if "TLS verification of the upstream is OFF" in x["msg"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "warn"
    ids = record(d, 2)
    wait_until(lambda: set(ids) <= set(tls_upstream.event_ids()), timeout=30, what="delivery")


# --- 401 ----------------------------------------------------------------------------------------


def test_401_is_loud_pauses_shipping_and_keeps_the_events(make_daemon, upstream, tmp_path):
    d = make_daemon(upstream=upstream, env={"TOOLGATE_API_KEY": "al_not_the_right_key_0000"},
                    args=FAST + ["--set", "upstream.auth_failure_pause=30s",
                                 "--set", "upstream.max_in_flight=1"], name="auth").start()
    ids = record(d, 3)
    wait_until(lambda: d.status().upstream_state == "paused", timeout=30, what="paused")
    errors = [x for x in log_lines(d)
              if x["msg"] == "upstream refused the API key: shipping paused, events kept"]
    assert errors and errors[0]["level"] == "error" and errors[0]["status"] == 401
    assert "401" in d.status().upstream_last_error
    assert metric(d, "toolgate_upstream_up") == 0
    # Paused: more events are taken and kept, and nothing is sent for the pause.
    ids += record(d, 3)
    time.sleep(0.3)
    sent = len(upstream.requests())
    time.sleep(1.5)
    assert len(upstream.requests()) == sent
    assert d.status().queue_depth == 6 and upstream.event_ids() == []
    assert d.stop() == 0
    # The key is fixed (configuration: a restart on the same data directory).
    d2 = make_daemon(upstream=upstream, args=FAST, name="auth").start()
    assert_delivered_once_or_identically(upstream, ids, tmp_path)
    wait_until(lambda: d2.status().queue_depth == 0, what="queue drained")
