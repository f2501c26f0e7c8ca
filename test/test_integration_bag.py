"""The whole loop: a rendered rosbag2 replayed into the node process over DDS.

The node's poses must arrive for every frame with the frame's stamp, and equal what the
ROS-free runtime computes offline from the same bag (the node adds no error of its own);
after ``~/reset`` a second replay must reproduce the first exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped
from helpers import REPO, NodeProcess, wait_for
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_srvs.srv import Trigger

from latent_memory_ros import geometry
from latent_memory_ros.bag import read_run
from latent_memory_ros.conversions import pose_to_array, stamp_to_ns
from latent_memory_ros.replay import BagPlayer
from latent_memory_ros.runtime import StudentRuntime

FRAMES = 60
POSE_TOPIC = "/latent_memory_node/pose"


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generate = pytest.importorskip("latent_memory_training.data.generate")
    writers = pytest.importorskip("latent_memory_training.data.writers")
    seq = generate.render_sequence("test", 0, seed=11, frames=FRAMES, size=(320, 240))
    return writers.write_rosbag2(seq, tmp_path_factory.mktemp("bag") / "test_000", "mcap")


@pytest.fixture(scope="module")
def node(start_node: Callable[..., NodeProcess], model_dir: Path, bag: Path) -> NodeProcess:
    mount = read_run(bag, "/camera/image_raw").base_to_camera
    return start_node(
        ros_args=("--params-file", str(REPO / "config" / "latent_memory.yaml")),
        model_dir=model_dir,
        providers="[CPUExecutionProvider]",
        base_to_camera="[" + ", ".join(repr(float(v)) for v in mount) + "]",
    )


class Client:
    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("test_integration_bag", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.poses: list[PoseStamped] = []
        self.node.create_subscription(PoseStamped, POSE_TOPIC, self.poses.append, 100)
        self.reset = self.node.create_client(Trigger, "/latent_memory_node/reset")

    def spin(self) -> None:
        self.executor.spin_once(timeout_sec=0.05)

    def replay(self, bag: Path, node: NodeProcess) -> list[PoseStamped]:
        self.poses.clear()
        with BagPlayer(self.node, bag, executor=self.executor) as player:
            assert player.wait_for_subscribers(["/camera/image_raw", "/odom"], timeout=30), (
                node.log()
            )
            stats = player.play_lockstep("/camera/image_raw", timeout=10, first_timeout=30)
        wait_for(lambda: len(self.poses) >= FRAMES, 10, self.spin, "the last poses", node)
        assert stats.timed_out == 0, node.log()
        return list(self.poses)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    c = Client()
    yield c
    c.close()


def _offline_poses(model_dir: Path, bag: Path) -> np.ndarray:
    run = read_run(bag, "/camera/image_raw", odom_topic="/odom")
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    odom = run.odom_at(run.image_stamps) if rt.spec.uses_odom else None
    return rt.run(run.images(), odom, run.base_to_camera).poses


def test_bag_replay_gives_every_frame_its_pose_and_reset_repeats_it(
    node: NodeProcess, client: Client, bag: Path, model_dir: Path
) -> None:
    image_stamps = np.round(read_run(bag, "/camera/image_raw").image_stamps * 1e9).astype(np.int64)
    first = client.replay(bag, node)
    assert [stamp_to_ns(m.header.stamp) for m in first] == image_stamps.tolist()
    assert {m.header.frame_id for m in first} == {"odom"}

    # The node publishes the base in the odom frame (the base at the first frame); the
    # runtime gives the camera in the first camera frame.
    mount = read_run(bag, "/camera/image_raw").base_to_camera
    expected = geometry.compose(mount, _offline_poses(model_dir, bag))
    got = geometry.compose(np.array([pose_to_array(m.pose) for m in first]), mount)
    np.testing.assert_allclose(got[:, :3], expected[:, :3], atol=1e-4)
    # Quaternions q and -q are the same rotation.
    dots = np.abs(np.sum(got[:, 3:] * expected[:, 3:], axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-5)
    # The robot moved: the poses are not all the origin.
    assert np.linalg.norm(got[-1, :3]) > 0.05

    assert client.reset.wait_for_service(timeout_sec=10)
    future = client.reset.call_async(Trigger.Request())
    wait_for(future.done, 10, client.spin, "the ~/reset response", node)
    assert future.result().success

    second = client.replay(bag, node)
    again = geometry.compose(np.array([pose_to_array(m.pose) for m in second]), mount)
    np.testing.assert_allclose(again, got, atol=1e-6)
