"""Behaviour cloning of a VLA policy from episode bags (no rclpy).

    from vla_ros.training import TrainConfig, train
    result = train(["bags/"], "runs/pick", model_config="tiny",
                   dataset_config=DatasetConfig(chunk_size=8), train_config=TrainConfig(steps=2000))

What a run writes under ``out_dir``::

    last/                 the latest checkpoint: a policy checkpoint (model.safetensors,
                          config.json, normalization.json) + dataset_config.json +
                          training_state.safetensors (optimizer tensors, torch RNG states)
                          + training_state.json (step, seeds, numpy/python RNG states,
                          train config, data paths). Never pickle.
    best/                 the policy with the lowest validation loss so far (+ metrics.json)
    train_log.jsonl       one JSON object per logged step / validation

The policy's robot interface (action, state and camera names) comes from the episodes'
metadata; the model config (a preset name or JSON file) takes its chunk size and image size
from the dataset config. Normalization statistics come from the
training split. Training: AdamW (no weight decay on biases and norms), linear warmup then
cosine decay, gradient clipping, DrQ-style random-shift augmentation (replicate-pad, random
crop), batches sampled uniformly with replacement by a seeded generator.

``resume=True`` continues from ``out_dir/last``: weights, optimizer state, step and every
RNG are restored, so a resumed run ends with exactly the weights of an uninterrupted one.

Modules: config (TrainConfig), model_config (preset + dataset -> VLAConfig, RobotInterface), optim
(optimizer, learning-rate schedule), augment, rng (seeded streams), validation,
checkpoint (last/ and best/), train_log, loop (train()), cli (`vla-ros train`).
"""

from vla_ros.training.config import TrainConfig, TrainingError, TrainResult
from vla_ros.training.loop import train
from vla_ros.training.model_config import resolve_model_config, robot_interface_of

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "resolve_model_config", "robot_interface_of", "train"]
