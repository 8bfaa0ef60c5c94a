#!/usr/bin/env python3
"""A fake of the upstream audit API (the Kaplaix HTTP API, v1) for toolgate's tests.

toolgated ships audit events to an upstream `POST /v1/events`. Integration and end-to-end tests
point the real daemon at this fake instead, on an ephemeral loopback port, and then look at what
it received or script what it answers: outages (5xx, 429 with Retry-After), rejected events
(4xx), slow answers and reset connections. The API imitated, and the choices made where the
upstream's documentation is silent, are written down in `kaplaix-api.md`.

Only the Python standard library is used (Debian's /usr/bin/python3, 3.11).

As a module (pytest)::

    from fake_upstream import FakeUpstream

    with FakeUpstream(api_key="al_test_fake").start() as up:
        ...start toolgated with upstream url = up.url, api key = "al_test_fake"...
        up.fail_next(2, status=429, retry_after=1)  # the next two POST /v1/events get 429
        assert up.wait_for_events(10, timeout=30)   # 10 distinct eventIds accepted
        assert len(up.events()) >= 10                # duplicates (retries) included

As a script (e.g. for benchmarks or by hand)::

    python3 fake_upstream.py [--host 127.0.0.1] [--port 0] [--api-key KEY] [--sink]
                             [--tls-cert CERT.pem --tls-key KEY.pem]

prints exactly one line `PORT <n>` to stdout once it listens, then serves until SIGTERM or
SIGINT. `--sink` is a fast benchmark sink: it still authenticates and parses every body (gunzip
included) to count events, but skips per-event validation and keeps neither the events nor the
request log; `GET /v1/events/_count` answers `{"count": N}`. `--tls-cert`/`--tls-key` (or
`FakeUpstream(tls=(cert, key))`) serve HTTPS with that certificate; `url` then starts with
https://. A client that refuses the certificate just closes the connection: nothing is recorded.

HTTP behaviour, in short:

* `POST /v1/events` (Bearer auth, optional `Content-Encoding: gzip`). One JSON object (the
  documented "single" format) -> 202 `{"accepted": 1, "eventId": ...}`, or 400/422 with the error
  envelope. A JSON array ("array" format, toolgate's batch extension) -> 202
  `{"accepted": N, "rejected": [{"index", "eventId", "error": {"code", "message"}}]}`: a bad
  event rejects only its own index.
* `POST /v1/agents` -> 201 `{"id": <uuid>, "agentId": ..., ...}`, 409 CONFLICT on a duplicate.
* `POST /v1/policies/check` -> 200 `{"verdict", "reason", "pendingActionId"?}` from the rules of
  `policy_verdict` (ALLOW when none matches; REQUIRE_APPROVAL creates an upstream pending
  action); `fail_policy_checks` / `slow_policy_checks` script its faults.
* `GET /v1/policies` -> `{"data": <set_policies(...)>, "nextCursor": null}`.
* `GET /v1/guardian/pending-actions?status=` -> `{"data": [...], "nextCursor": null}`;
  `POST /v1/guardian/pending-actions/:id/decide` `{"decision", "reason", "approverId"}`;
  `decide_pending` decides one as a human on the upstream would.
* `GET /v1/events/_received` -> `{"events": [...]}` and `GET /v1/events/_count` ->
  `{"count": N}`: introspection for debugging; no auth, not faulted, not in the request log.
* Anything else -> 404 NOT_FOUND. Errors use `{"error": {"code", "message", "details"?}}`.

Scripted faults apply to `POST /v1/events` only, in this order of precedence: a pending
`reset_connections`, then `fail_next`, then `fail_for`, then the normal path (authentication,
parsing, validation, `reject_event` rules). Faults thus act like a proxy in front of the API: they
are answered even to a request with a bad key. `slow` delays whatever answer was decided
(including a reset); the request is processed (and its events recorded) *before* the delay, as a
real server that is slow to answer would have done, so a client that times out and retries
produces duplicates.

Every method of FakeUpstream is thread-safe and may be called while the fake is serving.
Nothing is printed to stdout except the `PORT <n>` line of script mode; unexpected errors go to
stderr and are answered 500 INTERNAL_ERROR, never crash the server.
"""

import argparse
import collections
import hmac
import http.server
import json
import re
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import zlib
from datetime import datetime

__all__ = ["FakeUpstream", "validate_event", "EventError"]

