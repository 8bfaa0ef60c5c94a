"""Tests of the deployment files in deploy/: the systemd unit, the Dockerfile, the Kubernetes
example.

Run from the repository root:

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/deploy

Only the standard library, pytest and (for the Kubernetes manifest) PyYAML (python3-yaml).
What a tool or a binary is needed for is skipped when it is absent: systemd-analyze and
systemd-sysusers (systemd 252 on Debian 12), the built toolgated and toolgate (TOOLGATED and
TOOLGATE_CLI as ctest passes them, else build/daemon/toolgated and build/client/toolgate), dpkg.
Docker is not needed: the image is checked by reading its Dockerfile and by running the
binaries the way the image's ENTRYPOINT, CMD and HEALTHCHECK do.
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "toolgated.service"
SYSUSERS = DEPLOY / "systemd" / "toolgate.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
K8S = DEPLOY / "kubernetes" / "toolgate-sidecar.yaml"
EXAMPLE_CONFIG = DEPLOY / "toolgate.yaml"

TOOLGATED = Path(os.environ.get("TOOLGATED", ROOT / "build" / "daemon" / "toolgated"))
TOOLGATE_CLI = Path(os.environ.get("TOOLGATE_CLI", ROOT / "build" / "client" / "toolgate"))

MAX_EXPOSURE = 2.0  # issue 4: `systemd-analyze security` must rate the unit 2.0 or lower

# The Debian 12 packages the runtime image installs for the binaries' shared libraries.
RUNTIME_PACKAGES = {
    "libgrpc++1.51", "libprotobuf32", "libcurl4", "libsqlite3-0", "libyaml-cpp0.7",
    "libcpp-httplib0.11", "libprometheus-cpp-core1.0", "libsystemd0", "libjemalloc2",
    "libdeflate0", "libre2-9", "libssl3", "ca-certificates",
}


# --- Helpers ---------------------------------------------------------------------------------

def need_tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def need_binaries():
    for b in (TOOLGATED, TOOLGATE_CLI):
        if not (b.is_file() and os.access(b, os.X_OK)):
            pytest.skip(f"{b} is not built")


def unit_settings(text):
    """{(section, key): [values in order]} of a unit file (comments and blank lines dropped)."""
    settings, section = {}, None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            continue
        key, _, value = s.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def dockerfile_instructions(text):
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") or (not cur and not s):
            continue  # comments (also the parser directives) and blank lines
        if s.endswith("\\"):
            cur += s[:-1].rstrip() + " "
            continue
        cur += s
        instr, _, rest = cur.partition(" ")
        out.append((instr.upper(), rest.strip()))
        cur = ""
    return out


def dockerfile_stages(text):
    """[(FROM arguments, [instructions of the stage])]."""
    stages = []
    for instr, args in dockerfile_instructions(text):
        if instr == "FROM":
            stages.append((args, []))
        elif stages:
            stages[-1][1].append((instr, args))
    return stages


def clean_env(**extra):
    """The environment for a daemon under test: no proxy (it talks to 127.0.0.1), no
    inherited systemd or toolgate variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("TOOLGATE_")
           and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                         "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY")}
    env.update(extra)
    return env


class NotifySocket:
    """A stand-in for systemd's notification socket: collects sd_notify() datagrams."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cv:
                self.messages.extend(data.decode().splitlines())
                self._cv.notify_all()

    def wait_for(self, message, timeout):
        with self._cv:
            return self._cv.wait_for(lambda: message in self.messages, timeout=timeout)

    def count(self, message):
        with self._cv:
            return self.messages.count(message)

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


def started_fields(log_path, proc, timeout=15.0):
    """The fields of the daemon's "toolgated started" log line (JSON lines on stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path(log_path).read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") == "toolgated started":
                return rec
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"toolgated did not start (exit {proc.poll()}):\n"
                f"{Path(log_path).read_text(errors='replace')}")


def stop(proc, timeout=30.0):
    """SIGTERM, as systemd, Docker and the kubelet stop it; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"toolgated did not exit within {timeout}s of SIGTERM")


def http_get(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return r.status, r.read().decode()


@pytest.fixture
def short_tmp():
    """A short temporary directory: Unix socket paths are limited to 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="tgdeploy-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --- systemd ---------------------------------------------------------------------------------

