"""Where the daemon listens: the same lookup as the ``toolgate`` command line."""
from __future__ import annotations

import os
from typing import List, Optional

DEFAULT_TCP = "127.0.0.1:7470"


def default_socket_candidates() -> List[str]:
    """The daemon's default socket places, in the order the daemon itself uses them."""
    out = []
    if os.environ.get("RUNTIME_DIRECTORY"):
        # systemd joins several directories with ':'; the daemon takes the first.
        out.append(os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "toolgate.sock"))
    out.append("/run/toolgate/toolgate.sock")
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "toolgate", "toolgate.sock"))
    out.append(f"/tmp/toolgate-{os.getuid()}/toolgate.sock")
    return out


def resolve_address(address: Optional[str] = None) -> str:
    """Returns a gRPC target for the daemon.

    ``address`` wins when given; then ``$TOOLGATE_ADDRESS``; then the first of the daemon's
    default sockets that exists and is writable; then ``127.0.0.1:7470``. A bare absolute path
    is taken as a Unix socket (``unix:PATH``); ``HOST:PORT`` and ``unix:PATH`` pass unchanged.
    """
    target = address or os.environ.get("TOOLGATE_ADDRESS") or ""
    if not target:
        for path in default_socket_candidates():
            if os.access(path, os.W_OK):
                return "unix:" + path
        return DEFAULT_TCP
    if target.startswith("/"):
        return "unix:" + target
    return target
