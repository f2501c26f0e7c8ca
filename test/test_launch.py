"""The package's wiring agrees with itself: launch file, setup.py, package.xml, config, node.

``ros2 launch`` and ``colcon build`` are not available everywhere the tests run, so most
checks read the files, and the launch file is run against a small fake of the ``launch`` /
``launch_ros`` API (:func:`fake_launch`) that records what it declares and starts; the
real launch description is loaded too where ``launch`` imports.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import runpy
import sys
import tempfile
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import setuptools
import yaml
from helpers import REPO

import latent_memory_ros
from latent_memory_ros.node import LIFECYCLE_NODE_NAME, NODE_NAME
from latent_memory_ros.parameters import PARAMETERS

LAUNCH_FILE = REPO / "launch" / "latent_memory.launch.py"
PACKAGE = "latent_memory_ros"
SHARE = f"share/{PACKAGE}"
NODE_SOURCE = REPO / "latent_memory_ros" / "node.py"
SHIPPED_PARAMS = str(REPO / "config" / "latent_memory.yaml")
SHIPPED_RVIZ = str(REPO / "config" / "latent_memory.rviz")
# Arguments of the launch file itself; every node parameter is one too.
LAUNCH_ARGUMENTS = {
    "params_file",
    "use_sim_time",
    "lifecycle",
    "namespace",
    "rviz",
    "fastdds_profile",
}
BOOLEAN = ["true", "false"]
SPECS = {p.name: p for p in PARAMETERS}


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


def load_launch_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("latent_memory_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def console_scripts(setup_kwargs: dict[str, Any]) -> dict[str, str]:
    return dict(
        s.replace(" ", "").split("=") for s in setup_kwargs["entry_points"]["console_scripts"]
    )


# A fake of the part of the launch / launch_ros API the launch file uses. It checks what
# the real one checks where that matters (a default outside the choices, a value outside
# them, an undeclared argument) and records everything else.


class FakeDeclareLaunchArgument:
    def __init__(
        self,
        name: str,
        *,
        default_value: Any = None,
        description: str | None = None,
        choices: list[str] | None = None,
    ) -> None:
        if choices is not None:
            if not choices:
                raise RuntimeError("Provided choices arg is empty.")
            # launch checks a plain default against the choices when the argument is declared
            if isinstance(default_value, str) and default_value not in choices:
                raise RuntimeError(f"default {default_value!r} of {name} is not in {choices}")
        self.name = name
        self.default_value = default_value
        self.description = description
        self.choices = choices


class FakeLaunchDescription:
    def __init__(self, entities: list[Any]) -> None:
        self.entities = list(entities)

    def get_launch_arguments(self) -> list[FakeDeclareLaunchArgument]:
        return [e for e in self.entities if isinstance(e, FakeDeclareLaunchArgument)]


class FakeOpaqueFunction:
    def __init__(self, *, function: Callable[..., Any]) -> None:
        self.function = function

    def execute(self, context: Any) -> Any:
        return self.function(context)


class FakeLaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: Any) -> str:
        return context.launch_configurations[self.name]


class FakePathJoinSubstitution:
    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts


class FakeFindPackageShare:
    def __init__(self, package: str) -> None:
        self.package = package

    def perform(self, context: Any) -> str:
        assert self.package == PACKAGE
        return str(REPO)  # the installed share has the source tree's config/ layout


class FakeNode:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeParameterValue:
    def __init__(self, value: Any, *, value_type: Any = None) -> None:
        self.value = value
        self.value_type = value_type


class FakeLaunch:
    """The launch file's description under the fake API, and :meth:`run` to launch it."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.description = module.generate_launch_description()
        self.arguments = {a.name: a for a in self.description.get_launch_arguments()}

    def run(self, **given: str) -> list[FakeNode]:
        """The actions started with the arguments ``given`` (name:=value on the command line)."""
        assert set(given) <= set(self.arguments), "undeclared arguments"
        context = types.SimpleNamespace(launch_configurations={"params_file": SHIPPED_PARAMS})
        for name, argument in self.arguments.items():
            value = given.get(name, context.launch_configurations.get(name))
            value = argument.default_value if value is None else value
            assert isinstance(value, str), name
            if argument.choices is not None and value not in argument.choices:
                raise RuntimeError(f"{name}:={value} is not one of {argument.choices}")
            context.launch_configurations[name] = value
        opaque = [e for e in self.description.entities if isinstance(e, FakeOpaqueFunction)]
        return [action for e in opaque for action in e.execute(context) or []]

    def node(self, **given: str) -> FakeNode:
        nodes = [n for n in self.run(**given) if n.kwargs["package"] == PACKAGE]
        assert len(nodes) == 1
        return nodes[0]

    def overrides(self, **given: str) -> dict[str, Any]:
        params_file, overrides = self.node(**given).kwargs["parameters"]
        assert params_file == SHIPPED_PARAMS
        return overrides


