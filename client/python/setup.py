"""Build script of the toolgate Python client (import name ``toolgate``).

The gRPC stubs are not checked in: the ``build_py`` step generates them from the public API,
``proto/toolgate/v1/*.proto``, into the build's ``toolgate/v1/`` package, with
``grpc_tools.protoc`` (Debian: python3-grpc-tools), or ``protoc`` plus ``grpc_python_plugin``
(Debian: protobuf-compiler, protobuf-compiler-grpc) when grpc_tools is not installed.

There is deliberately no pyproject.toml: with one, pip builds in an isolated environment and
downloads setuptools from PyPI, which fails offline. With only setup.py, pip uses the
setuptools already installed (Debian's python3-setuptools), so ``pip install client/python``
works on a machine without network access.

The .proto files are looked up in ``$TOOLGATE_PROTO_DIR``, then ``./proto`` (a copy beside
this file), then ``../../proto`` (the repository layout).
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _proto_root() -> Path:
    candidates = []
    if os.environ.get("TOOLGATE_PROTO_DIR"):
        candidates.append(Path(os.environ["TOOLGATE_PROTO_DIR"]))
    candidates += [HERE / "proto", HERE.parent.parent / "proto"]
    for c in candidates:
        if (c / "toolgate" / "v1" / "events.proto").is_file():
            return c.resolve()
    raise SystemExit("toolgate: cannot find toolgate/v1/*.proto; looked in "
                     + ", ".join(str(c) for c in candidates)
                     + " (set TOOLGATE_PROTO_DIR to the directory holding toolgate/v1/)")


def _protoc_command(root: Path, out: Path) -> list:
    """The code generator: grpc_tools.protoc, else protoc with grpc_python_plugin."""
    if importlib.util.find_spec("grpc_tools") is not None:
        return [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}",
                f"--python_out={out}", f"--grpc_python_out={out}"]
    protoc, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
    if protoc and plugin:
        return [protoc, f"-I{root}", f"--python_out={out}", f"--grpc_out={out}",
                f"--plugin=protoc-gen-grpc={plugin}"]
    raise SystemExit("toolgate: generating the gRPC stubs needs grpc_tools (apt install "
                     "python3-grpc-tools) or protoc and grpc_python_plugin (apt install "
                     "protobuf-compiler protobuf-compiler-grpc)")


def generate_stubs(out: Path) -> None:
    """Writes toolgate/v1/*_pb2.py and *_pb2_grpc.py under `out`."""
    root = _proto_root()
    protos = sorted(str(p) for p in (root / "toolgate" / "v1").glob("*.proto"))
    v1 = out / "toolgate" / "v1"
    shutil.rmtree(v1, ignore_errors=True)  # no stale stub of a removed .proto survives
    v1.mkdir(parents=True)
    cmd = _protoc_command(root, out) + protos
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"toolgate: {' '.join(cmd)} failed:\n{result.stderr}")
    (v1 / "__init__.py").write_text(
        '"""Generated gRPC stubs of the toolgate.v1 API (proto/toolgate/v1/*.proto)."""\n')


class BuildPyWithStubs(build_py):
    """build_py that also generates the gRPC stubs into the build directory."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            generate_stubs(Path(self.build_lib))


setup(
    name="toolgate-client",
    version="0.1.0",
    description="Python client of toolgate: audit and gate an AI agent's tool calls",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=["toolgate"],
    package_data={"toolgate": ["py.typed"]},
    # Debian's python3-grpcio and python3-protobuf satisfy these (they ship egg-info).
    install_requires=["grpcio>=1.30", "protobuf>=3.12"],
    cmdclass={"build_py": BuildPyWithStubs},
    # Where the build happens: ./build unless TOOLGATE_BUILD_BASE says (the tests use a
    # temporary directory, so that concurrent installs do not share one build tree).
    options={"build": {"build_base": os.environ.get("TOOLGATE_BUILD_BASE", "build")},
             "egg_info": {"egg_base": os.environ.get("TOOLGATE_BUILD_BASE", ".")}},
    zip_safe=False,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Typing :: Typed",
    ],
)
