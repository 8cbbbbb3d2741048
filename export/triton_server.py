"""A real ``tritonserver`` process serving a model repository: the 2.51 binary that the
``nvidia-pytriton`` wheel bundles (python backend only, so it serves the ``python`` form of
:mod:`.triton_repo`), started directly with the python-backend stub for this interpreter.

:func:`triton_server` is what the tests use (loopback, free ports, stopped on exit). From a shell,
``python -m rsd_deploy.export.triton_server REPO`` serves a repository until Ctrl-C. On a Triton
container, run ``tritonserver --model-repository DIR`` instead (see the repository's README).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerEndpoints:
    http: str  # host:port, as tritonclient.http.InferenceServerClient takes it
    grpc: str  # host:port, as tritonclient.grpc.InferenceServerClient takes it


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def interpreter_library_dir() -> str | None:
    """The directory of this interpreter's ``libpython``, when it is a shared library.

    The bundled python-backend stub links ``libpython3.X.so.1.0`` by soname and runs this
    interpreter's standard library. If the loader finds another build of that soname first
    (a distribution's 3.11.2 beside a pyenv 3.11.7, say), C modules and the stdlib disagree:
    multiprocessing dies with ``'_thread.RLock' object has no attribute '_recursion_count'``.
    Putting this directory first on ``LD_LIBRARY_PATH`` makes the stub load the matching one.
    """
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return libdir if libdir and soname and (Path(libdir) / soname).exists() else None


def bundled_tritonserver() -> tuple[Path, Path, Path]:
    """(tritonserver binary, python backend folder, folder of its shared libraries) from the
    ``nvidia-pytriton`` wheel."""
    try:
        import pytriton
    except ImportError as error:
        raise RuntimeError(f"serving here needs the tritonserver bundled in nvidia-pytriton (pip install nvidia-pytriton): {error}") from None
    root = Path(pytriton.__file__).parent
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not binary.is_file() or not (dist / "backends" / "python").is_dir():
        raise RuntimeError(f"{dist}: no tritonserver binary / python backend in this nvidia-pytriton install")
    return binary, dist / "backends" / "python", libs


def _python_backend_for_this_interpreter(python_backend: Path, target: Path) -> Path:
    """A backend directory whose python backend carries the stub built for this Python version
    (the wheel ships one stub per version beside the backend)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = python_backend.parents[1] / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no python-backend stub for Python {version} ({stub})")
    backend = target / "backends" / "python"
    backend.mkdir(parents=True)
    for item in python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, backend / item.name)
    shutil.copy2(stub, backend / stub.name)
    return target / "backends"


def _server_ready(http: str) -> bool:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http, connection_timeout=5, network_timeout=5)
    try:
        return client.is_server_ready()
    except Exception:  # not listening yet
        return False
    finally:
        client.close()


@contextlib.contextmanager
def triton_server(
    repository: str | Path,
    host: str = "127.0.0.1",
    http_port: int | None = None,
    grpc_port: int | None = None,
    startup_timeout_s: float = 180,
    exit_timeout_s: int = 5,
    log_verbose: int = 0,
) -> Iterator[ServerEndpoints]:
    """Serve ``repository`` with the ``tritonserver`` bundled in ``nvidia-pytriton``.

    Yields once the server reports ready (every model loaded); raises ``RuntimeError`` with the
    server's log if it exits or is not ready in time. The server is stopped (SIGINT, then
    SIGKILL after ``exit_timeout_s`` more seconds) when the block exits.
    """
    repository = Path(repository).resolve()
    if not any(repository.glob("*/config.pbtxt")):
        raise RuntimeError(f"{repository}: not a Triton model repository (no */config.pbtxt)")
    binary, python_backend, libs = bundled_tritonserver()
    http_port, grpc_port = http_port or free_port(host), grpc_port or free_port(host)
    endpoints = ServerEndpoints(f"{host}:{http_port}", f"{host}:{grpc_port}")
    with tempfile.TemporaryDirectory(prefix="rsd-triton-") as work:
        work = Path(work)
        backends = _python_backend_for_this_interpreter(python_backend, work)
        library_path = [p for p in (interpreter_library_dir(), str(libs), os.environ.get("LD_LIBRARY_PATH")) if p]
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(library_path),
            # the stub finds this environment's packages (numpy, onnxruntime, rsd_deploy) through it
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        command = [
            str(binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name=rsd{os.getpid()}x{http_port}_",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=16777216",
            f"--http-address={host}", f"--http-port={http_port}",
            f"--grpc-address={host}", f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            f"--exit-timeout-secs={exit_timeout_s}",
            f"--log-verbose={log_verbose}",
        ]
        log_path = work / "tritonserver.log"
        start = time.perf_counter()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not _server_ready(endpoints.http):
                if process.poll() is not None or time.perf_counter() - start > startup_timeout_s:
                    state = f"exited with code {process.returncode}" if process.returncode is not None else f"not ready after {startup_timeout_s:.0f} s"
                    raise RuntimeError(f"{repository}: tritonserver {state}; its log ends:\n{_tail(log_path)}")
                time.sleep(0.25)
            LOGGER.info("tritonserver ready in %.1f s: http %s, grpc %s", time.perf_counter() - start, endpoints.http, endpoints.grpc)
            yield endpoints
        finally:
            _stop(process, exit_timeout_s)


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _stop(process: subprocess.Popen, exit_timeout_s: int) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=exit_timeout_s + 10)
    except subprocess.TimeoutExpired:
        process.kill()  # only our own server process (its python stubs exit with it)
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    from rsd_deploy.cli.args import OneLineParser, UsageError, run_command

    parser = OneLineParser(prog="python -m rsd_deploy.export.triton_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, help="a model repository written by rsd_deploy.export.triton_repo (python stage models)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port")
    args = parser.parse_args(argv)

    def serve() -> int:
        if not args.repository.is_dir() or not any(args.repository.glob("*/config.pbtxt")):
            raise UsageError(f"{args.repository}: not a Triton model repository (no */config.pbtxt)")
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            with triton_server(args.repository, args.host, args.http_port, args.grpc_port) as endpoints:
                print(f"serving {args.repository}: http {endpoints.http}, grpc {endpoints.grpc} (Ctrl-C stops)", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        except RuntimeError as error:  # the server did not start: its log's end is in the message
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 1

    return run_command(parser.prog, serve)


if __name__ == "__main__":
    sys.exit(main())
