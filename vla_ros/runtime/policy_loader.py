"""Turn a node's model parameters into a ready inference engine, or one clear error.

Checkpoints load through ``lora.load_any_policy``: a plain one, or an adapted one (LoRA
adapters over a base checkpoint checked by digest), merged.

The ROS node knows only this function and the engine it returns (`infer`, `action_names`,
`state_names`, `chunk_size`, `action_dim`, `device`), never a model class.
"""
from __future__ import annotations

from typing import Callable, Sequence

from vla_ros.model.checkpoint import CheckpointError
from vla_ros.model.lora import load_any_policy
from vla_ros.model.config import load_preset
from vla_ros.model.interface import RobotInterface
from vla_ros.model.policy import build_policy
from vla_ros.runtime.engine import InferenceEngine
from vla_ros.runtime.errors import PolicyLoadError

__all__ = ["LoadedEngine", "PolicyLoadError", "load_engine"]

# What an untrained preset serves when there is no checkpoint and no robot to fit (vla-ros
# serve smoke tests): the simulated Panda's end-effector deltas, joints and front camera.
DEMO_INTERFACE = RobotInterface(action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
                                camera_names=["front"],
                                state_names=[f"joint_{i}" for i in range(1, 8)] + ["gripper"])


class LoadedEngine:
    """An InferenceEngine plus the policy facts the node needs."""

    def __init__(self, engine: InferenceEngine):
        self.engine = engine
        self.config = engine.config
        self.interface = engine.interface
        self.action_names = list(self.interface.action_names)
        self.state_names = list(self.interface.state_names) if self.config.use_state else []
        self.chunk_size = int(self.config.chunk_size)
        self.action_dim = len(self.action_names)
        self.device = str(engine.device)
        self.takes_committed = engine.takes_committed

    def infer(self, images, instruction, state, committed=None, inference_delay=0):
        return self.engine.infer(images, instruction, state if self.state_names else None,
                                 committed=committed, inference_delay=inference_delay)


def load_engine(checkpoint: str, preset: str, action_names: Sequence[str] | None, action_dim: int,
                state_names: Sequence[str], camera_names: Sequence[str], device: str = "auto",
                dtype: str = "float32", compile: bool = False, seed: int = 0,
                log: Callable[[str], None] = print, warmup: int = 2) -> LoadedEngine:
    """Load `checkpoint` (or build `preset` untrained) and check it fits the robot.

    action_names: the robot's action dimension names (None: only the dimension is checked,
    as for end-effector spaces). state_names: joints available as proprioception.
    """
    try:
        if checkpoint:
            policy = load_any_policy(checkpoint, device="cpu")  # plain or LoRA-adapted
        else:
            log(f"model.checkpoint is empty: using preset '{preset}' with UNTRAINED weights "
                "(for smoke tests only; the robot will not do anything useful)")
            names = list(action_names) if action_names is not None else [f"a{i}" for i in range(action_dim)]
            robot = RobotInterface(action_names=names, camera_names=list(camera_names), state_names=list(state_names))
            policy = build_policy(load_preset(preset), robot)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise PolicyLoadError(str(exc)) from exc
    robot_io = policy.interface
    source = checkpoint or f"preset '{preset}'"
    if action_names is not None and list(robot_io.action_names) != list(action_names):
        raise PolicyLoadError(f"{source} predicts actions {list(robot_io.action_names)} but the robot "
                              f"expects {list(action_names)} (joints.names + gripper)")
    if len(robot_io.action_names) != action_dim:
        raise PolicyLoadError(f"{source} predicts {len(robot_io.action_names)} action dimensions, "
                              f"the robot's action space has {action_dim}")
    if len(robot_io.camera_names) != len(camera_names):
        raise PolicyLoadError(f"{source} expects {len(robot_io.camera_names)} cameras "
                              f"{list(robot_io.camera_names)}, cameras.names has {list(camera_names)}")
    try:
        engine = InferenceEngine(policy, device=device, dtype=dtype, compile=compile, seed=seed)
        engine.warmup(warmup)
    except (RuntimeError, ValueError) as exc:
        raise PolicyLoadError(f"could not prepare the model for inference on {device}/{dtype}: {exc}") from exc
    return LoadedEngine(engine)


def load_engine_for_checkpoint(checkpoint: str, preset: str = "tiny", device: str = "auto", dtype: str = "float32",
                               compile: bool = False, seed: int = 0, warmup: int = 2,
                               log: Callable[[str], None] = print) -> LoadedEngine:
    """Load a checkpoint as it is, with no robot to fit (vla-ros serve: clients check the metadata)."""
    try:
        if checkpoint:
            policy = load_any_policy(checkpoint, device="cpu")  # plain or LoRA-adapted
        else:
            log(f"no checkpoint: serving preset '{preset}' with UNTRAINED weights (smoke tests only)")
            policy = build_policy(load_preset(preset), DEMO_INTERFACE)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise PolicyLoadError(str(exc)) from exc
    try:
        engine = InferenceEngine(policy, device=device, dtype=dtype, compile=compile, seed=seed)
        engine.warmup(warmup)
    except (RuntimeError, ValueError) as exc:
        raise PolicyLoadError(f"could not prepare the model for inference on {device}/{dtype}: {exc}") from exc
    return LoadedEngine(engine)
