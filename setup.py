"""Python packaging for vla_ros.

This is how the dev environment (`make setup`) installs the Python code: editable, with
console scripts in <venv>/bin. On a ROS 2 install the package is built by colcon through
CMakeLists.txt (package.xml declares ament_cmake), which also generates the interfaces and
installs executables to lib/vla_ros and launch/config files to share/vla_ros.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def console_scripts():
    """Read the executables from the one list CMakeLists.txt also reads."""
    lines = (HERE / "scripts" / "executables.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


setup(
    name="vla_ros",
    version="0.1.0",
    description="Vision-Language-Action policies for ROS 2 robots",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vla_ros", "vla_ros.*"]),
    # rclpy and the message packages come from ROS (apt) or the ros-jazzy-* wheels, and
    # torch from the platform's own channel: requirements/dev.txt pins the dev set.
    install_requires=["numpy", "opencv-python-headless", "transforms3d", "safetensors", "pyyaml", "rosbags",
                      "pyarrow", "av", "tqdm"],
    entry_points={"console_scripts": console_scripts()},
    zip_safe=False,
)
