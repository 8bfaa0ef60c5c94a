"""The toolgate client: record audit events, check tool calls, wait for approvals.

A :class:`Client` holds one gRPC channel to the daemon (Unix socket or TCP) and one background
recorder. Recording never blocks the agent; checking a tool call is a synchronous call to the
daemon (microseconds of policy evaluation plus the round trip), and waiting for an approval
streams the daemon's heartbeats until a human decides.

Thread-safety: a Client may be shared by every thread of the agent. The guarded calls
(:meth:`Client.guard`, :meth:`Client.tool_call`) work in plain and in ``async`` code; in async
code the blocking parts (Check, waiting for an approval) run in a worker thread.
"""
from __future__ import annotations

import asyncio
import atexit
import dataclasses
import datetime
import functools
import gc
import inspect
import json
import logging
import random
import time
import uuid
import weakref
from typing import (Any, Callable, List, Mapping, Optional, Tuple, TypeVar, Union, cast,
                    overload)

import grpc

from . import errors
from ._address import resolve_address
from ._recorder import Recorder
from .types import Approval, Decision, RecorderStats, Verdict
from .v1 import events_pb2, policy_pb2, policy_pb2_grpc

log = logging.getLogger("toolgate")

F = TypeVar("F", bound=Callable[..., Any])
Arguments = Union[None, str, Mapping[str, Any]]

_live_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for c in list(_live_clients):
        c.close(timeout=c.close_timeout_at_exit)


atexit.register(_close_all_at_exit)


_second_cache = (-1, "")  # (a whole second, its "YYYY-MM-DDTHH:MM:SS" text)


def now_rfc3339() -> str:
    """The current time as RFC 3339 with microseconds, in UTC (``...Z``)."""
    global _second_cache
    micros = time.time_ns() // 1000
    second, frac = divmod(micros, 1_000_000)
    cached_second, text = _second_cache
    if cached_second != second:  # strftime once a second, not once an event
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, text)
    return f"{text}.{frac:06d}Z"


