"""Fixtures for the ROS side: the node as a separate process, and a ROS context to talk to it.

DDS discovery is scoped to this test session: a ROS_DOMAIN_ID derived from the pid and
localhost-only discovery, set here at import, before anything calls ``rclpy.init``, so
this process and every node it starts agree on it and concurrent sessions do not meet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
# Humble reads only ROS_LOCALHOST_ONLY; Jazzy and later read the discovery range.
os.environ["ROS_LOCALHOST_ONLY"] = "1"


@dataclass
class NodeProcess:
    """A node started with ``python -m``; its stdout and stderr go to one log file."""

    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node still running after {timeout} s; its log:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT is what Ctrl-C and ros2 launch send: the node should shut down cleanly.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def node_environment() -> dict[str, str]:
    """This process's environment: the ROS wheels' LD_LIBRARY_PATH and bootstrap marker
    travel together (or not at all), plus the session's domain and the repo on the path."""
    env = dict(os.environ)
    path = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    return env


@pytest.fixture(scope="module")
def start_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NodeProcess]]:
    """``start_node(ros_args=(), **params)`` runs the node; each is stopped after the module."""
    started: list[NodeProcess] = []
    logs = tmp_path_factory.mktemp("node_logs")

    def start(
        ros_args: Sequence[str] = (),
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        **params: object,
    ) -> NodeProcess:
        """``args`` go before ``--ros-args`` (``--lifecycle``); ``env`` adds variables."""
        args = [sys.executable, "-m", "latent_memory_ros.node", *args, "--ros-args", *ros_args]
        for name, value in params.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            args += ["-p", f"{name}:={text}"]
        log_path = logs / f"node_{len(started)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args,
                cwd=REPO,
                env=node_environment() | (env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        started.append(NodeProcess(process, log_path))
        return started[-1]

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shipped model; LATENT_MEMORY_TEST_MODEL points the tests at another export."""
    path = Path(os.environ.get("LATENT_MEMORY_TEST_MODEL", REPO / "models" / "default"))
    if not (path / "model.json").is_file():
        pytest.skip(f"no exported model at {path} (models/default is shipped by the exporter)")
    return path


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    spin: Callable[[], None],
    what: str,
    node: NodeProcess | None = None,
) -> None:
    """Spin until ``condition()``; fail naming ``what`` (with the node's log) on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if node is not None and node.process.poll() is not None:
            pytest.fail(
                f"node exited with {node.process.returncode} while waiting for {what}; "
                f"its log:\n{node.log()}"
            )
        if time.monotonic() > deadline:
            log = f"; node log:\n{node.log()}" if node is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{log}")
        spin()