def test_unit_declares_the_service_contract():
    s = unit_settings(UNIT.read_text())
    svc = lambda key: s.get(("Service", key), [])  # noqa: E731
    assert svc("Type") == ["notify"]
    assert svc("NotifyAccess") == ["main"]
    exec_start = shlex.split(svc("ExecStart")[0])
    assert exec_start[0] == "/usr/local/bin/toolgated"
    assert exec_start[exec_start.index("--config") + 1] == "/etc/toolgate/toolgate.yaml"
    assert exec_start[exec_start.index("--api-key-file") + 1] == "%d/api-key"
    assert svc("LoadCredential") == ["api-key:/etc/toolgate/api-key"]
    assert svc("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert svc("WatchdogSec") == ["30s"]
    assert svc("Restart") == ["on-failure"]
    assert svc("StateDirectory") == ["toolgate"]
    assert svc("RuntimeDirectory") == ["toolgate"]
    assert svc("RuntimeDirectoryMode") == ["0750"]
    assert svc("ConfigurationDirectory") == ["toolgate"]
    # A dedicated user (deploy/systemd/toolgate.conf creates it), not a dynamic one.
    assert svc("User") == ["toolgate"] and svc("DynamicUser") in ([], ["no"])
    assert re.search(r"^u\s+toolgate\s", SYSUSERS.read_text(), re.M)
    # SIGTERM drains for shutdown_timeout (10 s by default) before systemd's SIGKILL.
    timeout_stop = svc("TimeoutStopSec")
    assert timeout_stop and int(timeout_stop[0].rstrip("s")) > 10
    assert s.get(("Install", "WantedBy")) == ["multi-user.target"]


def unit_for_verify(tmp_path):
    """The unit with ExecStart= on a binary that exists here (verify checks that it does)."""
    binary = TOOLGATED if TOOLGATED.is_file() else Path("/bin/true")
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/toolgated",
                                    f"ExecStart={binary}", 1)
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def verify(path):
    r = subprocess.run([need_tool("systemd-analyze"), "verify", str(path)],
                       capture_output=True, text=True, timeout=60)
    # Warnings about other units of the host are not ours: keep the lines naming this one.
    ours = [line for line in (r.stdout + r.stderr).splitlines()
            if path.name in line or str(path) in line]
    return r.returncode, ours, r.stderr


def test_unit_passes_systemd_analyze_verify(tmp_path):
    rc, ours, stderr = verify(unit_for_verify(tmp_path))
    assert rc == 0, stderr
    assert ours == [], "\n".join(ours)


def test_verify_check_is_not_vacuous(tmp_path):
    # A misspelt key and a bad time span must show up, or the test above proves nothing.
    path = unit_for_verify(tmp_path)
    path.write_text(path.read_text().replace("ProtectSystem=", "ProtectSytem=")
                    .replace("WatchdogSec=30s", "WatchdogSec=30q"))
    _, ours, _ = verify(path)
    assert any("ProtectSytem" in line for line in ours), ours
    assert any("30q" in line for line in ours), ours


