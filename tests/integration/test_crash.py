"""Crash loop: the real toolgated killed with SIGKILL at random moments under streaming load.

Several clients stream tool events on Events.Stream and remember every eventId the daemon
acknowledged. The daemon is killed (SIGKILL: no shutdown, no final commit) at random moments
while events are being committed and shipped, and restarted on the same data directory each
time; the clients reconnect. At the end:

* every acknowledged event reached the fake upstream (durable acknowledgement, at-least-once);
* every session's previousHash chain verifies (`toolgate verify`), across the restarts;
* an eventId received more than once was received with identical bytes each time (a resend, not
  a second event under the same id).

`run_crash_loop` is shared with the long version, tests/soak/crash_loop.py (50 kills).
"""
import json
import random
import subprocess
import threading
import time
import uuid

import grpc

from conftest import TOOLGATE_CLI, tool_event, wait_until
from toolgate.v1 import events_pb2, events_pb2_grpc

# Small upstream batches: a chunk (one group commit) is shipped in several requests, so a kill
# often lands while a chunk is partly acked, the case that produces resends.
CRASH_ARGS = ["--set", "upstream.ingest_format=array", "--set", "batch.max_events=25",
              "--set", "batch.max_delay=20ms", "--set", "upstream.backoff_initial=50ms",
              "--set", "upstream.backoff_max=500ms"]


class StreamingClients:
    """Client threads streaming tool events to whichever daemon process is up.

    Each acknowledged eventId is recorded. When the daemon dies under a stream the client waits
    until `up` is set again and opens a new stream. Thread-safe.
    """

    def __init__(self, socket_path, clients=4, batch=20):
        self.socket_path = socket_path
        self.batch = batch
        self.up = threading.Event()
        self.stop = threading.Event()
        self.errors = []  # unexpected non-OK acks
        self._lock = threading.Lock()
        self._acked = []
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self):
        self.up.set()
        for t in self._threads:
            t.start()
        return self

    def acked(self):
        with self._lock:
            return list(self._acked)

    def count(self):
        with self._lock:
            return len(self._acked)

    def finish(self, timeout=60):
        self.stop.set()
        self.up.set()
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a client did not finish"

    def _client(self, i):
        n = 0
        while not self.stop.is_set():
            self.up.wait()
            if self.stop.is_set():
                return
            channel = grpc.insecure_channel("unix:" + str(self.socket_path))
            stub = events_pb2_grpc.EventsStub(channel)

            def requests():
                nonlocal n
                seq = 0
                while not self.stop.is_set():
                    evs = []
                    for _ in range(self.batch):
                        evs.append(tool_event(agent=f"crash-agent-{i}",
                                              session=f"crash-{i}-{n % 4}",
                                              args=json.dumps({"n": n, "r": uuid.uuid4().hex})))
                        n += 1
                    seq += 1
                    yield events_pb2.StreamRequest(sequence=seq, events=evs)
            try:
                for ack in stub.Stream(requests(), timeout=300):
                    if ack.code == 0:
                        with self._lock:
                            self._acked.extend(ack.event_ids)
                    else:
                        self.errors.append((ack.code, ack.message))
            except grpc.RpcError:
                pass  # killed under us: wait for the next daemon
            finally:
                channel.close()
            if not self.stop.is_set():
                time.sleep(0.02)


def verify_chains(events, path):
    """`toolgate verify` over the events as JSON lines; returns its report (asserts it is ok)."""
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    r = subprocess.run([TOOLGATE_CLI, "--output", "json", "verify", str(path)],
                       capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"], report["problems"][:5]
    return report


def check_duplicates_identical(events):
    """Every copy of an eventId has the same content; returns how many copies were extra."""
    first = {}
    extra = 0
    for e in events:
        seen = first.setdefault(e["eventId"], e)
        if seen is not e:
            assert seen == e, f"eventId {e['eventId']} received with different bodies"
            extra += 1
    return extra


def run_crash_loop(daemon, upstream, workdir, kills, clients=4, seed=None, log=lambda s: None):
    """Starts `daemon`, kills it `kills` times under load, checks the outcome; returns figures."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    log(f"crash loop: {kills} kills, seed {seed}")
    daemon.start()
    load = StreamingClients(daemon.socket, clients=clients).start()
    started = time.time()
    try:
        for k in range(kills):
            # Let this daemon acknowledge something, then kill it at a random moment.
            floor = load.count() + 100
            wait_until(lambda: load.count() >= floor, timeout=60, what="acks after a restart")
            time.sleep(rng.uniform(0.0, 1.0))
            load.up.clear()
            daemon.kill9()
            log(f"kill {k + 1}: {load.count()} acked, {len(set(upstream.event_ids()))} received")
            # Sometimes the upstream is also failing across the restart.
            if rng.random() < 0.3:
                upstream.fail_for(rng.uniform(0.2, 1.5), status=503)
            daemon.start()
            load.up.set()
        floor = load.count() + 100
        wait_until(lambda: load.count() >= floor, timeout=60, what="acks after the last restart")
    finally:
        load.finish()
    acked = load.acked()
    assert not load.errors, load.errors[:5]
    confirmed = set(acked)
    assert len(confirmed) == len(acked), "an eventId was acknowledged twice"
    wait_until(lambda: confirmed <= set(upstream.event_ids()), timeout=180, interval=0.2,
               what="every acknowledged event delivered")
    wait_until(lambda: daemon.status().queue_depth == 0, timeout=60, what="queue drained")
    received = upstream.events()
    duplicates = check_duplicates_identical(received)
    report = verify_chains(received, workdir / "received.jsonl")
    figures = {"kills": kills, "seed": seed, "acked": len(acked),
               "received": len(received),
               "distinct_received": len({e["eventId"] for e in received}),
               "duplicates": duplicates, "sessions": report["sessions"],
               "seconds": round(time.time() - started, 1)}
    log("crash loop: " + json.dumps(figures))
    return figures


def test_sigkill_5_times_under_streaming_load_loses_nothing_acknowledged(make_daemon, upstream,
                                                                          tmp_path):
    d = make_daemon(upstream=upstream, args=CRASH_ARGS)
    figures = run_crash_loop(d, upstream, tmp_path, kills=5, log=print)
    assert figures["acked"] >= 600
    # Sessions continue across restarts: 4 per client, not 4 per client per restart.
    assert figures["sessions"] == 16
