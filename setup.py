"""ament_python build of the ROS side; the training package (training/) is not installed here.

Python dependencies come from rosdep (package.xml) on a ROS machine and from
requirements.txt elsewhere, so install_requires stays minimal.
"""

import os
from glob import glob

from setuptools import setup

PACKAGE = "latent_memory_ros"
SHARE = os.path.join("share", PACKAGE)


def files(pattern: str) -> list[str]:
    """Plain files matching ``pattern``; none when the folder is empty or absent."""
    return sorted(path for path in glob(pattern) if os.path.isfile(path))


data_files = [
    ("share/ament_index/resource_index/packages", [os.path.join("resource", PACKAGE)]),
    (SHARE, ["package.xml"]),
    (os.path.join(SHARE, "launch"), files("launch/*.py")),
    (os.path.join(SHARE, "config"), files("config/*")),
    (os.path.join(SHARE, "models", "default"), files("models/default/*")),
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[(target, sources) for target, sources in data_files if sources],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="latent_memory_ros maintainers",
    maintainer_email="latent-memory-ros@example.com",
    description="Map-free learned localisation with a fixed-size latent memory (ROS 2 node).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "latent_memory_node = latent_memory_ros.node:main",
            "latent_memory_lifecycle_node = latent_memory_ros.node:lifecycle_main",
            "latent_memory_eval = latent_memory_ros.evaluation:main",
            "latent_memory_replay = latent_memory_ros.replay:main",
        ],
    },
)