# --- The envelope rules (kaplaix-api.md, "Event envelope") ---------------------------------------

SCHEMA_VERSION = "1.0"
KNOWN_CATEGORIES = frozenset(
    {
        "identity",
        "reasoning",
        "tool_api",
        "data_movement",
        "approval",
        "session_start",
        "session_end",
    }
)
# Categories starting with this prefix are accepted without payload rules (forward compatibility).
EXTENSION_CATEGORY_PREFIX = "x-"
DATA_MOVEMENT_OPERATIONS = ("read", "write", "delete", "export")

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
# RFC 3339 date-time: the timezone (Z or +hh:mm / -hh:mm) is mandatory.
_TIMESTAMP_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_DECIDE_RE = re.compile(r"^/v1/guardian/pending-actions/([^/]+)/decide$")
_INTEGRATION_MODES = ("collector", "sdk", "http", "sidecar")

# Error code sent with each status. The documented ones first; the others (408, 429, 502-504)
# are not named by the upstream's documentation and are the fake's choice.
_ERROR_CODES = {
    400: "VALIDATION_ERROR",
    401: "AUTHENTICATION_FAILED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    422: "NORMALIZATION_FAILED",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}

# Bodies larger than this (on the wire, or after gunzip) are refused, so that a broken client
# or a gzip bomb cannot exhaust the test machine's memory.
MAX_BODY_BYTES = 64 * 1024 * 1024


def _error_code(status):
    return _ERROR_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "ERROR")


