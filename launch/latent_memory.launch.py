"""Launch latent_memory_node (or its lifecycle variant) with the shipped parameters, and RViz.

    ros2 launch latent_memory_ros latent_memory.launch.py \\
        image_topic:=/camera/color/image_raw odom_topic:=/odom publish_tf:=false rviz:=true
    ros2 launch latent_memory_ros latent_memory.launch.py --show-args

Every node parameter is an argument: names, descriptions and choices come from
``latent_memory_ros.node.PARAMETERS``, the single source of truth. Their defaults are empty,
meaning "keep params_file's value", so only the arguments given override params_file and a
custom params_file is not silently overwritten by this file (a string parameter therefore
cannot be set to empty here: use a params_file for that). Values are typed like the
parameter: publish_tf:=false, path_max_length:=500, lost_sigma_m:=0.1,
providers:=[CPUExecutionProvider], base_to_camera:=[0.1,0,0.5,-0.5,0.5,-0.5,0.5].

The started processes get the shipped Fast DDS profile (config/fastdds.xml: shared-memory
segments large enough for camera images) unless the environment names one; the camera
driver needs it too (README, "Large images").

lifecycle:=true starts latent_memory_lifecycle_node instead, a managed node that starts
unconfigured: a lifecycle manager (e.g. nav2_lifecycle_manager) or

    ros2 lifecycle set /latent_memory_lifecycle_node configure
    ros2 lifecycle set /latent_memory_lifecycle_node activate

brings it up.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

PACKAGE = "latent_memory_ros"
EXECUTABLE = "latent_memory_node"
NODE_NAME = "latent_memory_node"
LIFECYCLE_EXECUTABLE = "latent_memory_lifecycle_node"
LIFECYCLE_NODE_NAME = "latent_memory_lifecycle_node"
PARAMS_FILE = ("config", "latent_memory.yaml")
RVIZ_CONFIG = ("config", "latent_memory.rviz")
FASTDDS_PROFILE = ("config", "fastdds.xml")
FASTDDS_PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
BOOLEAN = ["true", "false"]
KEEP = ""  # a parameter argument left empty keeps params_file's value
# Arguments of this file rather than of the node.
LAUNCH_ARGUMENTS = (
    "params_file",
    "use_sim_time",
    "lifecycle",
    "namespace",
    "rviz",
    "fastdds_profile",
)


def node_parameters() -> tuple[Any, ...]:
    """The node's ParameterSpecs. Imported on use: only a ROS installation (where the
    package is installed) has what latent_memory_ros.node imports."""
    from latent_memory_ros.parameters import PARAMETERS

    return PARAMETERS


def shown(value: Any) -> str:
    """``value`` as it is written on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value) if value != "" else "empty"


def argument_choices(spec: Any) -> list[str] | None:
    """The valid values of the argument for the parameter ``spec``. They include KEEP:
    launch refuses a default that is not one of the choices."""
    if isinstance(spec.default, bool):
        return [KEEP, *BOOLEAN]
    if spec.choices:
        return [KEEP, *spec.choices]
    return None


def argument_description(spec: Any) -> str:
    return f"{spec.description} Empty: params_file's value (node default: {shown(spec.default)})."


def parameter_value(spec: Any, text: str) -> Any:
    """The non-empty argument ``text`` as a value of the parameter ``spec``'s type; a
    ValueError names the argument when it is not one."""
    import yaml

    default = spec.default
    try:
        if isinstance(default, bool):
            if text not in BOOLEAN:
                raise ValueError(text)
            return text == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list):
            # [a, b] (YAML) or a,b
            items = yaml.safe_load(text) if text.lstrip().startswith("[") else text.split(",")
            if not isinstance(items, list):
                raise ValueError(text)
            if default and isinstance(default[0], float):
                if any(isinstance(item, bool) for item in items):
                    raise ValueError(text)
                return [float(item) for item in items]
            if any(isinstance(item, (list, dict)) or item is None for item in items):
                raise ValueError(text)
            return [str(item).strip() for item in items]
        return text
    except (ValueError, TypeError, yaml.YAMLError) as err:
        raise ValueError(
            f"launch argument {spec.name}:={text!r} is not a {type(default).__name__} "
            f"parameter value like {shown(default)}"
        ) from err