@pytest.fixture
def fake_launch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeLaunch:
    modules = {
        "launch": {"LaunchDescription": FakeLaunchDescription},
        "launch.actions": {
            "DeclareLaunchArgument": FakeDeclareLaunchArgument,
            "OpaqueFunction": FakeOpaqueFunction,
        },
        "launch.substitutions": {
            "LaunchConfiguration": FakeLaunchConfiguration,
            "PathJoinSubstitution": FakePathJoinSubstitution,
        },
        "launch_ros": {},
        "launch_ros.actions": {"Node": FakeNode},
        "launch_ros.substitutions": {"FindPackageShare": FakeFindPackageShare},
        "launch_ros.parameter_descriptions": {"ParameterValue": FakeParameterValue},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    # RViz configs the launch file writes land here.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return FakeLaunch(load_launch_module())


def test_launch_file_starts_the_installed_executables_with_the_installed_config(
    launch_source: tuple[dict[str, Any], list[ast.Call]], setup_kwargs: dict[str, Any]
) -> None:
    constants, calls = launch_source
    nodes = [
        c
        for c in calls
        if call_name(c) == "Node" and keyword_value(c, "package", constants) == PACKAGE
    ]
    assert len(nodes) == 1, "one Node action starts either variant"
    assert setup_kwargs["name"] == constants["PACKAGE"] == PACKAGE
    scripts = console_scripts(setup_kwargs)
    assert scripts[constants["EXECUTABLE"]] == "latent_memory_ros.node:main"
    assert scripts[constants["LIFECYCLE_EXECUTABLE"]] == "latent_memory_ros.node:lifecycle_main"
    assert constants["NODE_NAME"] == NODE_NAME
    assert constants["LIFECYCLE_NODE_NAME"] == LIFECYCLE_NODE_NAME

    params_file = "/".join(constants["PARAMS_FILE"])
    rviz_config = "/".join(constants["RVIZ_CONFIG"])
    for relative in (params_file, rviz_config):
        assert (REPO / relative).is_file()
        assert relative in installed(setup_kwargs, f"{SHARE}/config")


def test_launch_file_imports_launch_lazily(
    launch_source: tuple[dict[str, Any], list[ast.Call]],
) -> None:
    constants, calls = launch_source
    # launch, launch_ros and the node (rclpy) are imported on use, so the file loads (and
    # can be checked) without ROS.
    tree = ast.parse(LAUNCH_FILE.read_text())
    top_level_imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    modules = [
        name
        for s in top_level_imports
        for name in (
            [s.module or ""] if isinstance(s, ast.ImportFrom) else [a.name for a in s.names]
        )
    ]
    assert not [m for m in modules if m.startswith(("launch", "latent_memory_ros", "rclpy"))]
    module = load_launch_module()
    assert module.NODE_NAME == NODE_NAME
    # The arguments the file declares by name; the node's come from PARAMETERS in a loop.
    literal = {
        ast.literal_eval(c.args[0])
        for c in calls
        if call_name(c) == "DeclareLaunchArgument" and isinstance(c.args[0], ast.Constant)
    }
    assert literal == set(constants["LAUNCH_ARGUMENTS"]) == LAUNCH_ARGUMENTS


def test_every_node_parameter_is_a_launch_argument_described_by_the_node(
    fake_launch: FakeLaunch,
) -> None:
    arguments = fake_launch.arguments
    assert len(fake_launch.description.get_launch_arguments()) == len(arguments)
    assert not LAUNCH_ARGUMENTS & set(SPECS), "a launch argument shadows a parameter"
    assert set(arguments) == set(SPECS) | LAUNCH_ARGUMENTS
    for spec in PARAMETERS:
        argument = arguments[spec.name]
        # Empty keeps params_file's value, so a custom params_file is not overwritten.
        assert argument.default_value == "", spec.name
        assert argument.description.startswith(spec.description), spec.name
        assert "params_file" in argument.description
        if isinstance(spec.default, bool):
            expected_choices = ["", *BOOLEAN]
        elif spec.choices:
            expected_choices = ["", *spec.choices]
        else:
            expected_choices = None
        # The real launch refuses a default outside the choices, hence "" among them.
        assert argument.choices == expected_choices, spec.name
    for name in LAUNCH_ARGUMENTS:
        assert arguments[name].description.strip(), f"{name} has no description"
    for name in ("use_sim_time", "lifecycle", "rviz"):
        assert arguments[name].choices == BOOLEAN
        assert arguments[name].default_value == "false"
    for name in ("publish_tf", "image_qos", "image_transport"):
        assert arguments[name].choices, name
    assert "ros2 lifecycle set" in arguments["lifecycle"].description
    assert arguments["params_file"].default_value.parts[1:] == ["config", "latent_memory.yaml"]


def test_defaults_start_the_plain_node_with_params_file_alone(fake_launch: FakeLaunch) -> None:
    nodes = fake_launch.run()
    assert len(nodes) == 1, "no RViz by default"
    node = nodes[0].kwargs
    assert (node["package"], node["executable"], node["name"]) == (
        PACKAGE,
        "latent_memory_node",
        NODE_NAME,
    )
    assert node["namespace"] is None
    assert node["parameters"] == [SHIPPED_PARAMS, {"use_sim_time": False}]
    overrides = fake_launch.overrides(use_sim_time="true")
    assert overrides == {"use_sim_time": True}


def test_the_shipped_fastdds_profile_is_set_unless_the_user_has_one(
    fake_launch: FakeLaunch, monkeypatch: pytest.MonkeyPatch, setup_kwargs: dict[str, Any]
) -> None:
    """Issue 12 finding 5: large frames need Fast DDS shared-memory segments bigger than
    the default 512 KB; the launch file gives its processes the shipped profile."""
    for variable in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.delenv(variable, raising=False)
    shipped = str(REPO / "config" / "fastdds.xml")
    assert "config/fastdds.xml" in installed(setup_kwargs, f"{SHARE}/config")
    profile = ET.parse(shipped).getroot()  # well-formed, and what it says it is
    namespace = "{http://www.eprosima.com}"
    segment = profile.find(f".//{namespace}transport_descriptor/{namespace}segment_size")
    assert int(segment.text) >= 16 * 640 * 480 * 3
    nodes = fake_launch.run(rviz="true")
    assert [n.kwargs["additional_env"] for n in nodes] == [
        {"FASTDDS_DEFAULT_PROFILES_FILE": shipped}
    ] * 2
    assert fake_launch.node(fastdds_profile="none").kwargs["additional_env"] == {}
    mine = fake_launch.node(fastdds_profile="/etc/mine.xml").kwargs["additional_env"]
    assert mine == {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/mine.xml"}
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/etc/theirs.xml")
    assert fake_launch.node().kwargs["additional_env"] == {}


def test_lifecycle_starts_the_lifecycle_executable(
    fake_launch: FakeLaunch, setup_kwargs: dict[str, Any]
) -> None:
    node = fake_launch.node(lifecycle="true", publish_tf="false").kwargs
    assert node["executable"] == "latent_memory_lifecycle_node"
    assert console_scripts(setup_kwargs)[node["executable"]] == (
        "latent_memory_ros.node:lifecycle_main"
    )
    assert node["name"] == LIFECYCLE_NODE_NAME
    assert node["parameters"][1] == {"use_sim_time": False, "publish_tf": False}
    with pytest.raises(RuntimeError, match="lifecycle"):
        fake_launch.run(lifecycle="yes")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("publish_tf", "false", False),
        ("use_camera_info", "true", True),
        ("path_max_length", "10", 10),
        ("intra_op_threads", "4", 4),
        ("lost_sigma_m", "0.1", 0.1),
        ("max_gap_s", "2", 2.0),  # a double, or the node refuses it
        ("providers", "[CPUExecutionProvider]", ["CPUExecutionProvider"]),
        (
            "providers",
            "CUDAExecutionProvider,CPUExecutionProvider",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            "base_to_camera",
            "[0.1, 0, 0.5, -0.5, 0.5, -0.5, 0.5]",
            [0.1, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5],
        ),
        ("base_to_camera", "0,0,1,0,0,0,1", [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
        ("image_qos", "reliable", "reliable"),
        ("image_topic", "/camera/color/image_raw", "/camera/color/image_raw"),
        ("camera_frame", "1.5", "1.5"),  # a string, though it reads as a number
    ],
)
def test_given_arguments_override_params_file_with_the_parameter_type(
    fake_launch: FakeLaunch, name: str, text: str, expected: Any
) -> None:
    overrides = fake_launch.overrides(**{name: text})
    assert set(overrides) == {"use_sim_time", name}
    value = overrides[name]
    if isinstance(expected, str):
        # launch_ros would read a plain string as YAML; a typed ParameterValue keeps it.
        assert isinstance(value, FakeParameterValue) and value.value_type is str
        value = value.value
    assert value == expected
    assert type(value) is type(SPECS[name].default) is type(expected)
    if isinstance(expected, list):
        assert [type(v) for v in value] == [type(v) for v in SPECS[name].default[:1]] * len(value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("path_max_length", "ten"),
        ("path_max_length", "1.5"),
        ("lost_sigma_m", "small"),
        ("base_to_camera", "[a, b]"),
        ("base_to_camera", "[true]"),
        ("providers", "[[CPUExecutionProvider]]"),
    ],
)
def test_a_mistyped_argument_is_refused_by_name(
    fake_launch: FakeLaunch, name: str, text: str
) -> None:
    with pytest.raises(ValueError, match=f"{name}:="):
        fake_launch.run(**{name: text})


def test_choices_are_enforced(fake_launch: FakeLaunch) -> None:
    for name, text in (("publish_tf", "yes"), ("image_qos", "fast"), ("rviz", "1")):
        with pytest.raises(RuntimeError, match=name):
            fake_launch.run(**{name: text})


def test_rviz_starts_with_the_installed_config(fake_launch: FakeLaunch) -> None:
    nodes = fake_launch.run(rviz="true", use_sim_time="true")
    assert [n.kwargs["executable"] for n in nodes] == ["latent_memory_node", "rviz2"]
    rviz = nodes[1].kwargs
    assert rviz["package"] == "rviz2"
    assert rviz["arguments"] == ["-d", SHIPPED_RVIZ]
    assert rviz["parameters"] == [{"use_sim_time": True}]


def test_rviz_follows_a_renamed_namespaced_node_and_its_odom_frame(
    fake_launch: FakeLaunch, tmp_path: Path
) -> None:
    nodes = fake_launch.run(rviz="true", lifecycle="true", namespace="/robot1", odom_frame="map")
    assert nodes[0].kwargs["namespace"] == "robot1"
    flag, config_path = nodes[1].kwargs["arguments"]
    assert flag == "-d" and Path(config_path).parent == tmp_path
    config = yaml.safe_load(Path(config_path).read_text())
    shipped = yaml.safe_load(Path(SHIPPED_RVIZ).read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    prefix = f"/robot1/{LIFECYCLE_NODE_NAME}/"
    topics = [d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d]
    shipped_topics = [
        d["Topic"]["Value"] for d in shipped["Visualization Manager"]["Displays"] if "Topic" in d
    ]
    assert topics == [t.replace(f"/{NODE_NAME}/", prefix) for t in shipped_topics]
    assert all(t.startswith(prefix) for t in topics)


def test_launch_description_loads_where_launch_is_installed() -> None:
    pytest.importorskip("launch", reason="launch is not installed (no ROS installation)")
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no ROS installation)")
    from launch.actions import OpaqueFunction

    from launch import LaunchContext

    description = load_launch_module().generate_launch_description()
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert set(arguments) == set(SPECS) | LAUNCH_ARGUMENTS
    assert list(arguments["rviz"].choices) == BOOLEAN
    assert list(arguments["publish_tf"].choices) == ["", *BOOLEAN]
    # launch appends the choices to the description.
    assert arguments["image_qos"].description.startswith(SPECS["image_qos"].description)

    def executables(**given: str) -> list[tuple[str, str]]:
        context = LaunchContext()
        context.launch_configurations.update(params_file=SHIPPED_PARAMS, **given)
        for argument in arguments.values():
            argument.execute(context)  # the defaults, and the choices checked
        opaque = [e for e in description.entities if isinstance(e, OpaqueFunction)]
        nodes = [action for e in opaque for action in e.execute(context) or []]
        return [(n.node_package, n.node_executable) for n in nodes]

    assert executables(image_topic="/camera/color/image_raw", use_sim_time="true") == [
        (PACKAGE, "latent_memory_node")
    ]
    assert executables(lifecycle="true", publish_tf="false", path_max_length="10") == [
        (PACKAGE, "latent_memory_lifecycle_node")
    ]


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


# What the installed code imports that is not its own nor the standard library: the
# Python packages with a rosdep key, the ones pip installs (requirements.txt), and
# everything else, which is a ROS package and must be an exec_depend.
PYTHON_ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "scipy": "python3-scipy",
    "yaml": "python3-yaml",
}
PIP_ONLY = {"onnxruntime", "rosbags", "evo", "matplotlib", "tqdm"}
PIP_NAMES = {"onnxruntime": "onnxruntime-gpu"}