def new_event_id() -> str:
    """A random (version 4) UUID. Unique, not secret: the fast generator is enough (and the
    random module reseeds itself in a forked child)."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _arguments_json(arguments: Arguments) -> str:
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments  # already JSON text; the daemon canonicalizes it
    return json.dumps(arguments, default=str, ensure_ascii=False)


def _parse_time(text: str) -> Optional[float]:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Client:
    """A connection to toolgated for one agent.

    Args:
        agent_id: the agent's id in every event and check (required, 1-255 characters).
        session_id: the session (one run of the agent); a new UUID when omitted.
        address: ``unix:/path/to.sock``, ``/path/to.sock`` or ``host:port``. Default:
            ``$TOOLGATE_ADDRESS``, else the daemon's default socket when it exists, else
            ``127.0.0.1:7470`` (the same lookup as the ``toolgate`` command).
        max_buffered: events held in memory until the daemon acknowledges them; beyond, new
            events are dropped and counted (``stats().dropped``). Default 10000.
        check_timeout: seconds a Check may take, connecting included. Default 5.
        fail_open: when the daemon cannot answer a Check in time, run the tool anyway
            (recorded with ``source="failed_open"``) instead of raising
            :class:`~toolgate.Unavailable`. Default False (fail closed).
        attribution: default attribution fields for every event (``trace_id``, ``run_id``,
            ``source_framework``, ``agent_version`` … of ``toolgate.v1.Attribution``).
        close_timeout_at_exit: if the client is still open when the interpreter exits, how
            long to wait for the buffer to drain. Default 5 seconds.
        channel_options: extra gRPC channel options, ``[(name, value), ...]``.

    Use it as a context manager, or call :meth:`close`, so that buffered events are sent.
    """

    def __init__(self, agent_id: str, *, session_id: Optional[str] = None,
                 address: Optional[str] = None, max_buffered: int = 10000,
                 check_timeout: float = 5.0, fail_open: bool = False,
                 attribution: Optional[Mapping[str, str]] = None,
                 close_timeout_at_exit: float = 5.0,
                 channel_options: Optional[List[Tuple[str, Any]]] = None) -> None:
        if not agent_id:
            raise ValueError("agent_id is required")
        self.agent_id = agent_id
        self.session_id = session_id or str(uuid.uuid4())
        self.address = resolve_address(address)
        self.check_timeout = check_timeout
        self.fail_open = fail_open
        self.close_timeout_at_exit = close_timeout_at_exit
        self._attribution = events_pb2.Attribution(**dict(attribution or {}))
        self._has_attribution = self._attribution.ByteSize() > 0
        # Reconnect quickly after a daemon restart (gRPC's default backoff grows to 120 s).
        options = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 2000),
                   ("grpc.max_send_message_length", 8 << 20)] + list(channel_options or [])
        self._channel = grpc.insecure_channel(self.address, options=options)
        self._policy = policy_pb2_grpc.PolicyStub(self._channel)
        self._recorder = Recorder(self._channel, max_buffered=max_buffered)
        self._closed = False
        _live_clients.add(self)

    # ---- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every event recorded so far is durable in the daemon.

        Returns False if `timeout` seconds passed first (the events stay buffered).
        """
        return self._recorder.flush(timeout)

    def close(self, timeout: Optional[float] = 10.0) -> bool:
        """Sends what is buffered (waiting up to `timeout` seconds) and closes the channel.

        Events still unacknowledged at the deadline are dropped and counted. Returns True
        when everything recorded was acknowledged (or rejected as invalid). Idempotent.
        """
        if self._closed:
            return self._recorder.stats().buffered == 0
        self._closed = True
        _live_clients.discard(self)
        ok = self._recorder.close(timeout)
        self._channel.close()
        # grpcio's call objects cancel themselves in __del__ under their state's lock. Left to
        # the garbage collector at interpreter exit, that __del__ can wait for ever on a lock
        # held by one of grpcio's daemon threads, frozen by the exit (seen with Debian's
        # grpcio 1.51: the quickstart hung at exit about 2 runs in 100). Collected now, while
        # those threads still run, nothing is left for the exit.
        gc.collect()
        return ok

    def stats(self) -> RecorderStats:
        """The recorder's counters: recorded, acked, rejected, dropped, buffered, …"""
        return self._recorder.stats()

    @property
    def dropped(self) -> int:
        """Events this client had to drop (buffer full, too large, or left at close)."""
        return self._recorder.stats().dropped

    # ---- recording --------------------------------------------------------------------------

    def record(self, event: events_pb2.Event) -> Optional[str]:
        """Records any event without blocking; returns its ``event_id``, or None if dropped.

        ``agent_id``, ``session_id``, ``event_id`` (a UUID, kept across resends) and
        ``source_timestamp`` (now) are filled when empty, and the client's default attribution
        fields are merged under the event's own. The event is copied; the caller keeps it.
        """
        ev = events_pb2.Event()
        ev.CopyFrom(event)
        return self._record_owned(ev)

    def _record_owned(self, ev: events_pb2.Event) -> Optional[str]:
        """record() of an event this client built: filled in place, not copied."""
        if not ev.agent_id:
            ev.agent_id = self.agent_id
        if not ev.session_id:
            ev.session_id = self.session_id
        if not ev.event_id:
            ev.event_id = new_event_id()
        if not ev.source_timestamp:
            ev.source_timestamp = now_rfc3339()
        if self._has_attribution:
            merged = events_pb2.Attribution()
            merged.CopyFrom(self._attribution)
            merged.MergeFrom(ev.attribution)
            ev.attribution.CopyFrom(merged)
        return ev.event_id if self._recorder.record(ev) else None

    def record_tool_call(self, tool_name: str, arguments: Arguments = None, *,
                         status: str = "success", duration_ms: Optional[int] = None,
                         endpoint: str = "", session_id: Optional[str] = None,
                         **attribution: str) -> Optional[str]:
        """Records a tool call (the arguments are hashed by the daemon, never stored).

        `attribution` takes fields of ``toolgate.v1.Attribution`` (``tool_type``,
        ``operation``, ``target_system``, ``initiator_type``, ``causation_event_id`` …).
        Returns the event id, or None if the event was dropped.
        """
        ev = events_pb2.Event(session_id=session_id or "")
        if attribution:
            ev.attribution.CopyFrom(events_pb2.Attribution(**attribution))
        ev.tool_call.tool_name = tool_name
        ev.tool_call.arguments_json = _arguments_json(arguments)
        ev.tool_call.response_status = status
        ev.tool_call.endpoint = endpoint
        if duration_ms is not None:
            ev.tool_call.duration_ms = int(duration_ms)
        return self._record_owned(ev)

    def session_start(self) -> Optional[str]:
        """Records the start of this client's session."""
        ev = events_pb2.Event()
        ev.session_start.SetInParent()
        return self._record_owned(ev)

    def session_end(self, error: Optional[BaseException] = None) -> Optional[str]:
        """Records the end of the session: completed, or failed with `error`."""
        ev = events_pb2.Event()
        if error is None:
            ev.session_end.outcome = events_pb2.SessionEnd.COMPLETED
        else:
            ev.session_end.outcome = events_pb2.SessionEnd.FAILED
            ev.session_end.error_message = str(error)
            ev.session_end.error_type = type(error).__name__
        return self._record_owned(ev)

    # ---- policy -----------------------------------------------------------------------------

    def check(self, tool_name: str, arguments: Arguments = None, *,
              session_id: Optional[str] = None, tool_type: str = "", operation: str = "",
              target_system: str = "", initiator_type: str = "", initiator_id: str = "",
              timeout: Optional[float] = None) -> Decision:
        """Asks the daemon whether `tool_name` may run with `arguments` (``Policy.Check``).

        Returns the :class:`~toolgate.Decision` whatever it is (this method does not raise
        for DENY; :meth:`authorize` does). Raises :class:`~toolgate.Unavailable` when the
        daemon does not answer within `timeout` (default ``check_timeout``) and
        :class:`~toolgate.InvalidRequest` for a malformed action (e.g. arguments not JSON).
        """
        action = policy_pb2.Action(
            agent_id=self.agent_id, session_id=session_id or self.session_id,
            tool_name=tool_name, tool_type=tool_type, operation=operation,
            target_system=target_system, initiator_type=initiator_type,
            initiator_id=initiator_id, arguments_json=_arguments_json(arguments))
        try:
            answer = self._policy.Check(
                policy_pb2.CheckRequest(action=action),
                timeout=self.check_timeout if timeout is None else timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(f"check {tool_name!r}", e) from None
        return Decision.from_proto(tool_name, answer)

    def wait_for_approval(self, pending_action_id: str, timeout: Optional[float] = None,
                          heartbeat: float = 5.0) -> Approval:
        """Blocks until a human (or the timeout) decides the pending action.

        The daemon pushes the decision the moment it is taken; heartbeats come every
        `heartbeat` seconds meanwhile. A broken stream (daemon restart) is reopened: the
        pending action survives restarts, and a decided one is answered at once. Raises
        :class:`~toolgate.Unavailable` (DEADLINE_EXCEEDED) when `timeout` seconds pass
        undecided, :class:`~toolgate.RpcFailed` (NOT_FOUND) for an unknown id.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        request = policy_pb2.WaitRequest(pending_action_id=pending_action_id,
                                         heartbeat_ms=max(50, int(heartbeat * 1000)))
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise errors.Unavailable(f"wait for {pending_action_id}",
                                         grpc.StatusCode.DEADLINE_EXCEEDED, "still pending")
            try:
                for update in self._policy.WaitForDecision(request, timeout=remaining,
                                                           wait_for_ready=True):
                    if update.heartbeat or update.status == policy_pb2.PENDING:
                        delay = 0.05
                        continue
                    return Approval.from_proto(update)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    raise errors.from_rpc_error(f"wait for {pending_action_id}", e) from None
                log.info("toolgate: waiting for %s: %s; retrying", pending_action_id, code.name)
            time.sleep(delay)  # the stream ended without a decision: ask again
            delay = min(delay * 2, 1.0)

    def authorize(self, tool_name: str, arguments: Arguments = None, *,
                  approval_timeout: Optional[float] = None, fail_open: Optional[bool] = None,
                  **action: Any) -> Decision:
        """Checks a tool call and, when it needs approval, waits for the human's decision.

        Returns the :class:`~toolgate.Decision` (``approval`` set when it waited) if the tool
        may run; raises :class:`~toolgate.Denied`, :class:`~toolgate.ApprovalRejected`,
        :class:`~toolgate.ApprovalExpired` or :class:`~toolgate.ApprovalWaitTimeout` if not.
        `approval_timeout` bounds the wait (default: until the action's own expiry, plus a
        margin). `action` takes the optional fields of :meth:`check`. When the daemon is
        unreachable: raises :class:`~toolgate.Unavailable`, or with `fail_open` (default: the
        client's) returns an ALLOW decision whose ``source`` is ``"failed_open"``.
        """
        try:
            decision = self.check(tool_name, arguments, **action)
        except errors.Unavailable as e:
            if not (self.fail_open if fail_open is None else fail_open):
                raise
            log.warning("toolgate: %s; failing open", e)
            return Decision(tool_name=tool_name, verdict=Verdict.ALLOW, source="failed_open",
                            reason=str(e))
        if decision.verdict == Verdict.ALLOW:
            return decision
        if decision.verdict == Verdict.DENY or not decision.pending_action_id:
            raise errors.Denied(decision)
        if approval_timeout is None:
            expires = _parse_time(decision.expires_at)
            if expires is not None:
                approval_timeout = max(0.0, expires - time.time()) + 30.0
        started = time.monotonic()
        try:
            approval = self.wait_for_approval(decision.pending_action_id, approval_timeout)
        except errors.Unavailable as e:
            if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.ApprovalWaitTimeout(decision, time.monotonic() - started) from None
            raise
        decided = dataclasses.replace(decision, approval=approval)
        if approval.allowed:
            return decided
        if approval.status == "expired":
            raise errors.ApprovalExpired(decided, approval)
        raise errors.ApprovalRejected(decided, approval)

    # ---- guarded tool calls -----------------------------------------------------------------

    def tool_call(self, tool_name: str, arguments: Arguments = None, *,
                  approval_timeout: Optional[float] = None, fail_open: Optional[bool] = None,
                  endpoint: str = "", session_id: Optional[str] = None, tool_type: str = "",
                  operation: str = "", target_system: str = "", initiator_type: str = "",
                  initiator_id: str = "") -> "GuardedCall":
        """A context manager around one tool call: authorize, run the body, record.

        ::

            with client.tool_call("send_payment", {"to": "c-19", "amount": 120}) as call:
                receipt = pay("c-19", 120)
                call.status = "200"          # optional; default "success" / "error"

        Entering raises a :class:`~toolgate.Blocked` error (the body does not run) if the
        policy does not allow the call. Leaving records a tool-call event with the status,
        the duration and the arguments (hashed by the daemon); an exception in the body is
        recorded as ``"error"`` and propagates. Works with ``async with`` too.
        """
        return GuardedCall(self, tool_name, arguments, approval_timeout=approval_timeout,
                           fail_open=fail_open, endpoint=endpoint,
                           action=dict(session_id=session_id, tool_type=tool_type,
                                       operation=operation, target_system=target_system,
                                       initiator_type=initiator_type,
                                       initiator_id=initiator_id))

    @overload
    def guard(self, tool_name: F) -> F: ...

    @overload
    def guard(self, tool_name: Optional[str] = None, *,
              arguments: Optional[Callable[..., Arguments]] = None,
              approval_timeout: Optional[float] = None, fail_open: Optional[bool] = None,
              endpoint: str = "", tool_type: str = "", operation: str = "",
              target_system: str = "", initiator_type: str = "",
              initiator_id: str = "") -> Callable[[F], F]: ...

    def guard(self, tool_name: Any = None, *,
              arguments: Optional[Callable[..., Arguments]] = None,
              approval_timeout: Optional[float] = None, fail_open: Optional[bool] = None,
              endpoint: str = "", tool_type: str = "", operation: str = "",
              target_system: str = "", initiator_type: str = "",
              initiator_id: str = "") -> Any:
        """Decorator: every call of the function is checked, run if allowed, and recorded.

        ::

            @client.guard(tool_name="send_payment", target_system="billing")
            def send_payment(to: str, amount: float) -> str: ...

        `tool_name` defaults to the function's name. The arguments sent to the policy (and
        hashed into the record) are the call's bound arguments as a JSON object (defaults
        applied; ``self``/``cls`` left out; values JSON cannot hold are converted with
        ``str``), or whatever ``arguments(*args, **kwargs)`` returns. A call the policy does
        not allow raises a :class:`~toolgate.Blocked` error without running the function.
        Coroutine functions are supported (the check runs in a worker thread).
        """
        if callable(tool_name):  # used bare: @client.guard
            return self.guard()(tool_name)

        def decorate(fn: F) -> F:
            name = tool_name or fn.__name__
            signature = inspect.signature(fn)

            def call_arguments(args: tuple, kwargs: dict) -> Arguments:
                if arguments is not None:
                    return arguments(*args, **kwargs)
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError:
                    return None  # the call itself will raise the TypeError
                bound.apply_defaults()
                return {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}

            def guarded(args: tuple, kwargs: dict) -> GuardedCall:
                return self.tool_call(name, call_arguments(args, kwargs),
                                      approval_timeout=approval_timeout, fail_open=fail_open,
                                      endpoint=endpoint, tool_type=tool_type,
                                      operation=operation, target_system=target_system,
                                      initiator_type=initiator_type, initiator_id=initiator_id)

            if inspect.iscoroutinefunction(fn):
                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    async with guarded(args, kwargs):
                        return await fn(*args, **kwargs)
                return cast(F, async_wrapper)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with guarded(args, kwargs):
                    return fn(*args, **kwargs)
            return cast(F, wrapper)

        return decorate


class GuardedCall:
    """One authorized tool call; see :meth:`Client.tool_call`.

    Attributes:
        decision: the policy decision (set on entering).
        status: the response status to record; default ``"success"``, or ``"error"`` when
            the body raised. Set it to record something more precise (e.g. ``"404"``).
        endpoint: recorded with the call.
        event_id: the id of the recorded tool-call event (set on leaving; None if dropped).
    """

    def __init__(self, client: Client, tool_name: str, arguments: Arguments, *,
                 approval_timeout: Optional[float], fail_open: Optional[bool], endpoint: str,
                 action: dict) -> None:
        self._client = client
        self.tool_name = tool_name
        self.arguments = arguments
        self._approval_timeout = approval_timeout
        self._fail_open = fail_open
        self._action = action
        self.endpoint = endpoint
        self.status: Optional[str] = None
        self.decision: Optional[Decision] = None
        self.event_id: Optional[str] = None
        self._started = 0.0

    def _authorize(self) -> None:
        self.decision = self._client.authorize(
            self.tool_name, self.arguments, approval_timeout=self._approval_timeout,
            fail_open=self._fail_open, **self._action)
        self._started = time.monotonic()

    def _record(self, failed: bool) -> None:
        duration_ms = int((time.monotonic() - self._started) * 1000)
        status = self.status or ("error" if failed else "success")
        attribution = {k: v for k, v in self._action.items()
                       if k in ("tool_type", "operation", "target_system", "initiator_type",
                                "initiator_id") and v}
        if self.decision is not None and self.decision.event_id:
            # The check's own audit event (an approval) caused this call.
            attribution["causation_event_id"] = self.decision.event_id
        self.event_id = self._client.record_tool_call(
            self.tool_name, self.arguments, status=status, duration_ms=duration_ms,
            endpoint=self.endpoint, session_id=self._action.get("session_id"), **attribution)

    def __enter__(self) -> "GuardedCall":
        self._authorize()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._record(exc_type is not None)

    async def __aenter__(self) -> "GuardedCall":
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._authorize)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._record(exc_type is not None)
