"""Launch latent_memory_node with the shipped parameters, and RViz on request.

    ros2 launch latent_memory_ros latent_memory.launch.py \\
        image_topic:=/camera/color/image_raw odom_topic:=/odom rviz:=true

model_dir, image_topic and odom_topic override params_file only when given, so a
custom params_file is not silently overwritten by this file's defaults.
"""

from __future__ import annotations

import os

PACKAGE = "latent_memory_ros"
EXECUTABLE = "latent_memory_node"
NODE_NAME = "latent_memory_node"
PARAMS_FILE = ("config", "latent_memory.yaml")
RVIZ_CONFIG = ("config", "latent_memory.rviz")
OPTIONAL_OVERRIDES = ("model_dir", "image_topic", "odom_topic")


def _launch_nodes(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.substitutions import FindPackageShare

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    use_sim_time = value("use_sim_time") == "true"
    overrides = {"use_sim_time": use_sim_time}
    overrides.update({name: value(name) for name in OPTIONAL_OVERRIDES if value(name)})
    nodes = [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            output="screen",
            emulate_tty=True,
            parameters=[value("params_file"), overrides],
        )
    ]
    if value("rviz") == "true":
        share = FindPackageShare(PACKAGE).perform(context)
        nodes.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", os.path.join(share, *RVIZ_CONFIG)],
                parameters=[{"use_sim_time": use_sim_time}],
                output="screen",
            )
        )
    return nodes


def generate_launch_description():
    # launch and launch_ros exist only in a ROS installation; importing them here keeps
    # this file importable (and checkable) without one.
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    from launch import LaunchDescription

    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "model_dir",
                default_value="",
                description="Exported model directory; empty keeps params_file (default: the "
                "installed models/default).",
            ),
            DeclareLaunchArgument(
                "image_topic",
                default_value="",
                description="sensor_msgs/Image topic; empty keeps params_file (/camera/image_raw).",
            ),
            DeclareLaunchArgument(
                "odom_topic",
                default_value="",
                description="nav_msgs/Odometry topic; empty keeps params_file (/odom).",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), *PARAMS_FILE]),
                description="YAML with the node parameters.",
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                choices=["true", "false"],
                description="Use /clock (true when replaying a bag with --clock).",
            ),
            DeclareLaunchArgument(
                "rviz",
                default_value="false",
                choices=["true", "false"],
                description="Also start RViz2 with the shipped config.",
            ),
            OpaqueFunction(function=_launch_nodes),
        ]
    )
