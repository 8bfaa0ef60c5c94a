"""Agent registration end to end: Agents.Register → registry, identity event, upstream
POST /v1/agents, and the policy condition tool_in_snapshot."""
import hashlib
import json

import grpc
import pytest

from conftest import wait_until
from toolgate.v1 import agents_pb2, agents_pb2_grpc, policy_pb2, policy_pb2_grpc

SNAPSHOT = {
    "nodes": [{"id": "n1", "name": "planner", "type": "llm", "tool_ids": ["t1", "t2"]}],
    "edges": [{"id": "e1", "from": "n1", "to": "n1", "label": "loop"}],
    "tools": [{"id": "t1", "name": "search", "type": "http", "description": "web search"},
              {"id": "t2", "name": "send_email", "type": "smtp"}],
    "metadata": {"team": "support"},
}


def canonical_sha256(doc):
    # RFC 8785 for this ASCII-only, integer-free document = sorted keys, no spaces.
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def register(d, agent_id="support-bot", snapshot=SNAPSHOT, **kw):
    stub = agents_pb2_grpc.AgentsStub(d.channel())
    return stub.Register(agents_pb2.RegisterAgentRequest(
        agent_id=agent_id, name=kw.pop("name", "Support bot"), framework="langgraph",
        version="1.4.0", snapshot_json=json.dumps(snapshot), **kw), timeout=15)


def test_register_standalone_records_identity_and_snapshot_hash(make_daemon):
    d = make_daemon().start()
    r = register(d)
    assert r.agent_id == "support-bot"
    assert r.snapshot_hash == canonical_sha256(SNAPSHOT)
    assert not r.upstream_registered  # standalone: no upstream
    exported = [json.loads(l) for l in d.cli("export", "registration").stdout.splitlines()]
    [identity] = [e for e in exported if e["category"] == "identity"]
    assert identity["eventId"] == r.identity_event_id
    assert identity["agentId"] == "support-bot"
    assert identity["payload"] == {"agentName": "Support bot", "version": "1.4.0",
                                   "capabilities": ["search", "send_email"],
                                   "snapshotHash": r.snapshot_hash}
    info = agents_pb2_grpc.AgentsStub(d.channel()).Get(
        agents_pb2.GetAgentRequest(agent_id="support-bot"), timeout=5)
    assert list(info.tool_names) == ["search", "send_email"] and info.framework == "langgraph"

    # A change of tools is a new hash and a new identity event in the trail.
    changed = json.loads(json.dumps(SNAPSHOT))
    changed["tools"].append({"id": "t3", "name": "shell"})
    r2 = register(d, snapshot=changed)
    assert r2.snapshot_hash != r.snapshot_hash
    exported = [json.loads(l) for l in d.cli("export", "registration").stdout.splitlines()]
    assert [e["payload"]["snapshotHash"] for e in exported if e["category"] == "identity"] == [
        r.snapshot_hash, r2.snapshot_hash]


@pytest.mark.parametrize("kwargs,needle", [
    ({"agent_id": "bad id!"}, "agent_id: required, 1-128 characters of [A-Za-z0-9_-]"),
    ({"agent_id": "x" * 129}, "agent_id"),
    ({"name": ""}, "name: required"),
    ({"snapshot": {"tools": [{"id": "t1"}]}}, "snapshot_json.tools[0].name: required"),
    ({"snapshot": ["not", "an", "object"]}, "snapshot_json: must be a JSON object"),
])
def test_register_rejects_bad_input_naming_the_field(make_daemon, kwargs, needle):
    d = make_daemon().start()
    with pytest.raises(grpc.RpcError) as e:
        register(d, **kwargs)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # nothing half-stored
        agents_pb2_grpc.AgentsStub(d.channel()).Get(
            agents_pb2.GetAgentRequest(agent_id=kwargs.get("agent_id", "support-bot")), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_register_upstream_as_sidecar_and_409_is_fine(make_daemon, upstream):
    d = make_daemon(upstream=upstream).start()
    r = register(d, description="answers tickets", environment="production")
    assert r.upstream_registered
    posted = [q for q in upstream.requests() if q["path"] == "/v1/agents"]
    body = json.loads(posted[0]["body"])
    assert body == {"agentId": "support-bot", "name": "Support bot", "framework": "langgraph",
                    "description": "answers tickets", "environment": "production",
                    "integrationMode": "sidecar"}
    assert register(d).upstream_registered  # 409: already there
    assert [q["status"] for q in upstream.requests() if q["path"] == "/v1/agents"] == [201, 409]
    wait_until(lambda: any(e["category"] == "identity" for e in upstream.events()),
               what="the identity event upstream")


def test_register_with_the_upstream_down_says_so(make_daemon, upstream):
    upstream.stop()
    d = make_daemon(upstream=upstream, args=["--set", "upstream.timeout=1s"]).start()
    r = register(d)
    assert not r.upstream_registered and r.snapshot_hash
    # The log line is written by the daemon as it answers: it may reach the file just after.
    wait_until(lambda: "agents: upstream registration failed" in d.logs(), timeout=5,
               what="the registration failure in the log")
    upstream.start()


POLICY = """
default: allow
rules:
  - id: only-registered-tools
    effect: deny
    reason: tool not in the agent's registered snapshot
    match: {tool_in_snapshot: false}
"""


def test_policy_denies_tools_outside_the_registered_snapshot(make_daemon, tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    d = make_daemon(args=["--set", f"policy.file={p}"]).start()

    def decide(tool):
        stub = policy_pb2_grpc.PolicyStub(d.channel())
        return stub.Check(policy_pb2.CheckRequest(action=policy_pb2.Action(
            agent_id="support-bot", session_id="s1", tool_name=tool)), timeout=5).decision

    assert decide("search") == policy_pb2.DENY  # not registered yet: no tool is in a snapshot
    register(d)
    assert decide("search") == policy_pb2.ALLOW
    assert decide("shell") == policy_pb2.DENY
    d.stop()
    d.start()  # the registry survives a restart
    assert decide("send_email") == policy_pb2.ALLOW and decide("shell") == policy_pb2.DENY
