"""Operating the daemon: health, reflection, flush, dead letters, sessions, CLI output modes."""
import json

import grpc
import pytest

from conftest import tool_event, wait_until
from toolgate.v1 import events_pb2

FAST = ["--set", "upstream.backoff_initial=100ms", "--set", "upstream.backoff_max=1s",
        "--set", "batch.max_delay=20ms"]


def test_grpc_health_service_reports_serving(make_daemon):
    d = make_daemon().start()
    check = d.channel().unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
    # HealthCheckRequest{service: ""} is empty; the answer is {status: SERVING (1)}.
    assert check(b"", timeout=5) == b"\x08\x01"


def test_server_reflection_lists_the_api(make_daemon):
    d = make_daemon().start()
    call = d.channel().stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b, response_deserializer=lambda b: b)
    # ServerReflectionRequest{list_services: "*"}: field 7, string "*".
    answer = b"".join(call(iter([b"\x3a\x01*"]), timeout=5))
    for service in (b"toolgate.v1.Events", b"toolgate.v1.Admin", b"grpc.health.v1.Health"):
        assert service in answer


def test_flush_ships_partial_batches_now(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=["--set", "batch.max_delay=1h",
                                             "--set", "upstream.ingest_format=array"]).start()
    r = d.events().Record(events_pb2.RecordRequest(events=[tool_event() for _ in range(3)]),
                          timeout=10)
    out = json.loads(d.cli("--output", "json", "flush", "--timeout-ms", "10000").stdout)
    assert out["complete"] is True and int(out["queue_depth"]) == 0
    assert set(r.event_ids) <= set(upstream.event_ids())


def test_a_flush_waiting_at_sigterm_is_answered_and_the_daemon_exits_cleanly(make_daemon,
                                                                             upstream):
    import subprocess
    import time
    d = make_daemon(upstream=upstream, args=["--set", "shutdown_timeout=2s"]).start()
    upstream.fail_for(600)  # the queue cannot drain: the flush waits
    d.events().Record(events_pb2.RecordRequest(events=[tool_event()]), timeout=10)
    flush = subprocess.Popen([*d.cli_command(), "--output", "json", "flush", "--timeout-ms",
                              "60000"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert d.stop() == 0  # under ASan/TSan: no use of the closed spool by the waiting flush
    out, _ = flush.communicate(timeout=10)
    answer = json.loads(out)
    assert answer["complete"] is False and int(answer["queue_depth"]) == 1


def test_dead_letters_retry_and_purge(make_daemon, upstream):
    d = make_daemon(upstream=upstream, args=FAST).start()
    upstream.reject_event(lambda e: True, status=409, code="CONFLICT", message="duplicate")
    d.events().Record(events_pb2.RecordRequest(events=[tool_event(), tool_event()]), timeout=10)
    wait_until(lambda: d.status().dead_letters == 2, what="two dead letters")
    listed = json.loads(d.cli("--output", "json", "dead-letters").stdout)["dead_letters"]
    assert {x["code"] for x in listed} == {"CONFLICT"} and listed[0]["http_status"] == 409
    upstream.clear_faults()
    first = listed[0]["id"]
    assert "1 requeued" in d.cli("dead-letters", "retry", str(first)).stdout
    assert upstream.wait_for_events(1, timeout=15)
    assert upstream.event_ids() == [listed[0]["event_id"]]
    assert "1 purged" in d.cli("dead-letters", "purge").stdout
    assert d.status().dead_letters == 0


def test_sessions_and_usage_errors(make_daemon):
    d = make_daemon().start()
    d.events().Record(events_pb2.RecordRequest(events=[
        tool_event(agent="a1", session="alpha"), tool_event(agent="a2", session="beta")]),
        timeout=10)
    sessions = json.loads(d.cli("--output", "json", "sessions").stdout)["sessions"]
    assert {s["session_id"] for s in sessions} == {"alpha", "beta"}
    only = json.loads(d.cli("--output", "json", "sessions", "--agent", "a1").stdout)["sessions"]
    assert [s["session_id"] for s in only] == ["alpha"]
    assert "alpha" in d.cli("sessions").stdout
    assert d.cli("frobnicate", check=False).returncode == 2
    assert d.cli("export", check=False).returncode == 2


def test_a_second_daemon_on_the_same_data_directory_refuses_to_start(make_daemon):
    # Two daemons on one directory would fork every session's chain and ship events twice.
    first = make_daemon(name="first").start()
    second = make_daemon(name="second")
    second.data_dir = first.data_dir
    with pytest.raises(RuntimeError):
        second.start(timeout=60)
    assert second.proc.wait(timeout=30) == 1
    assert (f"is in use by another toolgated (pid {first.proc.pid})"
            in second.logs()), second.logs()
    assert not second.socket.exists()  # refused before listening
    # The first one goes on serving; once it has stopped, the directory is free again.
    assert first.status().stored_events == 0
    first.stop()
    second.start()
    assert second.status().stored_events == 0


def test_cli_reports_an_unreachable_daemon(tmp_path):
    import subprocess
    from conftest import TOOLGATE_CLI
    r = subprocess.run([TOOLGATE_CLI, "--address", "unix:" + str(tmp_path / "none.sock"),
                        "status"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "cannot reach toolgated" in r.stderr


def test_send_from_the_cli(make_daemon):
    d = make_daemon().start()
    out = d.cli("send", "--agent", "cli-agent", "--session", "cli-s", "--tool", "ls",
                "--args", '{"path": "/"}').stdout.strip()
    assert len(out) == 36
    exported = d.cli("export", "cli-s").stdout
    assert out in exported and '"toolName":"ls"' in exported
    bad = d.cli("send", "--session", "s", "--tool", "x", check=False)
    assert bad.returncode == 1 and "agent_id" in bad.stderr
