"""Standalone mode: no upstream, events kept in the local store and visible to the CLI."""
import json
import subprocess

from conftest import TOOLGATE_CLI, tool_event
from toolgate.v1 import events_pb2


def test_standalone_keeps_events_and_status_shows_them(make_daemon):
    d = make_daemon().start()
    resp = d.events().Record(events_pb2.RecordRequest(
        events=[tool_event(session="s-a"), tool_event(session="s-a"), tool_event(session="s-b")]),
        timeout=10)
    assert len(resp.event_ids) == 3
    st = json.loads(d.cli("--output", "json", "status").stdout)
    assert st["mode"] == "standalone"
    assert int(st["stored_events"]) == 3
    assert int(st["queue_depth"]) == 0
    table = d.cli("status").stdout
    assert "stored events:   3" in table
    # The store survives a restart, and the chain goes on.
    d.stop()
    d.start()
    d.events().Record(events_pb2.RecordRequest(events=[tool_event(session="s-a")]), timeout=10)
    exported = d.cli("export", "s-a").stdout.strip().splitlines()
    assert len(exported) == 3
    r = subprocess.run([TOOLGATE_CLI, "verify", "-"], input="\n".join(exported), text=True,
                       capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: 3 event(s), 1 session(s)" in r.stdout