def rviz_config(shipped: str, node: str, fixed_frame: str | None) -> str:
    """The RViz config for the node ``node`` (fully qualified name): the shipped one shows
    /latent_memory_node's topics in the default odom frame; another name, namespace or
    odom_frame gets a copy in a temporary file."""
    import yaml

    default_node = "/" + NODE_NAME
    if node == default_node and not fixed_frame:
        return shipped
    with open(shipped) as stream:
        config = yaml.safe_load(stream)
    manager = config["Visualization Manager"]
    for display in manager["Displays"]:
        topic = display.get("Topic", {})
        if str(topic.get("Value", "")).startswith(default_node + "/"):
            topic["Value"] = node + topic["Value"][len(default_node) :]
    if fixed_frame:
        manager["Global Options"]["Fixed Frame"] = fixed_frame
    handle, path = tempfile.mkstemp(prefix="latent_memory_", suffix=".rviz")
    with os.fdopen(handle, "w") as stream:
        yaml.safe_dump(config, stream, sort_keys=False)
    return path


def fastdds_environment(argument: str, shipped: str, environ: dict[str, str]) -> dict[str, str]:
    """The Fast DDS profile variable for the started processes: the ``fastdds_profile``
    argument's file, ``none`` for none, or (empty) the shipped profile unless the
    environment already names one (a profile of the user's own wins)."""
    if argument == "none" or (
        not argument and any(environ.get(v) for v in FASTDDS_PROFILE_VARIABLES)
    ):
        return {}
    return {"FASTDDS_DEFAULT_PROFILES_FILE": argument or shipped}


def _launch_nodes(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue
    from launch_ros.substitutions import FindPackageShare

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    use_sim_time = value("use_sim_time") == "true"
    lifecycle = value("lifecycle") == "true"
    namespace = value("namespace").strip("/")
    overrides: dict[str, Any] = {"use_sim_time": use_sim_time}
    for spec in node_parameters():
        text = value(spec.name)
        if text != KEEP:
            typed = parameter_value(spec, text)
            # launch_ros reads plain strings as YAML ("1.0" would become a double).
            overrides[spec.name] = (
                ParameterValue(typed, value_type=str) if isinstance(typed, str) else typed
            )
    name = LIFECYCLE_NODE_NAME if lifecycle else NODE_NAME
    share = FindPackageShare(PACKAGE).perform(context)
    environment = fastdds_environment(
        value("fastdds_profile"), os.path.join(share, *FASTDDS_PROFILE), dict(os.environ)
    )
    nodes = [
        Node(
            package=PACKAGE,
            executable=LIFECYCLE_EXECUTABLE if lifecycle else EXECUTABLE,
            name=name,
            namespace=namespace or None,
            output="screen",
            emulate_tty=True,
            parameters=[value("params_file"), overrides],
            additional_env=environment,
        )
    ]
    if value("rviz") == "true":
        config = rviz_config(
            os.path.join(share, *RVIZ_CONFIG),
            "/" + "/".join(part for part in (namespace, name) if part),
            value("odom_frame") or None,
        )
        nodes.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", config],
                parameters=[{"use_sim_time": use_sim_time}],
                output="screen",
                additional_env=environment,
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

    launch_arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), *PARAMS_FILE]),
            description="YAML with the node parameters; the arguments below override it.",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            choices=BOOLEAN,
            description="Use /clock (true when replaying a bag with --clock).",
        ),
        DeclareLaunchArgument(
            "lifecycle",
            default_value="false",
            choices=BOOLEAN,
            description=f"Start {LIFECYCLE_EXECUTABLE}, a managed node, instead of {EXECUTABLE}. "
            "It starts unconfigured: a lifecycle manager, or `ros2 lifecycle set "
            f"/{LIFECYCLE_NODE_NAME} configure` then `activate`, brings it up.",
        ),
        DeclareLaunchArgument(
            "namespace",
            default_value="",
            description="Namespace of the node (empty: none).",
        ),
        DeclareLaunchArgument(
            "rviz",
            default_value="false",
            choices=BOOLEAN,
            description="Also start RViz2 with the shipped config (path, odometry with "
            "covariance, tracking state, query poses, TF).",
        ),
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value="",
            description="Fast DDS XML profile for the started processes "
            "(FASTDDS_DEFAULT_PROFILES_FILE). Empty: the shipped config/fastdds.xml (32 MB "
            "shared-memory segments, so 640x480 and larger images are not fragmented over "
            "UDP), unless the environment already sets a profile; none: no profile. The "
            "camera driver's process needs it too: the publisher's segment is the one used.",
        ),
    ]
    parameter_arguments = [
        DeclareLaunchArgument(
            spec.name,
            default_value=KEEP,
            description=argument_description(spec),
            choices=argument_choices(spec),
        )
        for spec in node_parameters()
    ]
    return LaunchDescription(
        [*launch_arguments, *parameter_arguments, OpaqueFunction(function=_launch_nodes)]
    )