def test_unit_security_exposure_is_at_most_2():
    cmd = [need_tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(UNIT)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for toolgated\.service: (\d+(?:\.\d+)?)", out)
    assert m, out
    exposure = float(m.group(1))
    print(f"\n{' '.join(cmd[1:])}: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, out


def test_sysusers_file_creates_the_user(tmp_path):
    sysusers = need_tool("systemd-sysusers")
    etc = tmp_path / "etc"
    (etc / "sysusers.d").mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    shutil.copy(SYSUSERS, etc / "sysusers.d" / SYSUSERS.name)
    r = subprocess.run([sysusers, f"--root={tmp_path}", SYSUSERS.name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    user = [line.split(":") for line in (etc / "passwd").read_text().splitlines()
            if line.startswith("toolgate:")]
    assert user, (etc / "passwd").read_text()
    assert 0 < int(user[0][2]) < 1000  # a system user
    assert re.search(r"^toolgate:x:\d+:", (etc / "group").read_text(), re.M)


def test_daemon_honours_the_unit(short_tmp):
    """Runs toolgated as the unit does, systemd's side played by the test: the ExecStart= line
    with %d, $RUNTIME_DIRECTORY, $STATE_DIRECTORY, $CREDENTIALS_DIRECTORY (the key 0400, as
    LoadCredential= leaves it), UMask=, NOTIFY_SOCKET and WATCHDOG_USEC; then ExecReload=
    (SIGHUP) and the stop (SIGTERM)."""
    need_binaries()
    sys.path.insert(0, str(ROOT / "tests" / "fake_upstream"))
    from fake_upstream import FakeUpstream

    settings = unit_settings(UNIT.read_text())
    runtime_dir, state_dir, creds = short_tmp / "run", short_tmp / "state", short_tmp / "creds"
    for d in (runtime_dir, state_dir, creds):
        d.mkdir()
    api_key = "al_test_deploy_0123456789"
    (creds / "api-key").write_text(api_key + "\n")
    (creds / "api-key").chmod(0o400)
    notify = NotifySocket(short_tmp / "notify")
    log_path = short_tmp / "toolgated.log"

    with FakeUpstream(api_key=api_key) as up:
        config = short_tmp / "toolgate.yaml"
        config.write_text(EXAMPLE_CONFIG.read_text() +
                          "\nlisten: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\n"
                          f"upstream:\n  url: {up.url}\n  max_in_flight: 1\n")
        argv = shlex.split(settings[("Service", "ExecStart")][0])
        argv = [str(TOOLGATED)] + [a.replace("%d", str(creds))
                                   .replace("/etc/toolgate/toolgate.yaml", str(config))
                                   for a in argv[1:]]
        umask = int(settings[("Service", "UMask")][0], 8)
        env = clean_env(RUNTIME_DIRECTORY=str(runtime_dir), STATE_DIRECTORY=str(state_dir),
                        CREDENTIALS_DIRECTORY=str(creds), NOTIFY_SOCKET=notify.path,
                        WATCHDOG_USEC="1000000")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log,
                                    preexec_fn=lambda: os.umask(umask))
        try:
            assert notify.wait_for("READY=1", timeout=15), log_path.read_text()
            fields = started_fields(log_path, proc)
            sock = runtime_dir / "toolgate.sock"
            assert f"unix:{sock}" in fields["listen"]
            assert fields["data_dir"] == str(state_dir)
            # The socket is group-accessible whatever the umask: agents in group toolgate.
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            # WatchdogSec=: pings at half of WATCHDOG_USEC (here every 0.5 s).
            assert notify.wait_for("WATCHDOG=1", timeout=5), (
                "no WATCHDOG=1: systemd would kill the daemon after WatchdogSec=")
            # The spool is private to the service user (UMask=0077, StateDirectoryMode=0700).
            spool_files = [p for p in state_dir.rglob("*") if p.is_file()]
            assert spool_files
            assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in spool_files)

            cli = [str(TOOLGATE_CLI), "--address", f"unix:{sock}"]
            r = subprocess.run(cli + ["status"], capture_output=True, text=True, timeout=20)
            assert r.returncode == 0, r.stderr
            r = subprocess.run(cli + ["send", "--agent", "deploy-test", "--session", "s-1",
                                      "--tool", "search", "--args", '{"q": "x"}'],
                               capture_output=True, text=True, timeout=20)
            assert r.returncode == 0, r.stderr
            # The key came from the credential file: the upstream authenticated the request.
            assert up.wait_for_events(1, timeout=20), log_path.read_text()
            auth = {q["headers"].get("authorization") for q in up.requests()
                    if q["status"] == 202}
            assert auth == {f"Bearer {api_key}"}

            # ExecReload=: SIGHUP reloads and the daemon stays up.
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert proc.poll() is None, log_path.read_text()
            r = subprocess.run(cli + ["status"], capture_output=True, text=True, timeout=20)
            assert r.returncode == 0, r.stderr

            timeout_stop = int(settings[("Service", "TimeoutStopSec")][0].rstrip("s"))
            assert stop(proc, timeout=timeout_stop) == 0, log_path.read_text()
            assert notify.wait_for("STOPPING=1", timeout=2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()


# --- Docker ----------------------------------------------------------------------------------

def runtime_stage():
    return dockerfile_stages(DOCKERFILE.read_text())[-1]


def test_dockerfile_is_multi_stage_on_bookworm():
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2
    for from_args, _ in stages:
        assert from_args.split()[0] == "debian:bookworm", from_args
    build_args = " ".join(a for _, a in stages[0][1])
    assert "scripts/deps.sh" in build_args and "cmake --install" in build_args
    runtime = stages[-1][1]
    assert any(i == "COPY" and "--from=build" in a for i, a in runtime)
    # The runtime stage has no compiler, only the libraries.
    installs = " ".join(a for i, a in runtime if i == "RUN" and "apt-get install" in a)
    assert RUNTIME_PACKAGES <= set(installs.split()), installs
    assert not re.search(r"\b(build-essential|cmake|g\+\+|clang|-dev)\b", installs)


def test_dockerfile_runs_as_a_fixed_non_root_user():
    runtime = runtime_stage()[1]
    users = [a for i, a in runtime if i == "USER"]
    assert users, "the runtime stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001"
    runs = " ".join(a for i, a in runtime if i == "RUN")
    assert "--uid 10001" in runs and "--gid 10001" in runs
    for d in ("/var/lib/toolgate", "/run/toolgate"):
        assert re.search(rf"install -d -o 10001 -g 10001 -m 0\d\d0 {d}\b", runs), d


def test_dockerfile_health_check_and_command():
    runtime = runtime_stage()[1]
    checks = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(checks) == 1
    cmd = json.loads(checks[0][checks[0].index("CMD") + 3:].strip())
    assert cmd == ["/usr/local/bin/toolgate", "--address", "unix:/run/toolgate/toolgate.sock",
                   "status"]
    entry = [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"]
    assert entry == [["/usr/local/bin/toolgated"]]
    args = [json.loads(a) for i, a in runtime if i == "CMD"][-1]
    assert args[args.index("--socket") + 1] == "/run/toolgate/toolgate.sock"
    assert args[args.index("--listen") + 1].startswith("127.0.0.1:")
    assert args[args.index("--http-listen") + 1].startswith("127.0.0.1:")
    assert args[args.index("--data-dir") + 1] == "/var/lib/toolgate"
    assert "build" in DOCKERIGNORE.read_text().split() and ".git" in DOCKERIGNORE.read_text()


def test_image_command_and_health_check_work(short_tmp):
    """ENTRYPOINT + CMD and the HEALTHCHECK command, with the image's paths mapped to a
    temporary directory: healthy (exit 0) while the daemon runs, unhealthy (3) once stopped."""
    need_binaries()
    runtime = runtime_stage()[1]
    entry = [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"][-1]
    args = [json.loads(a) for i, a in runtime if i == "CMD"][-1]
    check = [a for i, a in runtime if i == "HEALTHCHECK"][0]
    health = json.loads(check[check.index("CMD") + 3:].strip())

    def mapped(a):
        a = a.replace("/run/toolgate", str(short_tmp / "run"))
        a = a.replace("/var/lib/toolgate", str(short_tmp / "data"))
        return re.sub(r"^127\.0\.0\.1:\d+$", "127.0.0.1:0", a)

    argv = [str(TOOLGATED)] + [mapped(a) for a in entry[1:] + args]
    health = [str(TOOLGATE_CLI)] + [mapped(a) for a in health[1:]]
    log_path = short_tmp / "toolgated.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=clean_env(), stdout=log, stderr=log)
    try:
        started_fields(log_path, proc)
        r = subprocess.run(health, capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert stop(proc) == 0
        r = subprocess.run(health, capture_output=True, text=True, timeout=20)
        assert r.returncode == 3, (r.returncode, r.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _installed_packages():
    """{package: its Depends and Pre-Depends} for every installed package (one dpkg call)."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Depends}, "
                          "${Pre-Depends}\n"], capture_output=True, text=True).stdout
    pkgs = {}
    for line in out.splitlines():
        name, status, deps = (line.split("\t") + ["", ""])[:3]
        if "install ok installed" in status:
            pkgs[name] = deps
    return pkgs


def _owners(paths):
    """{library path: the package that installed it}, trying the /usr-merged and unmerged
    spellings of each path (one dpkg call)."""
    spellings = {}
    for path in paths:
        for p in {path, os.path.realpath(path)}:
            spellings.setdefault(p, path)
            if p.startswith("/usr/lib/"):
                spellings.setdefault(p[len("/usr"):], path)
            elif p.startswith("/lib/"):
                spellings.setdefault("/usr" + p, path)
    out = subprocess.run(["dpkg", "-S", *spellings], capture_output=True, text=True).stdout
    owners = {}
    for line in out.splitlines():
        pkg, _, file = line.partition(": ")
        if file.strip() in spellings and "," not in pkg:
            owners[spellings[file.strip()]] = pkg.split(":")[0].strip()
    return owners


def test_runtime_packages_cover_the_linked_libraries():
    """Every shared library the binaries load comes from a runtime package of the image or
    from one of their dependencies (computed from dpkg's database, no network)."""
    need_binaries()
    need_tool("dpkg-query")
    need_tool("ldd")
    installed = _installed_packages()
    missing = sorted(p for p in RUNTIME_PACKAGES if p not in installed)
    if missing:
        pytest.skip(f"not installed here, cannot compute their dependencies: {missing}")
    closure, todo = set(), list(RUNTIME_PACKAGES)
    while todo:
        pkg = todo.pop()
        if pkg in closure:
            continue
        closure.add(pkg)
        for group in installed[pkg].split(","):
            for alt in group.split("|"):
                name = alt.strip().split(" ")[0].split(":")[0]
                if name in installed and name not in closure:
                    todo.append(name)
    libs = set()
    for binary in (TOOLGATED, TOOLGATE_CLI):
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        assert "not found" not in out, out
        if re.search(r"lib(asan|tsan|ubsan)\.so", out):
            pytest.skip("a sanitizer build: its runtime is not part of the image")
        libs |= {m.group(1) for m in re.finditer(r"=>\s+(\S+)\s+\(", out)}
    owners = _owners(sorted(libs))
    unowned = sorted(libs - set(owners))
    assert not unowned, f"libraries from no Debian package: {unowned}"
    needed = set(owners.values())
    # libc6 and libgcc-s1 are in every Debian image; the rest must come with the packages.
    assert needed - closure <= {"libc6", "libgcc-s1"}, sorted(needed - closure)
    assert "libjemalloc2" in needed and "libgrpc++1.51" in needed


# --- Kubernetes ------------------------------------------------------------------------------

def k8s_documents():
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def sidecar_pod():
    docs = k8s_documents()
    pod = [d for d in docs if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    sidecar = [c for c in containers if c["name"] == "toolgate"][0]
    agent = [c for c in pod["containers"] if c["name"] != "toolgate"][0]
    return docs, pod, sidecar, agent


def port_number(container, port):
    if isinstance(port, int):
        return port
    return [p["containerPort"] for p in container["ports"] if p["name"] == port][0]


def test_k8s_documents():
    docs = k8s_documents()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Secret"]
    for d in docs:
        assert d["apiVersion"] == ("apps/v1" if d["kind"] == "Deployment" else "v1")
    cm = [d for d in docs if d["kind"] == "ConfigMap"][0]
    assert {"toolgate.yaml", "policy.yaml"} <= set(cm["data"])
    secret = [d for d in docs if d["kind"] == "Secret"][0]
    assert "api-key" in secret.get("stringData", secret.get("data", {}))


def test_k8s_sidecar_is_native_and_probed():
    _, pod, sidecar, _ = sidecar_pod()
    # Native sidecar: an init container that keeps running.
    assert sidecar in pod.get("initContainers", [])
    assert sidecar["restartPolicy"] == "Always"
    args = sidecar["args"]
    # The kubelet's HTTP probes reach the pod IP, not its loopback.
    http_listen = args[args.index("--http-listen") + 1]
    assert http_listen.startswith("0.0.0.0:")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = sidecar[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert port_number(sidecar, get["port"]) == int(http_listen.rsplit(":", 1)[1]) == 7471
    res = sidecar["resources"]
    assert res["requests"]["memory"] and res["limits"]["memory"]


def test_k8s_security_context():
    _, pod, sidecar, agent = sidecar_pod()
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert psc["fsGroup"] == 10001  # the key file (0440) and the socket's group
    assert pod["automountServiceAccountToken"] is False
    for c in (sidecar, agent):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sidecar["securityContext"]["runAsUser"] == 10001


def test_k8s_volumes_config_and_secret():
    yaml = pytest.importorskip("yaml")
    docs, pod, sidecar, agent = sidecar_pod()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    agent_mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    # The socket directory is one emptyDir shared by both containers; the agent sees no more.
    assert mounts["/run/toolgate"] == agent_mounts["/run/toolgate"]
    assert "emptyDir" in volumes[mounts["/run/toolgate"]]
    assert list(agent_mounts) == ["/run/toolgate"]
    assert "emptyDir" in volumes[mounts["/var/lib/toolgate"]]
    assert "/tmp" in mounts  # SQLite's temporary files under a read-only root

    cm = [d for d in docs if d["kind"] == "ConfigMap"][0]
    cfg = yaml.safe_load(cm["data"]["toolgate.yaml"])
    config_dir = [p for p, n in mounts.items() if "configMap" in volumes[n]][0]
    assert volumes[mounts[config_dir]]["configMap"]["name"] == cm["metadata"]["name"]
    assert sidecar["args"][:2] == ["--config", f"{config_dir}/toolgate.yaml"]
    assert cfg["policy"]["file"] == f"{config_dir}/policy.yaml"
    assert cfg["socket"] == "/run/toolgate/toolgate.sock"
    assert cfg["data_dir"] == "/var/lib/toolgate"

    secret = [d for d in docs if d["kind"] == "Secret"][0]
    secret_dir = [p for p, n in mounts.items() if "secret" in volumes[n]][0]
    sv = volumes[mounts[secret_dir]]["secret"]
    assert sv["secretName"] == secret["metadata"]["name"]
    assert sv["defaultMode"] == 0o440  # not world-readable: the daemon would refuse it
    assert cfg["upstream"]["api_key_file"] == f"{secret_dir}/api-key"

    # The pod outlives SIGTERM long enough for the daemon's drain.
    shutdown = int(str(cfg.get("shutdown_timeout", "10s")).rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > shutdown


def test_k8s_config_and_policy_are_accepted_by_the_binaries(tmp_path):
    """The ConfigMap's toolgate.yaml passes the daemon's validation (--print-config, with the
    sidecar's args) and its policy compiles (toolgate policy lint)."""
    need_binaries()
    yaml = pytest.importorskip("yaml")
    docs, _, sidecar, _ = sidecar_pod()
    cm = [d for d in docs if d["kind"] == "ConfigMap"][0]["data"]
    cfg = yaml.safe_load(cm["toolgate.yaml"])
    (tmp_path / "policy.yaml").write_text(cm["policy.yaml"])
    key = tmp_path / "api-key"
    key.write_text("al_test_key\n")
    key.chmod(0o440)
    text = (cm["toolgate.yaml"].replace(cfg["policy"]["file"], str(tmp_path / "policy.yaml"))
            .replace(cfg["upstream"]["api_key_file"], str(key)))
    (tmp_path / "toolgate.yaml").write_text(text)
    args = [str(tmp_path / "toolgate.yaml") if a.endswith("/toolgate.yaml") else a
            for a in sidecar["args"]]
    r = subprocess.run([str(TOOLGATED), *args, "--print-config"], env=clean_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert 'http_listen: "0.0.0.0:7471"' in r.stdout
    assert "upstream api key: set" in r.stdout
    r = subprocess.run([str(TOOLGATE_CLI), "policy", "lint", str(tmp_path / "policy.yaml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_config_is_accepted():
    need_binaries()
    r = subprocess.run([str(TOOLGATED), "--config", str(EXAMPLE_CONFIG), "--print-config"],
                       env=clean_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_example_config_names_every_option_and_uncommented_it_is_valid(tmp_path):
    """/etc/toolgate/toolgate.yaml documents every option `toolgated --help` lists."""
    need_binaries()
    r = subprocess.run([str(TOOLGATED), "--help"], env=clean_env(), capture_output=True,
                       text=True, timeout=30)
    keys = re.findall(r"^  ([a-z_]+(?:\.[a-z_]+)?) = ", r.stdout + r.stderr, re.M)
    assert len(keys) > 40, "the key list of --help changed shape"
    text = EXAMPLE_CONFIG.read_text()
    section = ""
    documented = set()
    for line in text.splitlines():
        m = re.match(r"^#( *)([a-z_]+):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        if indent <= 1:
            section = key
            documented.add(key)
        elif indent == 3:
            documented.add(f"{section}.{key}")
    missing = [k for k in keys if k not in documented]
    assert not missing, f"deploy/toolgate.yaml lacks {missing}"
    # Uncommented (secrets and files aside), the whole example is a valid configuration.
    body = "\n".join(l[2:] if l.startswith("# ") or l == "#" else l
                     for l in text.splitlines() if not l.startswith("# toolgate")
                     and "Reference" not in l and "Environment" not in l and "Secrets" not in l)
    skip = ("admin_key_file", "hmac_key_file", "api_key_file", "ca_file", "secret_file",
            "inbound_secret_file", "file:", "socket:", "data_dir", "url:", "endpoints",
            "- url", "events: [", "insecure_skip_verify", "hash:")
    body = "\n".join(l for l in body.splitlines() if not any(s in l for s in skip))
    cfg = tmp_path / "full.yaml"
    cfg.write_text(body + "\n")
    r = subprocess.run([str(TOOLGATED), "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
                        "--print-config"], env=clean_env(), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr + "\n" + body
