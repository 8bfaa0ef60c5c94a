"""Disk faults: a full spool, a full filesystem, an unreadable spool or guardian database.

The real toolgated against the fake upstream. A full spool or disk must push back on clients
(RESOURCE_EXHAUSTED with a retry hint), lose and corrupt nothing, and let writes resume by
themselves once the upstream drains the queue or space returns. An unreadable database at
start-up must be moved aside (with an error log line and a metric) instead of stopping the
daemon, which under a supervisor would be a crash loop.
"""
import json
import os
import queue
import sqlite3
import subprocess
import threading
import time
import urllib.request
import uuid

import grpc
import pytest

from conftest import tool_event, wait_until
from test_crash import check_duplicates_identical, verify_chains
from toolgate.v1 import events_pb2, events_pb2_grpc

FAST = ["--set", "upstream.backoff_initial=50ms", "--set", "upstream.backoff_max=500ms",
        "--set", "batch.max_delay=20ms", "--set", "upstream.ingest_format=array"]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


class RetryingStreamClient(threading.Thread):
    """One Events.Stream sending batches one at a time, as a well-behaved agent would: a batch
    refused with RESOURCE_EXHAUSTED is sent again after the ack's retry_after_ms.

    Sends `batches` batches, or new batches until `stop` is set (its last one is still retried
    until acknowledged).
    """

    def __init__(self, daemon, i, size=10, batches=None, pad=0):
        super().__init__(daemon=True)
        self.daemon_under_test = daemon
        self.i = i
        self.size = size
        self.batches = batches
        self.pad = pad
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked = []
        self.refusals = []  # (retry_after_ms, message) of each RESOURCE_EXHAUSTED ack
        self.errors = []
        self._n = 0

    def _batch(self):
        evs = []
        for _ in range(self.size):
            evs.append(tool_event(agent=f"disk-agent-{self.i}",
                                  session=f"disk-{self.i}-{self._n % 3}",
                                  args=json.dumps({"n": self._n, "pad": "x" * self.pad,
                                                   "r": uuid.uuid4().hex})))
            self._n += 1
        return evs

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def refusal_count(self):
        with self.lock:
            return len(self.refusals)

    def run(self):
        q = queue.Queue()

        def requests():
            while True:
                item = q.get()
                if item is None:
                    return
                yield item

        stub = events_pb2_grpc.EventsStub(self.daemon_under_test.channel())
        seq, sent = 1, 0
        current = self._batch()
        q.put(events_pb2.StreamRequest(sequence=seq, events=current))
        try:
            for ack in stub.Stream(requests(), timeout=300):
                if ack.code == 0:
                    with self.lock:
                        self.acked.extend(ack.event_ids)
                    sent += 1
                    if (self.batches is not None and sent >= self.batches) or self.stop.is_set():
                        q.put(None)
                        continue
                    current = self._batch()
                elif ack.code == RESOURCE_EXHAUSTED:
                    with self.lock:
                        self.refusals.append((ack.retry_after_ms, ack.message))
                    time.sleep(ack.retry_after_ms / 1000)
                else:
                    self.errors.append((ack.code, ack.message))
                    q.put(None)
                    continue
                seq += 1
                q.put(events_pb2.StreamRequest(sequence=seq, events=current))
        except grpc.RpcError as e:
            self.errors.append((e.code(), e.details()))


def metrics(daemon):
    return urllib.request.urlopen(daemon.http_address + "/metrics", timeout=10).read().decode()


