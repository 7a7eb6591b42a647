"""A small Python client for safebet's gRPC API, used by the notebooks.

The protobuf and gRPC stubs are generated from ../proto with grpcio-tools on first import (into
notebooks/_generated, which is not committed), so the client always matches the server's .proto files.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTO = ROOT / "proto"
GENERATED = HERE / "_generated"


def generate_stubs(force: bool = False) -> None:
    """Generates Python modules for every .proto file under proto/ (skipped when up to date)."""
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(PROTO.rglob("*.proto"))
    newest = max(p.stat().st_mtime for p in protos)
    stamp = GENERATED / ".stamp"
    if not force and stamp.exists() and stamp.stat().st_mtime >= newest:
        return
    shutil.rmtree(GENERATED, ignore_errors=True)
    GENERATED.mkdir(parents=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={GENERATED}",
        f"--grpc_python_out={GENERATED}",
        *[str(p.relative_to(PROTO)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed on " + ", ".join(map(str, protos)))
    stamp.touch()


generate_stubs()
sys.path.insert(0, str(GENERATED))

import grpc  # noqa: E402
from safebet.v1 import admin_pb2, admin_pb2_grpc, decision_pb2, decision_pb2_grpc, experiment_pb2  # noqa: E402

__all__ = ["admin_pb2", "decision_pb2", "experiment_pb2", "binary", "Client", "Server"]


def binary() -> Path:
    """The safebet binary: $SAFEBET_BIN, or release/safebet in $CARGO_TARGET_DIR (default target/), built
    with cargo if it is missing."""
    if "SAFEBET_BIN" in os.environ:
        return Path(os.environ["SAFEBET_BIN"])
    path = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "safebet"
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "safebet"], cwd=ROOT, check=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _BearerKey(grpc.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call (servers started with --keys require it)."""

    def __init__(self, key: str):
        self.key = key

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self.key}")]
        return continuation(_Details(details, metadata), request)


class _Details(grpc.ClientCallDetails):
    """The call's details with extra metadata (grpc's own details object is read-only)."""

    def __init__(self, base, metadata):
        self.method, self.timeout, self.metadata = base.method, base.timeout, metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class Client:
    """Stubs for the decision and admin services on one channel. `api_key` (default: $SAFEBET_API_KEY) is
    sent with every call when given."""

    def __init__(self, address: str, api_key: str | None = None):
        self.channel = grpc.insecure_channel(address)
        key = api_key or os.environ.get("SAFEBET_API_KEY")
        channel = grpc.intercept_channel(self.channel, _BearerKey(key)) if key else self.channel
        self.decisions = decision_pb2_grpc.DecisionServiceStub(channel)
        self.admin = admin_pb2_grpc.ExperimentAdminStub(channel)

    def close(self) -> None:
        self.channel.close()


class Server:
    """Runs `safebet serve` on a free loopback port with its own data directory, for as long as the
    `with` block lasts; stops it with SIGTERM (a graceful shutdown that flushes state)."""

    def __init__(self, data_dir: str | None = None, extra_args: list[str] | None = None):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="safebet-")
        self.data_dir = data_dir or self._tmp.name
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.process = subprocess.Popen(
            [str(binary()), "serve", "--listen", self.address, "--data-dir", self.data_dir, *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        atexit.register(self.__exit__, None, None, None)  # never leave a server behind a dead kernel
        channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            self.__exit__(None, None, None)
            raise RuntimeError("safebet serve did not start within 30 s")
        finally:
            channel.close()
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._tmp:
            self._tmp.cleanup()
