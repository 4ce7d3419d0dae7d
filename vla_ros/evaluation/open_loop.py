"""Open-loop evaluation: a checkpoint's predicted action chunks vs recorded episodes (no rclpy).

Every frame of every held-out episode bag goes through the policy (images, instruction,
state -> a chunk of H actions in robot units), and the prediction is compared with the
recorded actions the dataset aligned to that frame:

* ``first_action``: the first predicted action vs the recorded action of the frame's tick
  (what a controller executing one action per inference would do);
* ``chunk``: every predicted step vs the recorded one, over non-padded steps, plus the mean
  absolute error by chunk step (``mae_by_step``).

Errors are per action dimension (MAE, RMSE, in robot units), over all episodes and per
episode. Written to ``out_dir``: ``report.json`` and, per episode, a PNG with one subplot per
action dimension (recorded per-tick actions, predicted first actions and, faintly, every
predicted chunk) drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vla_ros.data.cli import add_dataset_arguments, dataset_config_from_args
from vla_ros.data.compatibility import check_episodes_fit
from vla_ros.data.config import CameraTopic, DatasetConfig
from vla_ros.data.episode import Episode
from vla_ros.data.episodes import load_episodes
from vla_ros.model import RobotInterface, VLAConfig, make_generator
from vla_ros.model.lora import is_adapted_checkpoint, load_any_policy
from vla_ros.model.checkpoint import ADAPTER_CONFIG_FILE, CONFIG_FILE, MODEL_FILE, read_config
from vla_ros.model.device import resolve_device
from vla_ros.model.policy import VLAPolicy

log = logging.getLogger("vla_ros.evaluation.open_loop")

REPORT_FILE = "report.json"


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A policy checkpoint directory (plain, or adapted: LoRA), or a training output directory
    (its best/, else last/)."""
    p = Path(path)
    is_checkpoint = lambda d: (d / MODEL_FILE).is_file() or is_adapted_checkpoint(d)  # noqa: E731
    if is_checkpoint(p):
        return p
    for sub in ("best", "last"):
        if is_checkpoint(p / sub):
            return p / sub
    raise FileNotFoundError(f"{p} is neither a policy checkpoint (no {MODEL_FILE} or {ADAPTER_CONFIG_FILE}) nor "
                            f"a training output directory with best/ or last/")


def base_dataset_config(checkpoint: Path, config: VLAConfig, interface: RobotInterface) -> DatasetConfig:
    """The dataset config saved with the checkpoint (dataset_config.json, written by
    training), else the defaults with the policy's camera names (topic /<name>/image_raw),
    state joints, image size and chunk size."""
    recorded = DatasetConfig.recorded_with(checkpoint)
    if recorded is not None:
        return recorded
    return DatasetConfig(cameras=[CameraTopic(n, f"/{n}/image_raw") for n in interface.camera_names],
                         state_joint_names=list(interface.state_names), image_size=config.image_size,
                         chunk_size=config.chunk_size)


def dataset_config_for(checkpoint: Path, policy: VLAPolicy, base: DatasetConfig | None = None) -> DatasetConfig:
    """``base`` (default: base_dataset_config) with image and chunk size set to the policy's."""
    cfg = policy.config
    d = (base or base_dataset_config(checkpoint, cfg, policy.interface)).to_dict()
    for key, value in (("image_size", cfg.image_size), ("chunk_size", cfg.chunk_size)):
        if d[key] != value:
            log.warning("dataset %s %s replaced by the checkpoint's %s", key, d[key], value)
            d[key] = value
    return DatasetConfig.from_dict(d)


@torch.inference_mode()
def predict_episode(policy: VLAPolicy, episode: Episode, batch_size: int = 32, seed: int = 0) -> np.ndarray:
    """The policy's action chunk for every frame of ``episode``: (T, H, D) robot units."""
    device = policy.device
    gen = make_generator(seed, device)
    was_training = policy.training
    policy.eval()
    out = []
    try:
        for i in range(0, episode.num_frames, batch_size):
            imgs = torch.from_numpy(episode.images[i:i + batch_size]).to(device)
            imgs = imgs.permute(0, 1, 4, 2, 3).float().div_(255.0)
            state = torch.from_numpy(episode.state[i:i + batch_size]).to(device) if policy.config.use_state else None
            out.append(policy(imgs, [episode.instruction] * imgs.shape[0], state, generator=gen).cpu().numpy())
    finally:
        policy.train(was_training)
    return np.concatenate(out).astype(np.float32)


def error_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None, names: Sequence[str]) -> dict:
    """Per-dimension MAE and RMSE of pred vs target (..., D) over entries where mask is true."""
    err = (pred - target).reshape(-1, pred.shape[-1]).astype(np.float64)
    if mask is not None:
        err = err[mask.reshape(-1)]
    n = int(err.shape[0])
    mae = np.abs(err).mean(0) if n else np.full(len(names), np.nan)
    rmse = np.sqrt((err ** 2).mean(0)) if n else np.full(len(names), np.nan)
    return {"count": n, "mae": dict(zip(names, map(float, mae))), "rmse": dict(zip(names, map(float, rmse))),
            "mae_mean": float(np.mean(mae)), "rmse_mean": float(np.mean(rmse))}


def _metrics(preds: list[np.ndarray], episodes: list[Episode], names: list[str]) -> dict:
    pred = np.concatenate(preds)
    target = np.concatenate([e.actions for e in episodes])
    valid = ~np.concatenate([e.action_is_pad for e in episodes])
    abs_err = np.abs(pred - target).mean(-1)  # (N, H)
    by_step = [float(abs_err[:, h][valid[:, h]].mean()) if valid[:, h].any() else None
               for h in range(pred.shape[1])]
    return {"first_action": error_metrics(pred[:, 0], target[:, 0], None, names),
            "chunk": dict(error_metrics(pred, target, valid, names), mae_by_step=by_step)}