def imported_dependencies() -> tuple[set[str], set[str]]:
    """(ROS packages, Python packages) imported by the package and the launch file."""
    modules = set()
    for path in [*(REPO / PACKAGE).glob("*.py"), LAUNCH_FILE]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= {PACKAGE, "__future__", *sys.stdlib_module_names}
    python = modules & (set(PYTHON_ROSDEP_KEYS) | PIP_ONLY)
    return modules - python, python


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
    ros, python = imported_dependencies()
    assert exec_depends == ros | {PYTHON_ROSDEP_KEYS[m] for m in python if m in PYTHON_ROSDEP_KEYS}
    requirements = (REPO / "requirements.txt").read_text()
    for module in python - set(PYTHON_ROSDEP_KEYS):  # no rosdep key: pip installs them
        assert re.search(rf"^{PIP_NAMES.get(module, module)}\b", requirements, re.M), module
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


def test_rviz_config_shows_the_outputs_in_the_odom_frame() -> None:
    config = yaml.safe_load(Path(SHIPPED_RVIZ).read_text())
    manager = config["Visualization Manager"]
    odom_frame, base_frame = SPECS["odom_frame"].default, SPECS["base_frame"].default
    assert manager["Global Options"]["Fixed Frame"] == odom_frame
    displays = {d["Name"]: d for d in manager["Displays"]}
    assert len(displays) == len(manager["Displays"]), "display names are unique"
    topics = {
        name: (d["Class"], d["Topic"]["Value"]) for name, d in displays.items() if "Topic" in d
    }
    node = f"/{NODE_NAME}"
    assert topics == {
        "Path": ("rviz_default_plugins/Path", f"{node}/path"),
        "Odometry": ("rviz_default_plugins/Odometry", f"{node}/odometry"),
        "Pose": ("rviz_default_plugins/Pose", f"{node}/pose"),
        "Tracking state": ("rviz_default_plugins/MarkerArray", f"{node}/markers"),
        # Query poses: issue 3 adds ~/query/markers (and ~/query/pose); until then nothing
        # publishes it and the display just stays empty.
        "Query poses": ("rviz_default_plugins/MarkerArray", f"{node}/query/markers"),
    }
    assert all(displays[name]["Enabled"] for name in topics)
    covariance = displays["Odometry"]["Covariance"]
    assert covariance["Value"] and covariance["Position"]["Value"]
    assert covariance["Orientation"]["Value"]
    tf = displays["TF"]
    assert tf["Class"] == "rviz_default_plugins/TF" and tf["Enabled"]
    assert {odom_frame, base_frame} <= set(tf["Frames"])
    assert tf["Tree"] == {odom_frame: {base_frame: {}}}
    # Every topic shown (but the query markers, still to come) is one the node publishes.
    source = NODE_SOURCE.read_text()
    for name, (_, topic) in topics.items():
        if name != "Query poses":
            assert re.search(rf"\(\w+, \"~/{topic[len(node) + 1 :]}\"", source), topic
