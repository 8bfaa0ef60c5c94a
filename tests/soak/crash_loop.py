#!/usr/bin/env python3
"""The long crash loop: toolgated SIGKILLed 50 times (by default) under streaming load.

The same test as tests/integration/test_crash.py (which runs 5 kills in every ctest run), made
longer; not run by ctest. Prints one line per kill, and the figures as one JSON object on the
last line. Exit status 0 when every acknowledged event was delivered, every chain verified and
every duplicate was identical; an assertion error otherwise.

    TOOLGATED=build/daemon/toolgated TOOLGATE_CLI=build/client/toolgate \\
    TOOLGATE_PYTHON_STUBS=build/python /usr/bin/python3 tests/soak/crash_loop.py [--kills 50]
        [--clients 4] [--seed N] [--format array|single]

The binaries default to those under build/, as in the integration tests.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from conftest import API_KEY, Daemon  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402
from test_crash import CRASH_ARGS, run_crash_loop  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--format", choices=["array", "single"], default="array",
                   help="upstream.ingest_format")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tg-soak-"))
    upstream = FakeUpstream(api_key=API_KEY).start()
    daemon_args = [a if a != "upstream.ingest_format=array" else
                   f"upstream.ingest_format={args.format}" for a in CRASH_ARGS]
    daemon = Daemon(work / "d", args=daemon_args + ["--upstream-url", upstream.url],
                    env={"TOOLGATE_API_KEY": API_KEY})
    (work / "d").mkdir()
    try:
        figures = run_crash_loop(daemon, upstream, work, kills=args.kills, clients=args.clients,
                                 seed=args.seed, log=lambda s: print(s, flush=True))
    finally:
        try:
            daemon.stop()
        finally:
            upstream.stop()
    logs = daemon.logs()
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "WARNING: ThreadSanitizer"):
        assert marker not in logs, f"{marker} in {daemon.log_path}"
    if not args.keep:
        shutil.rmtree(work)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
