"""toolgate: audit and gate an AI agent's tool calls through the local toolgated daemon.

::

    from toolgate import Client, Denied

    client = Client(agent_id="billing-agent")

    @client.guard(tool_name="send_payment")
    def send_payment(to: str, amount: float) -> str: ...

The public API is :class:`Client` (recording, :meth:`Client.check`,
:meth:`Client.authorize`, :meth:`Client.guard`, :meth:`Client.tool_call`), the value types
(:class:`Decision`, :class:`Approval`, :class:`Verdict`, :class:`RecorderStats`) and the
exceptions (:mod:`toolgate.errors`). The generated gRPC stubs of the ``toolgate.v1`` API are
in :mod:`toolgate.v1` (``events_pb2``, ``policy_pb2``, … and their ``*_pb2_grpc``).
"""
from .client import Client, GuardedCall
from .errors import (ApprovalExpired, ApprovalRejected, ApprovalWaitTimeout, Blocked, Denied,
                     InvalidRequest, RpcFailed, ToolgateError, Unavailable)
from .types import Approval, Decision, RecorderStats, Verdict

__version__ = "0.1.0"

__all__ = [
    "Approval", "ApprovalExpired", "ApprovalRejected", "ApprovalWaitTimeout", "Blocked",
    "Client", "Decision", "Denied", "GuardedCall", "InvalidRequest", "RecorderStats",
    "RpcFailed", "ToolgateError", "Unavailable", "Verdict",
]
