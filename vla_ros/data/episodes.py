"""Many episodes: find the bags under some paths, load them through an on-disk cache, split.

One bag directory (MCAP or sqlite3) is one episode; a LeRobotDataset v3.0 directory (meta/info.json)
holds many, read by :mod:`vla_ros.data.lerobot_reader`. :func:`load_episodes` loads every bag
(with ``skip_bad_bags``, the default, a bad bag is logged and skipped instead of raising
:class:`DatasetError`); decoded episodes are cached as .npz files keyed by the bag's files
and the dataset config, so a second run skips decoding.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vla_ros.data.alignment import load_episode
from vla_ros.data.config import DatasetConfig
from vla_ros.data.episode import Episode
from vla_ros.data.errors import DatasetError
from vla_ros.data.lerobot import is_lerobot_dataset

log = logging.getLogger("vla_ros.data.episodes")

CACHE_VERSION = 1


def _is_bag_dir(path: Path) -> bool:
    if (path / "metadata.yaml").is_file():
        return True
    return any(p.suffix in (".mcap", ".db3") for p in path.iterdir() if p.is_file())


def _expand_patterns(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths, with shell patterns that name no existing path expanded (sorted); a pattern that
    matches nothing is an error."""
    out: list[Path] = []
    for d in paths:
        s = str(d)
        if any(c in s for c in "*?[") and not Path(s).exists():
            matches = sorted(glob.glob(s))
            if not matches:
                raise DatasetError(f"data pattern {s} matches nothing")
            out += map(Path, matches)
        else:
            out.append(Path(s))
    return out


def find_bags(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Bag directories named by ``paths``: each a bag directory, a directory whose
    subdirectories are bags (other subdirectories are ignored), or a quoted shell pattern
    (``data/bags/episode_00*``) of those. Sorted, without duplicates."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in _expand_patterns(paths):
        if not p.exists():
            raise DatasetError(f"data path {p} does not exist")
        if p.is_file():
            p = p.parent
        if _is_bag_dir(p):
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and _is_bag_dir(d))
        if not subs:
            raise DatasetError(f"data path {p} is neither a bag directory nor a directory of bag directories")
        out.extend(subs)
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


# ----------------------------------------------------------------------------- cache
def cache_key(bag: str | os.PathLike, config: DatasetConfig) -> str:
    """Hash of the bag's files (path, size, mtime) and the config fields that shape the arrays."""
    bag = Path(bag).resolve()
    files = []
    if bag.is_dir():
        for f in sorted(bag.iterdir()):
            if f.is_file():
                st = f.stat()
                files.append([f.name, st.st_size, st.st_mtime_ns])
    payload = {"version": CACHE_VERSION, "bag": str(bag), "files": files, "config": config.cache_key_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(bag: str | os.PathLike, config: DatasetConfig, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / f"{Path(bag).name}-{cache_key(bag, config)[:20]}.npz"


def load_episode_cached(path: str | os.PathLike, config: DatasetConfig,
                        cache_dir: str | os.PathLike | None = None) -> Episode:
    """load_episode through the cache: a hit reads only the .npz, a miss writes it."""
    if cache_dir is None:
        return load_episode(path, config)
    file = cache_path(path, config, cache_dir)
    if file.is_file():
        try:
            ep = Episode.load_npz(file)
            ep.path = str(path)
            return ep
        except Exception as e:  # a truncated or foreign file: rebuild it
            log.warning("episode cache %s unreadable (%s); rebuilding it", file, e)
    ep = load_episode(path, config)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        ep.save_npz(file)
    except OSError as e:
        log.warning("cannot write episode cache %s: %s", file, e)
    return ep


# ----------------------------------------------------------------------------- many bags
def load_episodes(paths: str | os.PathLike | Iterable[str | os.PathLike], config: DatasetConfig,
                  cache_dir: str | os.PathLike | None = None) -> list[Episode]:
    """Episodes of every bag in ``paths`` (see find_bags), sorted by path, then those of every
    LeRobot dataset in ``paths``.

    Unsuccessful episodes are left out when ``config.only_successful``. A bad bag raises
    DatasetError, or is logged and skipped when ``config.skip_bad_bags``; a LeRobot dataset that
    cannot be read always raises. No usable episode at all raises DatasetError listing why.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    lerobot = [Path(p) for p in paths if is_lerobot_dataset(p)]
    bag_paths = [p for p in paths if not is_lerobot_dataset(p)]
    bags = find_bags(bag_paths) if bag_paths else []
    episodes, problems, unsuccessful = [], [], []
    for bag in bags:
        try:
            ep = load_episode_cached(bag, config, cache_dir)
        except DatasetError as e:
            if not config.skip_bad_bags:
                raise
            log.warning("skipping %s", e)
            problems.append(str(e))
            continue
        if config.only_successful and not ep.success:
            log.info("skipping unsuccessful episode %s", bag)
            unsuccessful.append(str(bag))
            continue
        episodes.append(ep)
    if lerobot:  # pyarrow and PyAV load only for LeRobot datasets
        from vla_ros.data.lerobot_reader import read_lerobot_episodes
        for root in lerobot:
            episodes += read_lerobot_episodes(root, config)
    if not episodes:
        why = list(problems)
        if unsuccessful:
            why.append(f"{len(unsuccessful)} episode(s) were unsuccessful (only_successful=True): {unsuccessful}")
        raise DatasetError(f"no usable episodes in {[str(b) for b in bags]}: " + "; ".join(why))
    if problems:
        log.warning("%d of %d bag(s) skipped", len(problems), len(bags))
    return episodes


def split_episodes(episodes: Sequence[Episode], val_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list[Episode], list[Episode]]:
    """Seeded train/validation split by episode (never frames of one episode on both sides).

    round(val_fraction * N) episodes go to validation, at least one when val_fraction > 0
    and N >= 2, and always at least one stays for training. Independent of input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    eps = sorted(episodes, key=lambda e: e.path)
    n = len(eps)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n - 1) if n else 0
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    return [e for i, e in enumerate(eps) if i not in val_idx], [e for i, e in enumerate(eps) if i in val_idx]
