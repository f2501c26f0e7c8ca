"""Fixtures for the ROS side: the node as a separate process, and a ROS context to talk to it.

DDS discovery is scoped to this test session: a ROS_DOMAIN_ID derived from the pid and
localhost-only discovery, set here at import, before anything calls ``rclpy.init``, so
this process and every node it starts agree on it and concurrent sessions do not meet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from helpers import REPO, NodeProcess, node_environment

os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
# Humble reads only ROS_LOCALHOST_ONLY; Jazzy and later read the discovery range.
os.environ["ROS_LOCALHOST_ONLY"] = "1"


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
