"""vla_ros: Vision-Language-Action policies for ROS 2 robots.

Layers (imports point downward only): ros/ (rclpy nodes) -> runtime/ (inference engine,
chunk queue, safety) -> model/ (torch modules, checkpoints) and data/ (bags, datasets).
"""
# The generated interfaces (vla_ros.msg, vla_ros.action) may live in another directory
# than this file: in the dev environment pip owns this directory (editable install) and
# cmake installs the generated modules elsewhere on sys.path. extend_path joins them.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
