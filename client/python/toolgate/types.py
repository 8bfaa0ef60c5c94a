"""Plain value types returned by the client: policy decisions, approvals, recorder counters."""
from __future__ import annotations

import dataclasses
import enum
from typing import Optional

from .v1 import policy_pb2


class Verdict(str, enum.Enum):
    """The effect of a policy decision."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"

    @classmethod
    def from_proto(cls, value: int) -> "Verdict":
        if value == policy_pb2.ALLOW:
            return cls.ALLOW
        if value == policy_pb2.REQUIRE_APPROVAL:
            return cls.REQUIRE_APPROVAL
        return cls.DENY  # DENY, and anything unknown: never read an unknown value as allow


_SOURCES = {
    policy_pb2.LOCAL_RULE: "local_rule",
    policy_pb2.LOCAL_DEFAULT: "local_default",
    policy_pb2.REMOTE: "remote",
    policy_pb2.REMOTE_CACHE: "remote_cache",
    policy_pb2.FAILED_OPEN: "failed_open",
    policy_pb2.FAILED_CLOSED: "failed_closed",
}

_STATUSES = {
    policy_pb2.PENDING: "pending",
    policy_pb2.APPROVED: "approved",
    policy_pb2.REJECTED: "rejected",
    policy_pb2.EXPIRED: "expired",
}


@dataclasses.dataclass(frozen=True)
class Approval:
    """The final decision on a pending action (``Policy.WaitForDecision``).

    Attributes:
        pending_action_id: the action's id.
        status: ``"approved"``, ``"rejected"`` or ``"expired"``.
        allowed: whether the tool may run (approved, or expired with ``on_timeout: allow``).
        approver_id: who decided (``""`` when it expired).
        reason: the approver's reason.
        decided_at: RFC 3339 time of the decision.
    """

    pending_action_id: str
    status: str
    allowed: bool
    approver_id: str
    reason: str
    decided_at: str

    @classmethod
    def from_proto(cls, u: policy_pb2.WaitUpdate) -> "Approval":
        return cls(pending_action_id=u.pending_action_id,
                   status=_STATUSES.get(u.status, "unknown"),
                   allowed=u.decision == policy_pb2.ALLOW,
                   approver_id=u.approver_id, reason=u.reason, decided_at=u.decided_at)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The daemon's answer to ``Policy.Check`` for one tool call.

    Attributes:
        tool_name: the tool checked.
        verdict: ALLOW, DENY or REQUIRE_APPROVAL.
        rule_id: the matching rule (``""`` when the policy's default decided).
        reason: the rule's reason.
        policy_revision: the revision of the rule set that decided.
        decision_id: this answer's id (in the audit chain's approval event).
        source: how it was decided: ``local_rule``, ``local_default``, ``remote``,
            ``failed_open`` … (``failed_open`` is also set by the client itself when it ran a
            tool without an answer because ``fail_open`` was asked for).
        shadow: a shadow (log-only) rule matched; ``shadow_verdict`` is what it would decide.
        pending_action_id, expires_at: with REQUIRE_APPROVAL.
        event_id: the audit event recording this check.
        approval: the final decision on the pending action, once waited for.
    """

    tool_name: str
    verdict: Verdict
    rule_id: str = ""
    reason: str = ""
    policy_revision: str = ""
    decision_id: str = ""
    source: str = ""
    shadow: bool = False
    shadow_verdict: Optional[Verdict] = None
    pending_action_id: str = ""
    expires_at: str = ""
    event_id: str = ""
    approval: Optional[Approval] = None

    @property
    def allowed(self) -> bool:
        """Whether the tool may run: ALLOW, or an approval that allows it."""
        if self.verdict == Verdict.ALLOW:
            return True
        return self.approval is not None and self.approval.allowed

    @classmethod
    def from_proto(cls, tool_name: str, r: policy_pb2.CheckResponse) -> "Decision":
        return cls(tool_name=tool_name, verdict=Verdict.from_proto(r.decision),
                   rule_id=r.rule_id, reason=r.reason, policy_revision=r.policy_revision,
                   decision_id=r.decision_id, source=_SOURCES.get(r.source, ""),
                   shadow=r.shadow,
                   shadow_verdict=Verdict.from_proto(r.shadow_decision) if r.shadow else None,
                   pending_action_id=r.pending_action_id, expires_at=r.expires_at,
                   event_id=r.event_id)


@dataclasses.dataclass(frozen=True)
class RecorderStats:
    """Counters of the background recorder (:meth:`toolgate.Client.stats`).

    Attributes:
        recorded: events accepted into the buffer.
        acked: events the daemon acknowledged as durable.
        rejected: events the daemon refused as invalid (each counted once; not retried).
        dropped: events lost on this side: the buffer was full, an event was too large, or
            ``close()`` ran out of time before they were acknowledged.
        buffered: events in the buffer now, sent or not, not yet acknowledged.
        resent: events sent again (after a reconnect or a RESOURCE_EXHAUSTED answer).
        reconnects: streams opened after the first one.
        last_error: the last stream error or rejection, for logs (``""`` if none).
    """

    recorded: int
    acked: int
    rejected: int
    dropped: int
    buffered: int
    resent: int
    reconnects: int
    last_error: str
