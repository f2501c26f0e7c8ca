"""The package's wiring agrees with itself: launch file, setup.py, package.xml, config, node.

``ros2 launch`` and ``colcon build`` are not available everywhere the tests run, so most
checks read the files; the launch description itself is loaded where ``launch`` imports.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import runpy
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import setuptools
import yaml

import latent_memory_ros
from latent_memory_ros.node import NODE_NAME, PARAMETERS

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "latent_memory.launch.py"
PACKAGE = "latent_memory_ros"
SHARE = f"share/{PACKAGE}"
LAUNCH_ARGUMENTS = {"model_dir", "image_topic", "odom_topic", "params_file", "use_sim_time", "rviz"}


@pytest.fixture
def setup_kwargs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What setup.py hands to setuptools, run from the repo root as colcon does."""
    captured: dict[str, Any] = {}
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    runpy.run_path(str(REPO / "setup.py"))
    return captured


@pytest.fixture(scope="module")
def launch_source() -> tuple[dict[str, Any], list[ast.Call]]:
    """The launch file's module-level constants and every call in it."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    constants = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                try:
                    constants[target.id] = ast.literal_eval(statement.value)
                except ValueError:
                    pass
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return constants, calls


def call_name(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


def keyword_value(call: ast.Call, name: str, constants: dict[str, Any]) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name:
            if isinstance(keyword.value, ast.Name):
                return constants[keyword.value.id]
            return ast.literal_eval(keyword.value)
    return None


def installed(setup_kwargs: dict[str, Any], target: str) -> list[str]:
    return [src for dst, sources in setup_kwargs["data_files"] if dst == target for src in sources]


def config_parameters() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "config" / "latent_memory.yaml").read_text())
    assert list(document) == ["/**"], "parameters go under /** so renamed nodes get them too"
    return document["/**"]["ros__parameters"]


def test_launch_file_starts_the_installed_node_with_the_installed_config(
    launch_source: tuple[dict[str, Any], list[ast.Call]], setup_kwargs: dict[str, Any]
) -> None:
    constants, calls = launch_source
    nodes = [
        c
        for c in calls
        if call_name(c) == "Node" and keyword_value(c, "package", constants) == PACKAGE
    ]
    assert len(nodes) == 1
    node = nodes[0]
    assert setup_kwargs["name"] == PACKAGE
    scripts = dict(
        s.replace(" ", "").split("=") for s in setup_kwargs["entry_points"]["console_scripts"]
    )
    assert scripts[keyword_value(node, "executable", constants)] == "latent_memory_ros.node:main"
    assert keyword_value(node, "name", constants) == NODE_NAME

    params_file = "/".join(constants["PARAMS_FILE"])
    rviz_config = "/".join(constants["RVIZ_CONFIG"])
    for relative in (params_file, rviz_config):
        assert (REPO / relative).is_file()
        assert relative in installed(setup_kwargs, f"{SHARE}/config")
    assert set(constants["OPTIONAL_OVERRIDES"]) <= set(config_parameters())


def test_launch_arguments_are_declared_with_descriptions(
    launch_source: tuple[dict[str, Any], list[ast.Call]],
) -> None:
    constants, calls = launch_source
    declared = {
        ast.literal_eval(c.args[0]): c for c in calls if call_name(c) == "DeclareLaunchArgument"
    }
    assert set(declared) == LAUNCH_ARGUMENTS
    for name, call in declared.items():
        assert keyword_value(call, "description", constants), f"{name} has no description"
    for name in ("use_sim_time", "rviz"):
        assert keyword_value(declared[name], "choices", constants) == ["true", "false"]
    # launch is imported lazily, so the file loads (and can be checked) without ROS.
    tree = ast.parse(LAUNCH_FILE.read_text())
    top_level_imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    assert all(
        not (getattr(s, "module", None) or "").startswith("launch") for s in top_level_imports
    )


def test_launch_description_loads_where_launch_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("launch", reason="launch is not installed (no ROS installation)")
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no ROS installation)")
    from launch.actions import OpaqueFunction

    from launch import LaunchContext

    spec = importlib.util.spec_from_file_location("latent_memory_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert set(arguments) == LAUNCH_ARGUMENTS
    assert list(arguments["rviz"].choices) == ["true", "false"]

    context = LaunchContext()
    context.launch_configurations.update(
        model_dir="",
        image_topic="/camera/color/image_raw",
        odom_topic="",
        rviz="false",
        use_sim_time="true",
        params_file=str(REPO / "config" / "latent_memory.yaml"),
    )
    opaque = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    nodes = [action for e in opaque for action in e.execute(context) or []]
    assert [(n.node_package, n.node_executable) for n in nodes] == [(PACKAGE, "latent_memory_node")]


def test_every_node_parameter_is_in_the_config_with_its_default() -> None:
    config = config_parameters()
    assert set(config) == {p.name for p in PARAMETERS}
    for parameter in PARAMETERS:
        value = config[parameter.name]
        # The rcl YAML parser types a parameter by its literal: 5 is not a double.
        assert type(value) is type(parameter.default), parameter.name
        if isinstance(value, list):
            assert [type(v) for v in value] == [type(v) for v in parameter.default]
        assert value == parameter.default, parameter.name
        assert parameter.description.strip(), f"{parameter.name} has no description"


def test_package_xml_is_format_3_with_the_runtime_dependencies(
    setup_kwargs: dict[str, Any],
) -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package"
    assert root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("version") == setup_kwargs["version"] == latent_memory_ros.__version__
    assert root.findtext("license") == setup_kwargs["license"] == "Apache-2.0"
    assert root.find("maintainer").get("email")
    assert root.findtext("export/build_type") == "ament_python"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert {
        "rclpy",
        "sensor_msgs",
        "geometry_msgs",
        "nav_msgs",
        "std_srvs",
        "diagnostic_msgs",
        "visualization_msgs",
        "cv_bridge",
        "tf2_ros",
        "launch_ros",
        "python3-numpy",
        "python3-opencv",
    } <= exec_depends
    test_depends = {e.text for e in root.findall("test_depend")}
    assert {"ament_copyright", "ament_flake8", "ament_pep257", "python3-pytest"} <= test_depends


def test_setup_installs_the_ros_package_only(setup_kwargs: dict[str, Any]) -> None:
    assert setup_kwargs["packages"] == [PACKAGE]
    assert installed(setup_kwargs, "share/ament_index/resource_index/packages") == [
        f"resource/{PACKAGE}"
    ]
    assert (REPO / "resource" / PACKAGE).is_file()
    assert installed(setup_kwargs, SHARE) == ["package.xml"]
    assert "launch/latent_memory.launch.py" in installed(setup_kwargs, f"{SHARE}/launch")
    model_files = (
        sorted(
            str(p.relative_to(REPO)) for p in (REPO / "models" / "default").glob("*") if p.is_file()
        )
        if (REPO / "models" / "default").is_dir()
        else []
    )
    assert installed(setup_kwargs, f"{SHARE}/models/default") == model_files
    for _, sources in setup_kwargs["data_files"]:
        assert sources and all(os.path.isfile(REPO / s) for s in sources)
    setup_cfg = (REPO / "setup.cfg").read_text()
    # ros2 run looks for executables in lib/<package>, not bin.
    assert f"script_dir=$base/lib/{PACKAGE}" in setup_cfg
    assert f"install_scripts=$base/lib/{PACKAGE}" in setup_cfg


def test_console_scripts_point_at_main_functions(setup_kwargs: dict[str, Any]) -> None:
    for script in setup_kwargs["entry_points"]["console_scripts"]:
        name, target = (part.strip() for part in script.split("="))
        module, function = target.split(":")
        source = REPO / Path(*module.split(".")).with_suffix(".py")
        assert source.is_file(), f"console script {name}: {source} does not exist"
        functions = {
            n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)
        }
        assert function in functions, f"console script {name}: {target} is not defined"


def test_rviz_config_shows_the_node_outputs_in_the_output_frame() -> None:
    config = yaml.safe_load((REPO / "config" / "latent_memory.rviz").read_text())
    manager = config["Visualization Manager"]
    output_frame = next(p.default for p in PARAMETERS if p.name == "output_frame")
    assert manager["Global Options"]["Fixed Frame"] == output_frame
    displays = {d["Class"]: d for d in manager["Displays"]}
    topics = {cls: d["Topic"]["Value"] for cls, d in displays.items() if "Topic" in d}
    assert topics == {
        "rviz_default_plugins/Path": f"/{NODE_NAME}/path",
        "rviz_default_plugins/Odometry": f"/{NODE_NAME}/odometry",
        "rviz_default_plugins/Pose": f"/{NODE_NAME}/pose",
    }
    assert displays["rviz_default_plugins/Odometry"]["Covariance"]["Value"] is True
