"""The audit path end to end: real toolgated, fake upstream, what arrives and what does not."""
import hashlib
import json
import os
import queue
import subprocess
import threading
import time
import uuid

import grpc
import pytest

from conftest import API_KEY, TOOLGATE_CLI, tool_event, wait_until
from toolgate.v1 import events_pb2

FAST_RETRY = ["--set", "upstream.backoff_initial=100ms", "--set", "upstream.backoff_max=1s",
              "--set", "batch.max_delay=20ms"]


def canonical(obj):
    """RFC 8785 for the ASCII strings and integers used here (Python's sort = UTF-16 order)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def verify_chains(events, tmp_path):
    path = tmp_path / "received.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    r = subprocess.run([TOOLGATE_CLI, "--output", "json", "verify", str(path)],
                       capture_output=True, text=True)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"], report["problems"][:5]
    return report


def stream_events(daemon, n, client_id, batch=50, acked=None, stop=None):
    """Streams n tool events on one bidi stream; returns the acknowledged event ids."""
    acked = acked if acked is not None else []
    secrets = []

    def requests():
        seq = 0
        for start in range(0, n, batch):
            if stop is not None and stop.is_set():
                return
            evs = []
            for i in range(start, min(n, start + batch)):
                secret = f"raw-secret-{client_id}-{i}-{uuid.uuid4().hex[:8]}"
                secrets.append(secret)
                evs.append(tool_event(agent=f"agent-{client_id}",
                                      session=f"session-{client_id}-{i % 5}",
                                      args=json.dumps({"path": f"/tmp/{secret}", "n": i})))
            seq += 1
            yield events_pb2.StreamRequest(sequence=seq, events=evs)

    for ack in daemon.events().Stream(requests(), timeout=120):
        assert ack.code == 0, ack.message
        acked.extend(ack.event_ids)
    return acked, secrets


def test_10k_events_from_4_clients_arrive_once_hashed_and_chained(make_daemon, upstream,
                                                                   tmp_path):
    d = make_daemon(upstream=upstream, args=FAST_RETRY + [
        "--set", "upstream.ingest_format=array"]).start()
    results = [None] * 4

    def client(i):
        results[i] = stream_events(d, 2500, i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked = [eid for r in results for eid in r[0]]
    secrets = [s for r in results for s in r[1]]
    assert len(acked) == 10_000 and len(set(acked)) == 10_000
    assert upstream.wait_for_events(10_000, timeout=60)
    time.sleep(0.3)
    received = upstream.events()
    ids = [e["eventId"] for e in received]
    assert len(ids) == 10_000, "exactly once: no duplicates in a run without faults"
    assert set(ids) == set(acked)
    report = verify_chains(received, tmp_path)
    assert report["sessions"] == 20 and report["partial_sessions"] == 0
    # Each argumentsHash is SHA-256 of the canonical arguments.
    for e in received[:500]:
        assert e["category"] == "tool_api"
        assert len(e["payload"]["argumentsHash"]) == 64
    by_id = {e["eventId"]: e for e in received}
    d.stop()
    # No raw argument value anywhere: upstream bodies, spool files, logs.
    bodies = b"".join(r["body"] for r in upstream.requests())
    spool = b"".join(p.read_bytes() for p in d.data_dir.iterdir() if p.is_file())
    logs = d.logs().encode()
    for s in secrets[::97]:
        assert s.encode() not in bodies
        assert s.encode() not in spool
        assert s.encode() not in logs
    assert b"raw-secret" not in bodies and b"raw-secret" not in spool and b"raw-secret" not in logs
    assert len(by_id) == 10_000


def test_arguments_hash_is_sha256_of_canonical_json(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY).start()
    args = {"zeta": 1, "alpha": {"b": [3, 2, 1], "a": "é"}, "mid": "x"}
    text = json.dumps(args, indent=2)  # not canonical on purpose
    resp = d.events().Record(events_pb2.RecordRequest(events=[tool_event(args=text)]), timeout=10)
    assert upstream.wait_for_events(1, timeout=15)
    ev = upstream.events()[0]
    assert ev["eventId"] == resp.event_ids[0]
    assert ev["payload"]["argumentsHash"] == hashlib.sha256(canonical(args).encode()).hexdigest()
    req = [r for r in upstream.requests() if r["path"] == "/v1/events"][0]
    assert req["headers"]["authorization"] == "Bearer " + API_KEY
    assert req["headers"]["x-kaplaix-sdk"].startswith("toolgate/")
    assert json.loads(req["body"])["eventId"] == ev["eventId"]  # single format: one per request


def test_503_for_20s_then_everything_delivered(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY + [
        "--set", "upstream.ingest_format=array"]).start()
    upstream.fail_for(20, status=503)
    started = time.time()
    ids = []
    for i in range(20):
        r = d.events().Record(events_pb2.RecordRequest(
            events=[tool_event(session=f"s{i % 3}") for _ in range(10)]), timeout=10)
        ids.extend(r.event_ids)
    wait_until(lambda: d.status().upstream_state == "retrying", what="the shipper retrying")
    assert "503" in d.status().upstream_last_error
    assert upstream.wait_for_events(200, timeout=60)
    assert time.time() - started >= 19
    assert set(upstream.event_ids()) == set(ids)
    wait_until(lambda: d.status().queue_depth == 0, what="queue drained")
    assert d.status().upstream_state == "ok"


def test_429_retry_after_is_honoured(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY + [
        "--set", "upstream.ingest_format=array", "--set", "upstream.max_in_flight=1"]).start()
    upstream.fail_next(1, status=429, retry_after=3)
    d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    assert upstream.wait_for_events(1, timeout=20)
    reqs = [r for r in upstream.requests() if r["path"] == "/v1/events"]
    assert reqs[0]["status"] == 429
    after = [r for r in reqs[1:]]
    assert after, "the event was retried"
    assert all(r["t"] - reqs[0]["t"] >= 2.95 for r in after), \
        [round(r["t"] - reqs[0]["t"], 3) for r in after]


def test_422_for_one_event_of_a_batch_dead_letters_only_it(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY + [
        "--set", "upstream.ingest_format=array"]).start()
    upstream.reject_event(lambda e: e["payload"].get("toolName") == "forbidden-tool",
                          status=422, code="NORMALIZATION_FAILED",
                          message="toolName forbidden-tool is not allowed")
    evs = [tool_event(tool="ok-tool") for _ in range(5)]
    evs.insert(2, tool_event(tool="forbidden-tool"))
    resp = d.events().Record(events_pb2.RecordRequest(events=evs), timeout=10)
    bad_id = resp.event_ids[2]
    assert upstream.wait_for_events(5, timeout=15)
    wait_until(lambda: d.status().dead_letters == 1, what="dead letter recorded")
    dl = json.loads(d.cli("--output", "json", "dead-letters").stdout)["dead_letters"]
    assert len(dl) == 1
    assert dl[0]["event_id"] == bad_id
    assert dl[0]["code"] == "NORMALIZATION_FAILED"
    assert dl[0]["message"] == "toolName forbidden-tool is not allowed"
    assert bad_id not in upstream.event_ids()
    # Later events keep flowing.
    later = d.events().Record(events_pb2.RecordRequest(events=[tool_event(tool="ok-tool")]),
                              timeout=10)
    assert upstream.wait_for_events(6, timeout=15)
    assert later.event_ids[0] in upstream.event_ids()
    table = d.cli("dead-letters").stdout
    assert "NORMALIZATION_FAILED" in table and bad_id in table


def test_single_format_422_dead_letters_and_keeps_going(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY).start()
    upstream.reject_event(lambda e: e["payload"].get("toolName") == "bad", status=422,
                          code="NORMALIZATION_FAILED", message="no")
    r = d.events().Record(events_pb2.RecordRequest(
        events=[tool_event(tool="bad"), tool_event(tool="good")]), timeout=10)
    assert upstream.wait_for_events(1, timeout=15)
    wait_until(lambda: d.status().dead_letters == 1, what="dead letter")
    assert upstream.event_ids() == [r.event_ids[1]]


def test_kill9_while_streaming_loses_no_acknowledged_event(make_daemon, upstream, tmp_path):
    args = FAST_RETRY + ["--set", "upstream.ingest_format=array"]
    d = make_daemon(upstream=upstream, args=args).start()
    # The upstream is down until the kill: every acknowledged event is only in the spool when
    # it lands, however loaded the machine is (a slow upstream made this test timing-dependent).
    upstream.fail_for(3600, status=503)
    acked = [[] for _ in range(2)]
    stop = threading.Event()

    def client(i):
        try:
            stream_events(d, 100_000, i, batch=20, acked=acked[i], stop=stop)
        except grpc.RpcError:
            pass  # the daemon died under us: expected

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: sum(map(len, acked)) > 3000, what="some acks", timeout=60)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    confirmed = {eid for a in acked for eid in a}
    assert not confirmed & set(upstream.event_ids()), "nothing was delivered before the kill"
    upstream.clear_faults()
    d.start()
    assert upstream.wait_for_events(len(confirmed), timeout=90)
    wait_until(lambda: confirmed <= set(upstream.event_ids()), timeout=60,
               what="every acknowledged event delivered")
    # Events committed but not yet acknowledged when the daemon died are stored too, and are
    # delivered as well — possibly after the acknowledged ones, and with requests in parallel
    # a later batch can land before an earlier one. The chains are whole once all has arrived.
    wait_until(lambda: d.status().queue_depth == 0, timeout=60, what="everything stored delivered")
    received = upstream.events()
    # Duplicates are allowed (at-least-once) but carry the same eventId and the same bytes.
    by_id = {}
    for e in received:
        if e["eventId"] in by_id:
            assert by_id[e["eventId"]] == e
        by_id[e["eventId"]] = e
    verify_chains(received, tmp_path)


BAD_INPUT = [
    ("agent_id", lambda e: e.ClearField("agent_id")),
    ("session_id", lambda e: e.ClearField("session_id")),
    ("tool_call.arguments_json", lambda e: setattr(e.tool_call, "arguments_json", "{nope")),
    ("tool_call.arguments_json",
     lambda e: setattr(e.tool_call, "arguments_json", '"' + "a" * (1 << 20) + '"')),
    ("source_timestamp", lambda e: setattr(e, "source_timestamp", "2026-11-23T10:00:00")),
    ("generic.category", lambda e: (e.generic.SetInParent(),
                                    setattr(e.generic, "category", "mind_reading"))),
]


@pytest.mark.parametrize("field,mutate", BAD_INPUT, ids=[f"{f}-{i}" for i, (f, _) in
                                                         enumerate(BAD_INPUT)])
def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(make_daemon, field, mutate):
    d = make_daemon().start()
    bad = tool_event()
    mutate(bad)
    with pytest.raises(grpc.RpcError) as err:
        d.events().Record(events_pb2.RecordRequest(events=[tool_event(), bad]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"events[1].{field}" in err.value.details()
    assert d.status().stored_events == 0
    # The stream answers the same way in its ack and stays usable.
    acks = list(d.events().Stream(iter([
        events_pb2.StreamRequest(sequence=1, events=[bad]),
        events_pb2.StreamRequest(sequence=2, events=[tool_event()])]), timeout=10))
    assert acks[0].sequence == 1 and acks[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert f"events[0].{field}" in acks[0].message
    assert acks[1].sequence == 2 and acks[1].code == 0
    assert d.status().stored_events == 1


def test_spool_full_answers_resource_exhausted_with_a_retry_hint(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY + [
        "--set", "spool.max_bytes=64KiB", "--set", "spool.retry_after=750ms"]).start()
    upstream.fail_for(60)
    refused = None
    for i in range(400):
        try:
            d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
        except grpc.RpcError as e:
            refused = e
            break
    assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry after 750 ms" in refused.details()
    trailers = dict(refused.trailing_metadata())
    assert trailers.get("grpc-retry-pushback-ms") == "750"
    stored = d.status().stored_events
    assert stored == i  # every acknowledged event is stored; the refused one is not
    upstream.clear_faults()
    wait_until(lambda: d.status().queue_depth == 0, timeout=30, what="drain")
    d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)


def test_sigterm_drains_the_queue_before_exit(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=["--set", "batch.max_delay=5s",
                                             "--set", "upstream.ingest_format=array"]).start()
    r = d.events().Record(events_pb2.RecordRequest(events=[tool_event() for _ in range(50)]),
                          timeout=10)
    assert d.stop() == 0
    assert set(r.event_ids) <= set(upstream.event_ids())


def test_a_resend_after_a_lost_ack_is_stored_once_and_the_chain_verifies(make_daemon, upstream,
                                                                           tmp_path):
    import urllib.request
    d = make_daemon(upstream=upstream, args=FAST_RETRY).start()
    events = [tool_event(session="s-resend", event_id=str(uuid.uuid4())) for _ in range(3)]
    d.events().Record(events_pb2.RecordRequest(events=events[:2]), timeout=10)
    # The client never saw that acknowledgement: it sends both again, then the next event, and
    # that one again after a restart (as if the daemon had crashed before acknowledging it),
    # when all three have been shipped and left the spool.
    r = d.events().Record(events_pb2.RecordRequest(events=events), timeout=10)
    assert list(r.event_ids) == [e.event_id for e in events]
    assert upstream.wait_for_events(3, timeout=20)
    wait_until(lambda: d.status().stored_events == 0, what="shipped chunks deleted")
    d.stop()
    d.start()
    d.events().Record(events_pb2.RecordRequest(events=events[2:]), timeout=10)
    time.sleep(0.5)
    wait_until(lambda: d.status().queue_depth == 0, what="queue drained")
    received = upstream.events()
    assert sorted(e["eventId"] for e in received) == sorted(e.event_id for e in events)
    verify_chains(received, tmp_path)
    text = urllib.request.urlopen(d.http_address + "/metrics").read().decode()
    assert "toolgate_events_deduplicated_total 1" in text  # the restart's resend


def test_metrics_and_healthz(make_daemon, upstream):
    import urllib.request
    d = make_daemon(upstream=upstream, args=FAST_RETRY).start()
    d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    assert upstream.wait_for_events(1)
    assert urllib.request.urlopen(d.http_address + "/healthz").read() == b"ok\n"
    wait_until(lambda: "toolgate_events_shipped_total 1" in
               urllib.request.urlopen(d.http_address + "/metrics").read().decode(),
               what="shipped metric")
    text = urllib.request.urlopen(d.http_address + "/metrics").read().decode()
    assert "toolgate_events_received_total 1" in text
    assert "toolgate_queue_depth 0" in text


def test_connection_resets_and_slow_answers_are_retried_with_the_same_event_id(make_daemon,
                                                                             upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY + [
        "--set", "upstream.timeout=1s", "--set", "upstream.max_in_flight=1"]).start()
    upstream.reset_connections(2)
    r1 = d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    assert upstream.wait_for_events(1, timeout=20)
    assert upstream.event_ids() == list(r1.event_ids)
    # An answer slower than upstream.timeout: the request is abandoned and sent again. The fake
    # recorded the first copy before its late answer, so the event arrives twice, same eventId.
    upstream.slow(2.5, n=1)
    r2 = d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    wait_until(lambda: upstream.event_ids().count(r2.event_ids[0]) >= 2, timeout=20,
               what="the resend after a timeout")
    copies = [e for e in upstream.events() if e["eventId"] == r2.event_ids[0]]
    assert all(c == copies[0] for c in copies)
    wait_until(lambda: d.status().queue_depth == 0, what="queue drained")
    assert "timeout" in d.status().upstream_last_error.lower() or \
        "timed out" in d.status().upstream_last_error.lower()


def test_array_batches_are_gzipped(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST_RETRY + [
        "--set", "upstream.ingest_format=array"]).start()
    d.events().Record(events_pb2.RecordRequest(events=[tool_event() for _ in range(20)]),
                      timeout=10)
    assert upstream.wait_for_events(20)
    reqs = [r for r in upstream.requests() if r["path"] == "/v1/events"]
    assert reqs[0]["headers"].get("content-encoding") == "gzip"
    assert len(json.loads(reqs[0]["body"])) == 20