def _error_envelope(status, message, details=None, code=None):
    error = {"code": code or _error_code(status), "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


class EventError(Exception):
    """Why one event envelope is refused: an HTTP status, an error code, a message, details."""

    def __init__(self, status, code, message, details=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def envelope(self):
        return _error_envelope(self.status, self.message, self.details, self.code)

    def rejected_entry(self, index, event):
        """The entry for this event in an array answer's "rejected" list."""
        event_id = event.get("eventId") if isinstance(event, dict) else None
        error = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {
            "index": index,
            "eventId": event_id if isinstance(event_id, str) else None,
            "error": error,
        }


def _issue(field, message, code):
    """One entry of a VALIDATION_ERROR's details (zod-like, as the upstream's)."""
    return {"path": [field] if field is not None else [], "message": message, "code": code}


def _type_issue(field, expected, value):
    return _issue(field, "Expected %s, received %s" % (expected, _json_type(value)), "invalid_type")


def _check_string(event, field, issues, min_len=1, max_len=255):
    if field not in event:
        issues.append(_issue(field, "Required", "invalid_type"))
        return None
    value = event[field]
    if not isinstance(value, str):
        issues.append(_type_issue(field, "string", value))
        return None
    if len(value) < min_len:
        message = "String must contain at least %d character(s)" % min_len
        issues.append(_issue(field, message, "too_small"))
        return None
    if len(value) > max_len:
        message = "String must contain at most %d character(s)" % max_len
        issues.append(_issue(field, message, "too_big"))
        return None
    return value


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _valid_timestamp(value):
    match = _TIMESTAMP_RE.match(value)
    if not match:
        return False
    date, clock, fraction, zone = match.groups()
    # Let datetime check the ranges (month 13, February 30, 25:00...). It takes at most
    # microseconds, so the fraction is cut to 6 digits; RFC 3339 allows any number.
    text = "%sT%s%s%s" % (date, clock, "." + fraction[:6] if fraction else "", zone.upper())
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def validate_event(event):
    """Checks one event envelope; raises EventError (400 or 422) when the upstream would refuse it.

    400 VALIDATION_ERROR (with zod-like details, one per broken field) for a missing or
    wrong-typed required field; 422 NORMALIZATION_FAILED for an unknown category or a missing
    required payload field. Optional and unknown top-level fields are not checked.
    """
    if not isinstance(event, dict):
        raise EventError(
            400,
            "VALIDATION_ERROR",
            "Event must be a JSON object",
            [_type_issue(None, "object", event)],
        )
    issues = []
    event_id = _check_string(event, "eventId", issues)
    if event_id is not None and not _UUID_RE.match(event_id):
        issues.append(_issue("eventId", "Invalid uuid", "invalid_string"))
    _check_string(event, "agentId", issues)
    _check_string(event, "sessionId", issues)
    timestamp = _check_string(event, "sourceTimestamp", issues)
    if timestamp is not None and not _valid_timestamp(timestamp):
        message = "Invalid datetime: ISO 8601 with a timezone (Z or +hh:mm) required"
        issues.append(_issue("sourceTimestamp", message, "invalid_string"))
    category = _check_string(event, "category", issues)
    if "schemaVersion" not in event:
        issues.append(_issue("schemaVersion", "Required", "invalid_type"))
    elif event["schemaVersion"] != SCHEMA_VERSION:
        message = 'Invalid literal value, expected "%s"' % SCHEMA_VERSION
        issues.append(_issue("schemaVersion", message, "invalid_literal"))
    payload = event.get("payload")
    if "payload" not in event:
        issues.append(_issue("payload", "Required", "invalid_type"))
    elif not isinstance(payload, dict):
        issues.append(_type_issue("payload", "object", payload))
    if issues:
        fields = ", ".join(".".join(str(p) for p in i["path"]) for i in issues)
        raise EventError(400, "VALIDATION_ERROR", "Invalid event envelope: " + fields, issues)
    _normalize(category, payload)


def _normalize(category, payload):
    """The 422 rules: the category must be known and its required payload fields present."""
    if category.startswith(EXTENSION_CATEGORY_PREFIX):
        return
    if category not in KNOWN_CATEGORIES:
        raise EventError(422, "NORMALIZATION_FAILED", "Unknown category: %s" % category)

    def require_string(field):
        value = payload.get(field)
        if not isinstance(value, str) or not value:
            raise EventError(
                422,
                "NORMALIZATION_FAILED",
                "Category %s requires payload.%s (non-empty string)" % (category, field),
            )
        return value

    if category == "identity":
        require_string("agentName")
    elif category == "reasoning":
        require_string("summary")
    elif category == "tool_api":
        require_string("toolName")
        if not _SHA256_HEX_RE.match(require_string("argumentsHash")):
            raise EventError(
                422,
                "NORMALIZATION_FAILED",
                "payload.argumentsHash must be 64 lowercase hex characters (SHA-256)",
            )
    elif category == "data_movement":
        if payload.get("operation") not in DATA_MOVEMENT_OPERATIONS:
            raise EventError(
                422,
                "NORMALIZATION_FAILED",
                "Category data_movement requires payload.operation in "
                + "|".join(DATA_MOVEMENT_OPERATIONS),
            )
    elif category == "approval":
        require_string("approverId")


def _parse_json(body):
    """json.loads that refuses NaN/Infinity (not JSON) and turns every failure into ValueError."""

    def reject_constant(name):
        raise ValueError("%s is not valid JSON" % name)

    try:
        return json.loads(body, parse_constant=reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _gunzip(data):
    """Decompresses a gzip body (all members), refusing more than MAX_BODY_BYTES of output."""
    out = []
    size = 0
    while data:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        chunk = d.decompress(data, MAX_BODY_BYTES + 1 - size)
        size += len(chunk)
        out.append(chunk)
        if size > MAX_BODY_BYTES or d.unconsumed_tail:
            raise ValueError("decompressed body larger than %d bytes" % MAX_BODY_BYTES)
        if not d.eof:
            raise ValueError("truncated gzip body")
        data = d.unused_data.lstrip(b"\x00")  # gzip allows trailing zero padding
    return b"".join(out)


# --- Scripted faults ------------------------------------------------------------------------------


class _RejectRule:
    def __init__(self, predicate, status, code, message):
        self.predicate = predicate
        self.status = status
        self.code = code
        self.message = message


class _Faults:
    """The scripted faults; guarded by FakeUpstream._lock."""

    def __init__(self):
        self.fail_until = 0.0  # monotonic deadline of fail_for
        self.fail_for_status = 503
        self.fail_for_retry_after = None
        self.fail_next = collections.deque()  # one (status, retry_after) per request to fail
        self.resets = 0  # requests left to reset
        self.slow_seconds = 0.0
        self.slow_left = None  # requests left to delay; None = all of them
        self.reject_rules = []


# --- The server -----------------------------------------------------------------------------------


class _Answer:
    """What to send back for one request: status, JSON body (or None for a reset), headers."""

    def __init__(self, status, body=None, headers=None, reset=False):
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.reset = reset


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address, fake, ssl_context=None):
        self.fake = fake
        self.ssl_context = ssl_context
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def get_request(self):
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs on the connection's own thread (_Handler.setup), so that a slow
            # or refusing client does not hold up accept().
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def server_bind(self):
        # HTTPServer.server_bind() also resolves the host's FQDN, which can stall for seconds
        # where DNS is broken; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # A client hanging up (or stop() closing its connection) is routine, not worth a trace.
        if isinstance(sys.exc_info()[1], OSError):
            return
        sys.stderr.write("fake_upstream: error serving %s\n" % (client_address,))
        traceback.print_exc(file=sys.stderr)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server_version = "fake-upstream/1"
    # Headers and body are written separately; without TCP_NODELAY the client's delayed ACK
    # would add ~40 ms to every answer.
    disable_nagle_algorithm = True

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # an ssl.SSLError (an OSError) ends this connection
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - the base class's parameter name
        pass  # quiet: tests read requests() instead

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        fake = self.server.fake
        try:
            body, error = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if error is not None:
            # The body could not be read, so the connection cannot be reused.
            self.close_connection = True
            self._send(_Answer(400, _error_envelope(400, error)))
            return
        try:
            answer = fake._handle(self.command, self.path, self.headers, body)
        except Exception:  # never let a bug in the fake kill the connection silently
            traceback.print_exc(file=sys.stderr)
            answer = _Answer(500, _error_envelope(500, "fake upstream internal error"))
        self._send(answer)

    def _read_body(self):
        """Returns (raw body, None) or (None, reason) when the framing is unusable."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b"", None
        try:
            n = int(length)
        except ValueError:
            return None, "invalid Content-Length"
        if n < 0 or n > MAX_BODY_BYTES:
            return None, "Content-Length out of range"
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("body truncated")
        return data, None

    def _read_chunked(self):
        parts = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise ConnectionError("chunk header truncated")
            try:
                n = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None, "invalid chunk size"
            if n == 0:
                break
            size += n
            if size > MAX_BODY_BYTES:
                return None, "body too large"
            parts.append(self.rfile.read(n))
            self.rfile.readline(1024)  # CRLF after the chunk
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(parts), None

    def _send(self, answer):
        if answer.reset:
            self._reset()
            return
        data = json.dumps(answer.body, separators=(",", ":")).encode("utf-8")
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _reset(self):
        """Closes the connection with an RST instead of an answer (SO_LINGER 0, then close)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # socket.close() keeps the descriptor open while a makefile() object still refers to it.
        self.rfile.close()
        self.connection.close()


class FakeUpstream:
    """The fake upstream: an HTTP server on a background thread plus what it received.

    Thread-safe. Start with start() (port 0 picks an ephemeral port; see `url`), stop with stop()
    or use it as a context manager. After stop(), start() serves again on the same port, keeping
    what was received, the faults and the agents: handy to simulate an upstream restart.
    """

    def __init__(self, api_key="al_test_fake", host="127.0.0.1", port=0, sink=False, tls=None):
        """api_key: the Bearer key required (None turns authentication off).
        sink: the benchmark mode (see the module docstring): count events, keep nothing.
        tls: None (plain HTTP), or (certificate file, key file) to serve HTTPS; the certificate
        file may hold the chain.
        """
        self._api_key = api_key
        self._host = host
        self._port = port
        self._sink = sink
        self._ssl_context = None
        if tls is not None:
            self._ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ssl_context.load_cert_chain(tls[0], tls[1])
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when events arrive
        # Guarded by _lock:
        self._events = []
        self._event_ids = []
        self._distinct_ids = set()
        self._count = 0
        self._requests = []
        self._agents = {}
        self._policy_rules = []  # [(predicate, verdict, reason)], first match wins
        self._policy_faults = collections.deque()  # scripted answers to /v1/policies/check
        self._policy_fail_until = 0.0
        self._policy_delay = 0.0
        self._policies = []  # what GET /v1/policies lists
        self._pending = {}  # upstream pending actions by id, in creation order
        self._faults = _Faults()
        self._connections = set()
        # Owned by start()/stop():
        self._server = None
        self._thread = None
        self._stopping = threading.Event()  # wakes slow() delays at stop()

    # --- Life cycle ---

    def start(self):
        """Starts serving on a background thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._port), self, self._ssl_context)
        self._port = self._server.server_address[1]  # a restart reuses the port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-upstream:%d" % self._port,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self):
        """Stops listening and closes every open (keep-alive) connection."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def port(self):
        return self._port

    @property
    def url(self):
        """The base URL, without a trailing slash, e.g. "http://127.0.0.1:40123"."""
        host = "[%s]" % self._host if ":" in self._host else self._host
        scheme = "https" if self._ssl_context is not None else "http"
        return "%s://%s:%d" % (scheme, host, self._port)

    # --- What was received ---

    def events(self):
        """Every event envelope accepted (202), in arrival order, duplicates included.

        The list is a copy; the dicts in it are shared with the fake, treat them as read-only.
        Always empty in sink mode.
        """
        with self._lock:
            return list(self._events)

    def event_ids(self):
        """The eventId of each accepted event, in arrival order, duplicates included."""
        with self._lock:
            return list(self._event_ids)

    def count(self):
        """How many events were accepted (duplicates included); the only figure in sink mode."""
        with self._lock:
            return self._count

    def requests(self):
        """Every request to the API (introspection endpoints excluded), in arrival order.

        Each is {"t": time.monotonic() at arrival, "method", "path" (as sent, with any query),
        "status": what was answered (None for a reset connection), "headers": {lower-case name:
        value}, "body": the raw body after gunzip}. Empty in sink mode.
        """
        with self._lock:
            return list(self._requests)

    def agents(self):
        """The agents registered by POST /v1/agents: {agentId: the record answered}."""
        with self._lock:
            return {k: dict(v) for k, v in self._agents.items()}

    def reset_received(self):
        """Forgets events, event ids, the count and the request log (not agents, not faults)."""
        with self._lock:
            self._events = []
            self._event_ids = []
            self._distinct_ids = set()
            self._count = 0
            self._requests = []

    def wait_for_events(self, n, timeout=30.0):
        """Waits until at least n distinct eventIds were accepted (in sink mode: n events).

        Returns True when they were, False on timeout.
        """
        with self._changed:
            return self._changed.wait_for(lambda: self._progress() >= n, timeout=timeout)

    def _progress(self):
        return self._count if self._sink else len(self._distinct_ids)

    # --- Scripted faults ---

    def fail_for(self, seconds, status=503, retry_after=None):
        """Answers `status` (with the error envelope, and Retry-After when given) to every
        POST /v1/events for `seconds` from now."""
        with self._lock:
            self._faults.fail_until = time.monotonic() + seconds
            self._faults.fail_for_status = status
            self._faults.fail_for_retry_after = retry_after

    def fail_next(self, n, status=503, retry_after=None):
        """Answers `status` to the next n POST /v1/events, with `Retry-After: str(retry_after)`
        when retry_after is not None. Calls queue up: fail_next(1, 429); fail_next(2) -> the next
        three requests get 429, 503, 503."""
        with self._lock:
            self._faults.fail_next.extend([(status, retry_after)] * n)

    def reject_event(
        self, predicate, status=422, code="NORMALIZATION_FAILED", message="rejected by the test"
    ):
        """Rejects every otherwise valid event for which predicate(envelope) is true.

        Single format: the request is answered `status` with the error envelope. Array format:
        202, and the event's index is listed in "rejected" with {code, message}. Rules add up;
        the first that matches applies. A predicate that raises is reported on stderr and counts
        as not matching.
        """
        with self._lock:
            self._faults.reject_rules.append(_RejectRule(predicate, status, code, message))

    def reset_connections(self, n):
        """The next n POST /v1/events: read the body, then close the socket with an RST
        (SO_LINGER 0) without answering."""
        with self._lock:
            self._faults.resets += n

    def slow(self, seconds, n=None):
        """Delays the answers to POST /v1/events by `seconds`: the next n of them, or all while
        this setting lasts when n is None. Replaces the previous setting; slow(0) ends it."""
        with self._lock:
            self._faults.slow_seconds = seconds
            self._faults.slow_left = n

    def clear_faults(self):
        """Ends every scripted fault and reject rule."""
        with self._lock:
            self._faults = _Faults()

    # --- Policies and the guardian (POST /v1/policies/check, GET /v1/policies,
    #     GET /v1/guardian/pending-actions, POST /v1/guardian/pending-actions/:id/decide) ---

    def policy_verdict(self, verdict, reason="scripted verdict", predicate=None):
        """Answers /v1/policies/check with `verdict` (ALLOW | DENY | REQUIRE_APPROVAL) for the
        bodies where predicate(body) is true (all when None). Rules add up, first match wins;
        with none matching the answer is ALLOW. REQUIRE_APPROVAL creates an upstream pending
        action and answers its id as pendingActionId."""
        with self._lock:
            self._policy_rules.append((predicate, verdict, reason))

    def fail_policy_checks(self, n=None, status=503, seconds=None):
        """The next n policy checks (or all for `seconds`) are answered `status`; status 0
        resets the connection instead."""
        with self._lock:
            if n is not None:
                self._policy_faults.extend([status] * n)
            if seconds is not None:
                self._policy_fail_until = time.monotonic() + seconds
                self._policy_fail_status = status

    def slow_policy_checks(self, seconds):
        """Delays every policy check answer by `seconds` (0 ends it)."""
        with self._lock:
            self._policy_delay = seconds

    def clear_policy(self):
        """Forgets verdict rules and policy-check faults."""
        with self._lock:
            self._policy_rules = []
            self._policy_faults = collections.deque()
            self._policy_fail_until = 0.0
            self._policy_delay = 0.0

    def set_policies(self, policies):
        """What GET /v1/policies lists (as {"data": policies, "nextCursor": null})."""
        with self._lock:
            self._policies = list(policies)

    def policies(self):
        with self._lock:
            return list(self._policies)

    def pending_actions(self):
        """The upstream's pending actions: {id: record}."""
        with self._lock:
            return {k: dict(v) for k, v in self._pending.items()}

    def decide_pending(self, action_id, decision, reason="", approver_id="upstream-human"):
        """Decides an upstream pending action as a human on the upstream's UI would."""
        with self._lock:
            action = self._pending[action_id]
            action.update(
                status=decision,
                decisionReason=reason,
                approverId=approver_id,
                decidedAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )

    def _authenticated(self, headers, record, make_answer):
        answer = self._authenticate(headers) or make_answer()
        self._log(record, answer)
        return answer

    def _policy_check(self, headers, body, record):
        with self._lock:
            delay = self._policy_delay
            fault = None
            if self._policy_faults:
                fault = self._policy_faults.popleft()
            elif time.monotonic() < self._policy_fail_until:
                fault = self._policy_fail_status
        if fault is not None:
            answer = (
                _Answer(0, reset=True)
                if fault == 0
                else _Answer(fault, _error_envelope(fault, "scripted policy failure"))
            )
            self._log(record, answer)
            return answer, delay
        answer = self._authenticate(headers)
        if answer is None:
            doc, answer = self._decode_body(headers, body, record)
            if answer is None:
                answer = self._decide_policy(doc)
        self._log(record, answer)
        return answer, delay

    def _decide_policy(self, doc):
        if not isinstance(doc, dict):
            return _Answer(400, _error_envelope(400, "Body must be a JSON object"))
        issues = [
            _type_issue(f, "string", doc.get(f))
            for f in ("toolType", "operation", "targetSystem", "initiatorType")
            if f in doc and not isinstance(doc[f], str)
        ]
        if issues:
            return _Answer(400, _error_envelope(400, "Invalid policy check", issues))
        with self._lock:
            rules = list(self._policy_rules)
        for predicate, verdict, reason in rules:
            if predicate is None or predicate(doc):
                break
        else:
            verdict, reason = "ALLOW", "no upstream rule matched"
        answer = {"verdict": verdict, "reason": reason}
        if verdict == "REQUIRE_APPROVAL":
            action_id = str(uuid.uuid4())
            with self._lock:
                self._pending[action_id] = {
                    "id": action_id,
                    "status": "pending",
                    "action": dict(doc),
                    "reason": reason,
                    "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            answer["pendingActionId"] = action_id
        return _Answer(200, answer)

    def _list_pending(self, raw_path):
        query = urllib.parse.parse_qs(raw_path.partition("?")[2])
        status = query.get("status", ["pending"])[0]
        with self._lock:
            data = [dict(a) for a in self._pending.values() if a["status"] == status]
        return _Answer(200, {"data": data, "nextCursor": None})

    def _decide_pending(self, action_id, body):
        try:
            doc = _parse_json(body)
        except ValueError as e:
            return _Answer(400, _error_envelope(400, "Body is not valid JSON: %s" % e))
        decision = doc.get("decision") if isinstance(doc, dict) else None
        if decision not in ("approved", "rejected"):
            return _Answer(400, _error_envelope(400, "decision must be approved or rejected"))
        with self._lock:
            action = self._pending.get(action_id)
            if action is None:
                return _Answer(404, _error_envelope(404, "No pending action %s" % action_id))
            if action["status"] != "pending":
                return _Answer(409, _error_envelope(409, "Already %s" % action["status"]))
        self.decide_pending(action_id, decision, doc.get("reason", ""), doc.get("approverId", ""))
        return _Answer(200, self.pending_actions()[action_id])

    # --- Request handling (called on the server's threads) ---

    def _track(self, conn):
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn):
        with self._lock:
            self._connections.discard(conn)

    def _handle(self, method, raw_path, headers, body):
        path = raw_path.split("?", 1)[0]
        if method == "GET" and path == "/v1/events/_received":
            return _Answer(200, {"events": self.events()})
        if method == "GET" and path == "/v1/events/_count":
            return _Answer(200, {"count": self.count()})

        record = None
        if not self._sink:
            record = {
                "t": time.monotonic(),
                "method": method,
                "path": raw_path,
                "status": None,
                "headers": {k.lower(): v for k, v in headers.items()},
                "body": body,
            }
        if method == "POST" and path == "/v1/events":
            answer, delay = self._post_events(headers, body, record)
        elif method == "POST" and path == "/v1/agents":
            answer, delay = self._post_agents(headers, body, record), 0
        elif method == "POST" and path == "/v1/policies/check":
            answer, delay = self._policy_check(headers, body, record)
        elif method == "GET" and path == "/v1/policies":
            answer, delay = self._authenticated(
                headers, record, lambda: _Answer(200, {"data": self.policies(), "nextCursor": None})
            ), 0
        elif method == "GET" and path == "/v1/guardian/pending-actions":
            answer, delay = self._authenticated(
                headers, record, lambda: self._list_pending(raw_path)
            ), 0
        elif method == "POST" and _DECIDE_RE.match(path):
            answer, delay = self._authenticated(
                headers, record, lambda: self._decide_pending(_DECIDE_RE.match(path).group(1), body)
            ), 0
        else:
            message = "No route for %s %s" % (method, path)
            answer, delay = _Answer(404, _error_envelope(404, message)), 0
            self._log(record, answer)
        if delay > 0:
            self._stopping.wait(delay)
        return answer

    def _log(self, record, answer):
        """Adds a request to the log with its answer's status. Caller must not hold _lock."""
        if record is None:
            return
        record["status"] = None if answer.reset else answer.status
        with self._lock:
            self._requests.append(record)

    def _take_fault(self):
        """Consumes the scripted fault for one POST /v1/events: (answer or None, delay)."""
        with self._lock:
            f = self._faults
            delay = 0.0
            if f.slow_seconds > 0 and (f.slow_left is None or f.slow_left > 0):
                delay = f.slow_seconds
                if f.slow_left is not None:
                    f.slow_left -= 1
            if f.resets > 0:
                f.resets -= 1
                return _Answer(0, reset=True), delay
            if f.fail_next:
                status, retry_after = f.fail_next.popleft()
                return self._fault_answer(status, retry_after), delay
            if time.monotonic() < f.fail_until:
                return self._fault_answer(f.fail_for_status, f.fail_for_retry_after), delay
            return None, delay

    @staticmethod
    def _fault_answer(status, retry_after):
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return _Answer(status, _error_envelope(status, "scripted failure (fake upstream)"), headers)

    def _authenticate(self, headers):
        """None when the Bearer key is right, else the 401 answer."""
        if self._api_key is None:
            return None
        value = headers.get("Authorization")
        if value is None:
            return _Answer(401, _error_envelope(401, "Missing Authorization header"))
        scheme, _, key = value.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode("utf-8", "replace"), self._api_key.encode("utf-8")
        ):
            return _Answer(401, _error_envelope(401, "Invalid API key"))
        return None

    def _decode_body(self, headers, body, record):
        """Gunzips when asked and parses JSON: (document, None) or (None, 400 answer)."""
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = _gunzip(body)
            except (ValueError, zlib.error, EOFError) as e:
                return None, _Answer(400, _error_envelope(400, "Body is not valid gzip: %s" % e))
            if record is not None:
                record["body"] = body
        elif encoding not in ("identity", ""):
            message = "Unsupported Content-Encoding: %s" % encoding
            return None, _Answer(400, _error_envelope(400, message))
        try:
            return _parse_json(body), None
        except ValueError as e:
            return None, _Answer(400, _error_envelope(400, "Body is not valid JSON: %s" % e))

    def _post_events(self, headers, body, record):
        fault, delay = self._take_fault()
        answer = fault or self._authenticate(headers)
        if answer is None:
            doc, answer = self._decode_body(headers, body, record)
            if answer is None:
                answer = self._ingest(doc)
        self._log(record, answer)
        return answer, delay

    def _ingest(self, doc):
        """Validates and records the events of one parsed body; returns the answer."""
        if isinstance(doc, list):
            if not doc:
                return _Answer(400, _error_envelope(400, "Empty event array"))
            accepted, rejected = [], []
            for index, event in enumerate(doc):
                error = self._check(event)
                if error is None:
                    accepted.append(event)
                else:
                    rejected.append(error.rejected_entry(index, event))
            self._accept(accepted)
            return _Answer(202, {"accepted": len(accepted), "rejected": rejected})
        if isinstance(doc, dict):
            error = self._check(doc)
            if error is not None:
                return _Answer(error.status, error.envelope())
            self._accept([doc])
            return _Answer(202, {"accepted": 1, "eventId": doc.get("eventId")})
        return _Answer(
            400,
            _error_envelope(
                400,
                "Body must be an event object or an array of events",
                [_type_issue(None, "object or array", doc)],
            ),
        )

    def _check(self, event):
        """The EventError refusing this event, or None when it is accepted."""
        if self._sink:
            return None
        try:
            validate_event(event)
        except EventError as e:
            return e
        with self._lock:
            rules = list(self._faults.reject_rules)
        for rule in rules:
            try:
                matched = rule.predicate(event)
            except Exception:
                sys.stderr.write("fake_upstream: reject_event predicate raised:\n")
                traceback.print_exc(file=sys.stderr)
                continue
            if matched:
                return EventError(rule.status, rule.code, rule.message)
        return None

    def _accept(self, events):
        with self._changed:
            self._count += len(events)
            if not self._sink:
                for event in events:
                    event_id = event.get("eventId")
                    self._events.append(event)
                    self._event_ids.append(event_id)
                    self._distinct_ids.add(event_id)
            self._changed.notify_all()

    def _post_agents(self, headers, body, record):
        answer = self._authenticate(headers)
        if answer is None:
            doc, answer = self._decode_body(headers, body, record)
            if answer is None:
                answer = self._register_agent(doc)
        self._log(record, answer)
        return answer

    def _register_agent(self, doc):
        if not isinstance(doc, dict):
            return _Answer(
                400,
                _error_envelope(
                    400,
                    "Body must be a JSON object",
                    [_type_issue(None, "object", doc)],
                ),
            )
        issues = []
        agent_id = doc.get("agentId")
        if "agentId" not in doc:
            issues.append(_issue("agentId", "Required", "invalid_type"))
        elif not isinstance(agent_id, str):
            issues.append(_type_issue("agentId", "string", agent_id))
        elif not _AGENT_ID_RE.match(agent_id):
            message = "Must be 1-128 characters of [A-Za-z0-9_-]"
            issues.append(_issue("agentId", message, "invalid_string"))
        mode = doc.get("integrationMode")
        if mode is not None and mode not in _INTEGRATION_MODES:
            message = "Expected one of " + "|".join(_INTEGRATION_MODES)
            issues.append(_issue("integrationMode", message, "invalid_enum_value"))
        if issues:
            return _Answer(400, _error_envelope(400, "Invalid agent", issues))
        with self._lock:
            if agent_id in self._agents:
                return _Answer(409, _error_envelope(409, "Agent %s already exists" % agent_id))
            agent = dict(doc)
            agent["id"] = str(uuid.uuid4())
            self._agents[agent_id] = agent
            return _Answer(201, dict(agent))


# --- Script mode ----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Fake upstream audit API (Kaplaix v1) for toolgate's tests."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: ephemeral)")
    parser.add_argument("--api-key", default="al_test_fake", help="Bearer key to require")
    parser.add_argument(
        "--sink", action="store_true", help="benchmark sink: count events, keep nothing"
    )
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM, chain)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())

    fake = FakeUpstream(args.api_key, args.host, args.port, sink=args.sink, tls=tls).start()
    sys.stdout.write("PORT %d\n" % fake.port)
    sys.stdout.flush()
    while not done.wait(1.0):  # a timed wait, so that signals are handled promptly
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
