"""Tests of the fake upstream itself (fake_upstream.py), with urllib and http.client only.

Run: /usr/bin/python3 -m pytest -q tests/fake_upstream
"""

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from fake_upstream import FakeUpstream

KEY = "al_test_fake"
HASH = "ab" * 32  # a well-formed lowercase hex SHA-256

# Tests talk to 127.0.0.1 directly, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def up():
    fake = FakeUpstream(api_key=KEY).start()
    yield fake
    fake.stop()


def make_event(category="tool_api", payload=None, **fields):
    """A valid event envelope; keyword arguments override (or, with None, remove) fields."""
    if payload is None:
        payload = {"toolName": "search", "argumentsHash": HASH, "responseStatus": 200}
    event = {
        "eventId": str(uuid.uuid4()),
        "agentId": "agent-1",
        "sessionId": "session-1",
        "sourceTimestamp": "2024-05-01T12:00:00.123Z",
        "category": category,
        "schemaVersion": "1.0",
        "payload": payload,
    }
    for name, value in fields.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def request(url, path="/v1/events", body=None, key=KEY, gzipped=False, method="POST"):
    """Sends one request; returns (status, headers, parsed JSON). body: JSON-able or bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    if gzipped:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    req = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(req, timeout=5) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_starts_on_an_ephemeral_port(up):
    assert up.port != 0
    assert up.url == "http://127.0.0.1:%d" % up.port
    status, _, answer = request(up.url, "/v1/events/_received", method="GET")
    assert (status, answer) == (200, {"events": []})


@pytest.mark.parametrize("key", [None, "al_test_wrong"])
def test_missing_or_wrong_key_is_401(up, key):
    status, _, answer = request(up.url, body=make_event(), key=key)
    assert status == 401
    assert answer["error"]["code"] == "AUTHENTICATION_FAILED"
    assert up.events() == []
    assert [r["status"] for r in up.requests()] == [401]


def test_single_event_is_accepted_and_recorded(up):
    event = make_event()
    status, _, answer = request(up.url, body=event)
    assert status == 202
    assert answer == {"accepted": 1, "eventId": event["eventId"]}
    assert up.events() == [event]
    assert up.event_ids() == [event["eventId"]]
    (req,) = up.requests()
    assert (req["method"], req["path"], req["status"]) == ("POST", "/v1/events", 202)
    assert req["headers"]["authorization"] == "Bearer " + KEY
    assert json.loads(req["body"]) == event


def test_array_with_one_bad_event_rejects_only_that_index(up):
    bad = make_event(payload={"argumentsHash": HASH})  # no toolName
    batch = [make_event(), bad, make_event(category="session_start", payload={})]
    status, _, answer = request(up.url, body=batch)
    assert status == 202
    assert answer["accepted"] == 2
    (rejected,) = answer["rejected"]
    assert rejected["index"] == 1
    assert rejected["eventId"] == bad["eventId"]
    assert rejected["error"]["code"] == "NORMALIZATION_FAILED"
    assert up.event_ids() == [batch[0]["eventId"], batch[2]["eventId"]]


def test_array_rejects_a_malformed_element_as_validation_error(up):
    status, _, answer = request(up.url, body=[make_event(), "not an object"])
    assert status == 202
    assert answer["accepted"] == 1
    assert answer["rejected"][0]["index"] == 1
    assert answer["rejected"][0]["eventId"] is None
    assert answer["rejected"][0]["error"]["code"] == "VALIDATION_ERROR"


def test_unknown_category_is_422_but_x_categories_pass(up):
    status, _, answer = request(up.url, body=make_event(category="telepathy", payload={}))
    assert status == 422
    assert answer["error"]["code"] == "NORMALIZATION_FAILED"
    status, _, _ = request(up.url, body=make_event(category="x-custom", payload={"any": 1}))
    assert status == 202


def test_missing_agent_id_is_400_with_details(up):
    status, _, answer = request(up.url, body=make_event(agentId=None))
    assert status == 400
    assert answer["error"]["code"] == "VALIDATION_ERROR"
    (detail,) = answer["error"]["details"]
    assert detail["path"] == ["agentId"]
    assert detail["code"] == "invalid_type"
    assert up.events() == []


@pytest.mark.parametrize(
    "fields, status, path",
    [
        ({"eventId": "not-a-uuid"}, 400, "eventId"),
        ({"sessionId": ""}, 400, "sessionId"),
        ({"agentId": "a" * 256}, 400, "agentId"),
        ({"sourceTimestamp": "2024-05-01T12:00:00"}, 400, "sourceTimestamp"),  # no timezone
        ({"sourceTimestamp": "2024-02-30T12:00:00Z"}, 400, "sourceTimestamp"),
        ({"schemaVersion": "2.0"}, 400, "schemaVersion"),
        ({"payload": []}, 400, "payload"),
        ({"category": 7}, 400, "category"),
        ({"payload": {"toolName": "t", "argumentsHash": HASH.upper()}}, 422, None),
        ({"category": "data_movement", "payload": {"operation": "move"}}, 422, None),
        ({"category": "identity", "payload": {}}, 422, None),
        ({"category": "reasoning", "payload": {"summary": ""}}, 422, None),
        ({"category": "approval", "payload": {"scope": "x"}}, 422, None),
    ],
)
def test_envelope_rules(up, fields, status, path):
    got, _, answer = request(up.url, body=make_event(**fields))
    assert got == status
    if path is not None:
        assert [d["path"] for d in answer["error"]["details"]] == [[path]]


@pytest.mark.parametrize(
    "fields",
    [
        {"sourceTimestamp": "2024-05-01T12:00:00+05:30"},
        {"sourceTimestamp": "2024-05-01T12:00:00.123456789-08:00"},
        {"category": "data_movement", "payload": {"operation": "export"}},
        {"category": "identity", "payload": {"agentName": "a", "capabilities": []}},
        {"category": "session_end", "payload": {}, "previousHash": HASH},
    ],
)
def test_valid_variants_are_accepted(up, fields):
    assert request(up.url, body=make_event(**fields))[0] == 202


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"NaN", b"42", b"[]"])
def test_bad_bodies_are_400(up, body):
    status, _, answer = request(up.url, body=body)
    assert status == 400
    assert answer["error"]["code"] == "VALIDATION_ERROR"


def test_gzip_body_is_accepted(up):
    batch = [make_event(), make_event()]
    status, _, answer = request(up.url, body=batch, gzipped=True)
    assert (status, answer["accepted"], answer["rejected"]) == (202, 2, [])
    assert json.loads(up.requests()[0]["body"]) == batch  # recorded after gunzip


def test_corrupt_gzip_is_400(up):
    req = urllib.request.Request(
        up.url + "/v1/events",
        data=b"\x1f\x8b definitely not gzip",
        headers={"Authorization": "Bearer " + KEY, "Content-Encoding": "gzip"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        _OPENER.open(req, timeout=5)
    assert e.value.code == 400


def test_fail_next_with_retry_after(up):
    up.fail_next(2, status=429, retry_after=3)
    for _ in range(2):
        status, headers, answer = request(up.url, body=make_event())
        assert status == 429
        assert headers["Retry-After"] == "3"
        assert answer["error"]["code"] == "RATE_LIMITED"
    status, headers, _ = request(up.url, body=make_event())
    assert status == 202
    assert headers["Retry-After"] is None
    assert len(up.events()) == 1


def test_fail_for_then_recovers(up):
    up.fail_for(0.3)
    status, _, answer = request(up.url, body=make_event())
    assert status == 503
    assert "error" in answer
    time.sleep(0.35)
    assert request(up.url, body=make_event())[0] == 202


def test_reset_connections_causes_a_client_error(up):
    up.reset_connections(1)
    with pytest.raises((OSError, http.client.HTTPException)):
        request(up.url, body=make_event())
    assert request(up.url, body=make_event())[0] == 202
    assert [r["status"] for r in up.requests()] == [None, 202]
    assert len(up.events()) == 1


def test_reject_event_single_and_array(up):
    up.reject_event(lambda e: e["sessionId"] == "doomed", status=409, code="CONFLICT", message="no")
    status, _, answer = request(up.url, body=make_event(sessionId="doomed"))
    assert (status, answer) == (409, {"error": {"code": "CONFLICT", "message": "no"}})
    status, _, answer = request(up.url, body=[make_event(sessionId="doomed"), make_event()])
    assert (status, answer["accepted"]) == (202, 1)
    assert answer["rejected"][0]["index"] == 0
    assert answer["rejected"][0]["error"] == {"code": "CONFLICT", "message": "no"}
    up.clear_faults()
    assert request(up.url, body=make_event(sessionId="doomed"))[0] == 202


def test_slow_delays_only_the_next_n(up):
    up.slow(0.3, n=1)
    start = time.monotonic()
    assert request(up.url, body=make_event())[0] == 202
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    assert request(up.url, body=make_event())[0] == 202
    assert time.monotonic() - start < 0.25


def test_keep_alive_and_stop_closes_connections(up):
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    headers = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}
    sockets = set()
    for _ in range(3):
        conn.request("POST", "/v1/events", json.dumps(make_event()), headers)
        resp = conn.getresponse()
        assert resp.status == 202
        assert resp.getheader("Content-Length") is not None
        resp.read()
        sockets.add(conn.sock)
    assert len(sockets) == 1  # one kept-alive connection for the three requests
    assert len(up.events()) == 3
    up.stop()
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("POST", "/v1/events", json.dumps(make_event()), headers)
        conn.getresponse()
    conn.close()


def test_restart_keeps_the_port_and_what_was_received(up):
    request(up.url, body=make_event())
    port = up.port
    up.stop()
    up.start()
    assert up.port == port
    assert request(up.url, body=make_event())[0] == 202
    assert len(up.events()) == 2


def test_wait_for_events_counts_distinct_ids(up):
    event = make_event()
    assert up.wait_for_events(1, timeout=0.05) is False
    threading.Timer(0.1, lambda: [request(up.url, body=event) for _ in range(2)]).start()
    assert up.wait_for_events(1, timeout=5) is True
    time.sleep(0.05)
    assert up.event_ids() == [event["eventId"]] * 2  # the duplicate is kept
    assert up.wait_for_events(2, timeout=0.05) is False  # but counted once
    up.reset_received()
    assert up.events() == [] and up.requests() == [] and up.count() == 0


def test_duplicate_agent_is_409(up):
    body = {"agentId": "agent_1", "name": "Agent", "integrationMode": "sidecar"}
    status, _, answer = request(up.url, "/v1/agents", body=body)
    assert status == 201
    assert answer["agentId"] == "agent_1"
    uuid.UUID(answer["id"])
    status, _, answer = request(up.url, "/v1/agents", body=body)
    assert (status, answer["error"]["code"]) == (409, "CONFLICT")
    assert list(up.agents()) == ["agent_1"]
    status, _, answer = request(up.url, "/v1/agents", body={"agentId": "bad id!"})
    assert (status, answer["error"]["details"][0]["path"]) == (400, ["agentId"])


def test_unknown_path_is_404(up):
    status, _, answer = request(up.url, "/v1/nothing", body={})
    assert (status, answer["error"]["code"]) == (404, "NOT_FOUND")


def test_sink_counts_without_validating_or_keeping():
    with FakeUpstream(api_key=KEY, sink=True).start() as sink:
        status, _, answer = request(sink.url, body=[{"junk": 1}, {}, {}], gzipped=True)
        assert (status, answer["accepted"]) == (202, 3)
        assert sink.count() == 3
        assert sink.wait_for_events(3, timeout=1)
        assert sink.events() == [] and sink.requests() == []
        assert request(sink.url, "/v1/events/_count", method="GET")[2] == {"count": 3}
        assert request(sink.url, body=b"not json")[0] == 400
        assert request(sink.url, body=[{}], key="wrong")[0] == 401


def test_script_mode_prints_port_and_stops_on_sigterm():
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_upstream.py")
    proc = subprocess.Popen(
        [sys.executable, script, "--port", "0", "--api-key", "al_test_script"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        word, port = proc.stdout.readline().split()
        assert word == "PORT"
        url = "http://127.0.0.1:" + port
        assert request(url, body=make_event(), key="al_test_script")[0] == 202
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stdout.read() == ""  # nothing but the PORT line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