def metric(daemon, name):
    for line in metrics(daemon).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def healthz(daemon):
    try:
        return urllib.request.urlopen(daemon.http_address + "/healthz", timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


def integrity_check(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()


def finish_and_check_delivery(clients, daemon, upstream, tmp_path):
    """Stops the clients, waits for delivery, and checks what arrived; returns the acked ids."""
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(120)
        assert not c.is_alive(), "a client did not finish"
        assert not c.errors, c.errors[:3]
    acked = {eid for c in clients for eid in c.acked}
    wait_until(lambda: acked <= set(upstream.event_ids()), timeout=120, interval=0.2,
               what="every acknowledged event delivered")
    wait_until(lambda: daemon.status().queue_depth == 0, timeout=60, what="queue drained")
    received = upstream.events()
    check_duplicates_identical(received)
    verify_chains(received, tmp_path / "received.jsonl")
    return acked


def test_tiny_spool_limit_pushes_back_and_recovers_when_the_upstream_drains(make_daemon, upstream,
                                                                           tmp_path):
    d = make_daemon(upstream=upstream, args=FAST + [
        "--set", "spool.max_bytes=64KiB", "--set", "spool.retry_after=200ms"]).start()
    upstream.fail_for(3600, status=503)
    clients = [RetryingStreamClient(d, i, size=10, batches=30) for i in range(3)]
    for c in clients:
        c.start()
    # Full: every client is pushed back with the configured hint, nothing fails.
    wait_until(lambda: all(c.refusal_count() >= 2 for c in clients), timeout=60,
               what="every client refused")
    retry_after_ms, message = clients[0].refusals[0]
    assert retry_after_ms == 200 and "retry after 200 ms" in message
    assert "spool full" in message
    st = d.status()
    assert st.spool_bytes <= 64 * 1024 and not st.spool_failed
    # Acknowledged = stored, no more, no less.
    wait_until(lambda: d.status().queue_depth == sum(c.acked_count() for c in clients),
               what="acknowledged events all stored")
    assert metric(d, "toolgate_requests_refused_full_total") > 0
    assert healthz(d) == 200
    # The upstream comes back: the queue drains, the retried batches go in, all by themselves.
    upstream.clear_faults()
    for c in clients:
        c.join(120)
    acked = finish_and_check_delivery(clients, d, upstream, tmp_path)
    assert len(acked) == 3 * 30 * 10
    assert d.stop() == 0
    assert integrity_check(d.data_dir / "spool.db") == [("ok",)]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 MiB tmpfs (needs root; CI runs as root). Unmounted after the test's daemons stop."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("min_free_disk,refusal", [
    ("24MiB", "spool.min_free_disk is 25165824"),  # appends stop before the disk is full
    ("0", "database or disk is full"),           # no headroom: SQLite's own SQLITE_FULL
], ids=["headroom", "enospc"])
def test_full_filesystem_pushes_back_and_recovers_by_itself(small_filesystem, make_daemon,
                                                            upstream, tmp_path, min_free_disk,
                                                            refusal):
    data_dir = small_filesystem / "data"
    d = make_daemon(upstream=upstream, args=FAST + [
        "--data-dir", str(data_dir), "--set", "spool.retry_after=100ms",
        "--set", f"spool.min_free_disk={min_free_disk}"])
    d.data_dir = data_dir
    d.start()
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (16 << 20))
    upstream.fail_for(3600, status=503)
    clients = [RetryingStreamClient(d, i, size=20, pad=400) for i in range(3)]
    try:
        for c in clients:
            c.start()
        # The disk fills up; the spool's own bound (1 GiB by default) is far away.
        wait_until(lambda: all(c.refusal_count() >= 1 for c in clients), timeout=90,
                   what="clients refused on a full disk")
        _, message = clients[0].refusals[0]
        assert "disk full" in message and refusal in message, message
        assert "retry after 100 ms" in message
        warnings = [json.loads(line) for line in d.logs().splitlines()
                    if '"spool: disk full' in line]
        assert warnings and warnings[0]["level"] == "warn"
        assert not d.status().spool_failed and healthz(d) == 200
        assert metric(d, "toolgate_spool_disk_full") == 1
        wait_until(lambda: d.status().queue_depth == sum(c.acked_count() for c in clients),
                   what="acknowledged events all stored")

        # Space returns: writes resume by themselves, with the upstream still down.
        before = sum(c.acked_count() for c in clients)
        filler.unlink()
        wait_until(lambda: sum(c.acked_count() for c in clients) >= before + 600, timeout=60,
                   what="writes resumed after space returned")
        assert "disk space is back" in d.logs()
        assert metric(d, "toolgate_spool_disk_full") == 0
        if min_free_disk != "0":
            # Full again; the upstream comes back: the deletes of shipped chunks commit in the
            # headroom and their pages are reused, so writes resume without any space returning.
            refused = sum(c.refusal_count() for c in clients)
            wait_until(lambda: sum(c.refusal_count() for c in clients) > refused + 3,
                       timeout=90, what="the disk full again")
            upstream.clear_faults()
            before = sum(c.acked_count() for c in clients)
            wait_until(lambda: sum(c.acked_count() for c in clients) >= before + 3000,
                       timeout=120, what="writes resumed after the queue drained")
        else:
            upstream.clear_faults()
        finish_and_check_delivery(clients, d, upstream, tmp_path)
        assert not d.status().spool_failed
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(30)
        assert d.stop() == 0
    assert integrity_check(data_dir / "spool.db") == [("ok",)]


