"""What the ROS-free modules pull in: neither rclpy nor torch, so the runtime, the
offline tools and the parameter list work on a machine without ROS or the training
stack (message packages are plain Python and allowed)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

# Everything of latent_memory_ros but the node, the replay and the demo, which talk DDS.
ROS_FREE = (
    "latent_memory_ros.bag",
    "latent_memory_ros.camera_mapping",
    "latent_memory_ros.conversions",
    "latent_memory_ros.cues",
    "latent_memory_ros.datasets",
    "latent_memory_ros.defaults",
    "latent_memory_ros.distortion",
    "latent_memory_ros.evaluation",
    "latent_memory_ros.geometry",
    "latent_memory_ros.health",
    "latent_memory_ros.images",
    "latent_memory_ros.localizer",
    "latent_memory_ros.messages",
    "latent_memory_ros.model_files",
    "latent_memory_ros.model_format",
    "latent_memory_ros.parameters",
    "latent_memory_ros.pipeline",
    "latent_memory_ros.runtime",
    "latent_memory_ros.scheduling",
    "latent_memory_ros.sequence",
    "latent_memory_ros.snapshots",
    "latent_memory_ros.tracks",
    "latent_memory_ros.tum",
)

# Imports each module in turn in a fresh interpreter; prints, per module, the watched
# modules that importing it (and those before it) had loaded.
PROBE = r"""
import importlib, json, sys
modules, watched = json.loads(sys.argv[1])
seen = {}
for name in modules:
    importlib.import_module(name)
    seen[name] = sorted(w for w in watched if w in sys.modules)
print(json.dumps(seen))
"""


def loaded_by(modules: list[str], watched: list[str]) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([modules, watched])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ros_free_modules_import_neither_rclpy_nor_torch() -> None:
    seen = loaded_by(list(ROS_FREE), ["rclpy", "torch"])
    offenders = {name: found for name, found in seen.items() if found}
    # The first module named is the one that imports them.
    assert not offenders, offenders


def test_the_parameter_list_imports_neither_onnxruntime_nor_opencv() -> None:
    seen = loaded_by(["latent_memory_ros.parameters"], ["rclpy", "torch", "onnxruntime", "cv2"])
    assert seen == {"latent_memory_ros.parameters": []}