def plot_episode(episode: Episode, pred: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """One PNG: a subplot per action dimension, recorded vs predicted actions over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = episode.action_names or [f"a{i}" for i in range(pred.shape[-1])]
    D, H = pred.shape[-1], pred.shape[1]
    t0 = min(int(episode.frame_stamps[0]), int(episode.tick_stamps[0]))
    tick_t = (episode.tick_stamps - t0) / 1e9
    frame_t = (episode.frame_stamps - t0) / 1e9
    fig = Figure(figsize=(9, 1.6 * D + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(D, 1, sharex=True, squeeze=False)[:, 0]
    for d, ax in enumerate(axes):
        for i in range(len(pred)):  # every predicted chunk, faint, on the ticks it covers
            idx = episode.action_start[i] + np.arange(H)
            ok = idx < len(tick_t)
            ax.plot(tick_t[idx[ok]], pred[i, ok, d], color="tab:orange", alpha=0.15, linewidth=0.8)
        ax.plot(tick_t, episode.tick_actions[:, d], color="tab:blue", linewidth=1.5, label="recorded")
        ax.plot(frame_t, pred[:, 0, d], "o", color="tab:orange", markersize=3, label="predicted (first action)")
        ax.set_ylabel(names[d])
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("time since episode start (s)")
    fig.suptitle(title or f"{episode.name}: {episode.instruction}", fontsize="medium")
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "episode"


def evaluate_open_loop(checkpoint: str | os.PathLike, data: Sequence[str | os.PathLike] | Sequence[Episode],
                       out_dir: str | os.PathLike, dataset_config: DatasetConfig | None = None,
                       cache_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 32,
                       seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Run the checkpoint on every frame of the episodes in ``data``; write report.json (and
    one PNG per episode when ``plots``) to ``out_dir``; return the report."""
    ckpt = resolve_checkpoint(checkpoint)
    policy = load_any_policy(ckpt, device=resolve_device(device))
    cfg, iface = policy.config, policy.interface
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if data and all(isinstance(d, Episode) for d in data):
        episodes = list(data)
        dcfg = dataset_config
    else:
        dcfg = dataset_config_for(ckpt, policy, dataset_config)
        episodes = load_episodes([str(p) for p in data], dcfg, cache_dir=cache_dir)
    check_episodes_fit(episodes, action_names=iface.action_names, camera_names=iface.camera_names,
                       state_names=iface.state_names if cfg.use_state else None, chunk_size=cfg.chunk_size,
                       image_size=cfg.image_size, what="the checkpoint")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(iface.action_names)
    preds, per_episode = [], []
    for i, ep in enumerate(episodes):
        pred = predict_episode(policy, ep, batch_size=batch_size, seed=seed + i)
        preds.append(pred)
        entry = {"bag": ep.path, "instruction": ep.instruction, "success": ep.success, "frames": ep.num_frames,
                 **_metrics([pred], [ep], names)}
        if plots:
            png = plot_episode(ep, pred, out / f"episode_{i:03d}_{_safe(ep.name)}.png")
            entry["plot"] = png.name
        per_episode.append(entry)
        log.info("%s: first-action MAE %.5f (mean over dimensions)", ep.name, entry["first_action"]["mae_mean"])
    all_actions = np.concatenate([e.tick_actions for e in episodes])
    report = {
        "checkpoint": str(ckpt), "action_names": names, "chunk_size": cfg.chunk_size,
        "num_episodes": len(episodes), "num_frames": int(sum(e.num_frames for e in episodes)),
        "recorded_std": dict(zip(names, map(float, all_actions.std(0)))),
        **_metrics(preds, episodes, names),
        "dataset_config": dcfg.to_dict() if dcfg is not None else None,
        "episodes": per_episode,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


# ----------------------------------------------------------------------------- CLI
def add_open_loop_arguments(p: argparse.ArgumentParser) -> None:
    """The `vla-ros eval-open-loop` options."""
    p.add_argument("--checkpoint", required=True,
                   help="policy checkpoint directory, or a training output directory (uses best/, else last/)")
    p.add_argument("--out", required=True, help="directory for report.json and the plots")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per forward pass (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling heads (flow) (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-plots", action="store_true", help="write report.json only")
    add_dataset_arguments(p)


def run_open_loop_cli(args) -> int:
    """`vla-ros eval-open-loop`: the handler behind the subcommand."""
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    if not args.data:
        print("vla-ros eval-open-loop: error: --data is required")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        base = base_dataset_config(ckpt, *read_config(ckpt / CONFIG_FILE))
        dcfg = dataset_config_from_args(args, base=base)
        report = evaluate_open_loop(ckpt, args.data, args.out, dataset_config=dcfg,
                                    cache_dir=None if args.no_cache else args.cache_dir, device=args.device,
                                    batch_size=args.batch_size, seed=args.seed, plots=not args.no_plots)
    except (ValueError, FileNotFoundError) as e:
        print(f"vla-ros eval-open-loop: error: {e}")
        return 1
    names = report["action_names"]
    print(f"{report['num_episodes']} episodes, {report['num_frames']} frames; checkpoint {report['checkpoint']}")
    print(f"{'dimension':>12s} {'first MAE':>11s} {'first RMSE':>11s} {'chunk MAE':>11s} {'chunk RMSE':>11s}")
    for n in names:
        f, c = report["first_action"], report["chunk"]
        print(f"{n:>12s} {f['mae'][n]:11.5f} {f['rmse'][n]:11.5f} {c['mae'][n]:11.5f} {c['rmse'][n]:11.5f}")
    print(f"report: {Path(args.out) / REPORT_FILE}")
    return 0