# --- An unreadable database at start-up -------------------------------------------------------


def _garbage(path):
    path.write_bytes(os.urandom(200_000))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def _garbage_wal(path):
    (path.parent / (path.name + "-wal")).write_bytes(os.urandom(100_000))


@pytest.mark.parametrize("damage,db_kept", [(_garbage, False), (_truncate, False),
                                            (_garbage_wal, True)],
                         ids=["garbage", "truncated", "garbage-wal"])
def test_unreadable_spool_at_start_up_is_moved_aside_and_the_daemon_runs(make_daemon, upstream,
                                                                        tmp_path, damage,
                                                                        db_kept):
    d = make_daemon(upstream=upstream, args=FAST + ["--set", "shutdown_timeout=1s"])
    d.start()
    upstream.fail_for(3600, status=503)
    # Enough events that the file spans many pages, kept in the spool by the upstream outage.
    for _ in range(10):
        d.events().Record(events_pb2.RecordRequest(
            events=[tool_event(args=json.dumps({"pad": "y" * 2000})) for _ in range(50)]),
            timeout=10)
    kept = d.status().queue_depth
    assert kept == 500
    assert d.stop() == 0
    spool = d.data_dir / "spool.db"
    damage(spool)

    d.start()  # starts, instead of exiting into a crash loop
    errors = [json.loads(line) for line in d.logs().splitlines()
              if line.startswith("{") and '"level":"error"' in line and "moved aside" in line]
    assert errors, d.logs()[-2000:]
    assert errors[-1]["path"] == str(spool)
    assert all(".corrupt-" in m for m in errors[-1]["moved_to"])
    assert all(os.path.exists(m) for m in errors[-1]["moved_to"])
    assert metric(d, "toolgate_spool_corrupt_moved_total") == 1
    assert d.status().queue_depth == (kept if db_kept else 0)
    # It takes events and ships them.
    upstream.clear_faults()
    r = d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    wait_until(lambda: r.event_ids[0] in upstream.event_ids(), timeout=30, what="delivery")
    wait_until(lambda: d.status().queue_depth == 0, timeout=60, what="queue drained")
    # The next start finds a sound store: nothing more is moved.
    assert d.stop() == 0
    d.start()
    assert metric(d, "toolgate_spool_corrupt_moved_total") == 0
    assert healthz(d) == 200


def test_unreadable_guardian_db_at_start_up_is_moved_aside(make_daemon):
    d = make_daemon()
    d.start()
    assert d.stop() == 0
    _garbage(d.data_dir / "guardian.db")
    d.start()
    assert metric(d, "toolgate_guardian_corrupt_moved_total") == 1
    assert list(d.data_dir.glob("guardian.db.corrupt-*"))
    assert d.cli("pending").returncode == 0


def test_a_damaged_chunk_is_set_aside_and_the_rest_is_delivered(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST + ["--set", "upstream.ingest_format=array",
                                                    "--set", "shutdown_timeout=1s"])
    d.start()
    upstream.fail_for(3600, status=503)  # everything stays in the spool meanwhile
    ids = []
    for _ in range(3):  # three requests, three chunks
        r = d.events().Record(events_pb2.RecordRequest(events=[tool_event() for _ in range(4)]),
                              timeout=10)
        ids.append(list(r.event_ids))
    assert d.stop() == 0
    db = sqlite3.connect(str(d.data_dir / "spool.db"), timeout=10)
    seqs = [row[0] for row in db.execute("SELECT seq FROM chunks ORDER BY seq")]
    assert len(seqs) == 3
    with db:  # the middle chunk's bytes damaged on disk while the daemon was down
        db.execute("UPDATE chunks SET body = x'ffffff7f00' WHERE seq = ?", (seqs[1],))
    d.start()
    upstream.clear_faults()
    wait_until(lambda: d.status().queue_depth == 0, timeout=30, what="the queue drained")
    assert set(upstream.event_ids()) == set(ids[0] + ids[2])
    assert metric(d, "toolgate_spool_damaged_events_total") == 4
    assert "a stored chunk is damaged" in d.logs()
    kept = db.execute("SELECT seq, count FROM damaged_chunks").fetchall()
    assert kept == [(seqs[1], 4)]
    db.close()
    # Events keep flowing after it.
    r = d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    assert upstream.wait_for_events(9, timeout=20)
    assert r.event_ids[0] in upstream.event_ids()
