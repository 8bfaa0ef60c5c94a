"""Exceptions raised by the toolgate client.

Everything the client raises derives from :class:`ToolgateError`. A tool call that did not run
because of the policy raises a :class:`Blocked` subclass, which carries the decision: the rule,
the reason and the decision id, so that an agent can say why and an operator can find the audit
record of it.

::

    ToolgateError
    ├── Blocked                  the tool did not run (policy)
    │   ├── Denied               Check answered DENY
    │   ├── ApprovalRejected     a human rejected the pending action
    │   ├── ApprovalExpired      nobody decided in time; the rule's on_timeout was deny
    │   └── ApprovalWaitTimeout  the client stopped waiting; the action may still be pending
    └── RpcFailed                a call to the daemon failed (gRPC status code and details)
        ├── Unavailable          the daemon could not be reached in time
        └── InvalidRequest       the daemon refused the request as malformed (INVALID_ARGUMENT)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import grpc

if TYPE_CHECKING:  # pragma: no cover
    from .types import Approval, Decision


class ToolgateError(Exception):
    """Base class of every error raised by the toolgate client."""


class Blocked(ToolgateError):
    """The policy did not let the tool call run.

    Attributes:
        tool_name: the tool that was checked.
        decision: the daemon's answer to Check (rule, reason, revision, ids).
        approval: the final decision on the pending action, when there was one.
        reason: the most relevant reason: the human's for a rejection, else the rule's.
        rule_id: the rule that decided ("" when the policy's default decided).
        decision_id: the id of the Check answer, as recorded in the audit chain.
        pending_action_id: the pending action, for REQUIRE_APPROVAL ("" otherwise).
    """

    def __init__(self, message: str, decision: "Decision",
                 approval: Optional["Approval"] = None, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.decision = decision
        self.approval = approval
        self.tool_name = decision.tool_name
        self.reason = decision.reason if reason is None else reason
        self.rule_id = decision.rule_id
        self.decision_id = decision.decision_id
        self.policy_revision = decision.policy_revision
        self.pending_action_id = decision.pending_action_id


class Denied(Blocked):
    """Check answered DENY: a rule (or the policy's default) forbids this call."""

    def __init__(self, decision: "Decision") -> None:
        rule = f"rule {decision.rule_id!r}" if decision.rule_id else "the policy's default"
        super().__init__(
            f"tool {decision.tool_name!r} denied by {rule}: {decision.reason or 'no reason given'}"
            f" (decision {decision.decision_id})", decision)


class ApprovalRejected(Blocked):
    """A human rejected the pending action. ``reason`` is the human's, ``approver_id`` who."""

    def __init__(self, decision: "Decision", approval: "Approval") -> None:
        self.approver_id = approval.approver_id
        super().__init__(
            f"tool {decision.tool_name!r} rejected by {approval.approver_id or 'an approver'}: "
            f"{approval.reason or 'no reason given'} (rule {decision.rule_id!r}, pending action "
            f"{approval.pending_action_id})", decision, approval, reason=approval.reason)


class ApprovalExpired(Blocked):
    """Nobody decided before the approval timeout, and the rule's ``on_timeout`` is deny."""

    def __init__(self, decision: "Decision", approval: "Approval") -> None:
        super().__init__(
            f"tool {decision.tool_name!r}: approval expired undecided (rule "
            f"{decision.rule_id!r}: {decision.reason}; pending action "
            f"{approval.pending_action_id})", decision, approval)


class ApprovalWaitTimeout(Blocked):
    """The client gave up waiting; the action may still be pending on the daemon."""

    def __init__(self, decision: "Decision", waited: float) -> None:
        self.waited = waited
        super().__init__(
            f"tool {decision.tool_name!r}: no decision on pending action "
            f"{decision.pending_action_id} after {waited:.1f}s (rule {decision.rule_id!r}: "
            f"{decision.reason})", decision)


class RpcFailed(ToolgateError):
    """A call to the daemon failed. ``code`` is the gRPC status code, ``details`` its message."""

    def __init__(self, what: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{what}: {code.name}: {details}")
        self.code = code
        self.details = details


class Unavailable(RpcFailed):
    """The daemon could not be reached (or did not answer) within the deadline."""


class InvalidRequest(RpcFailed):
    """The daemon refused the request: ``details`` names the field and the rule it broke."""


def from_rpc_error(what: str, error: grpc.RpcError) -> RpcFailed:
    """Maps a gRPC error to the matching :class:`RpcFailed` subclass."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(what, code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(what, code, details)
    return RpcFailed(what, code, details)
