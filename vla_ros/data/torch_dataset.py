"""EpisodeDataset: every frame of some episodes as a torch training sample, and the
normalization statistics of those episodes."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from vla_ros.data.episode import Episode
from vla_ros.data.errors import DatasetError
from vla_ros.model.normalization import FeatureStats, compute_stats


class EpisodeDataset(torch.utils.data.Dataset):
    """Every frame of some episodes as a training sample for ``VLAPolicy.loss``.

    ``dataset[i]`` is one sample; ``dataset.batch(indices)`` (or ``collate`` over samples,
    for a DataLoader) a batch: "images" float (B, V, 3, S, S) in [0, 1], "instructions"
    (B strings), "state" (B, S), "actions" (B, H, D), "action_is_pad" (B, H) bool.
    """

    def __init__(self, episodes: Sequence[Episode]):
        self.episodes = list(episodes)
        if not self.episodes:
            raise DatasetError("EpisodeDataset needs at least one episode")
        first = self.episodes[0]
        for e in self.episodes[1:]:
            for attr in ("camera_names", "state_names", "action_names"):
                if getattr(e, attr) != getattr(first, attr):
                    raise DatasetError(f"episode {e.path} has {attr} {getattr(e, attr)}, {first.path} has "
                                       f"{getattr(first, attr)}")
            if e.images.shape[1:] != first.images.shape[1:] or e.actions.shape[1:] != first.actions.shape[1:]:
                raise DatasetError(f"episode {e.path} has image/action shapes {e.images.shape[1:]}/"
                                   f"{e.actions.shape[1:]}, {first.path} has {first.images.shape[1:]}/"
                                   f"{first.actions.shape[1:]}")
        self.index = np.array([(i, t) for i, e in enumerate(self.episodes) for t in range(e.num_frames)],
                              dtype=np.int64).reshape(-1, 2)

    camera_names = property(lambda self: list(self.episodes[0].camera_names))
    state_names = property(lambda self: list(self.episodes[0].state_names))
    action_names = property(lambda self: list(self.episodes[0].action_names))
    chunk_size = property(lambda self: int(self.episodes[0].actions.shape[1]))
    image_size = property(lambda self: int(self.episodes[0].images.shape[2]))

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def _frames(self, indices) -> list[tuple[Episode, int]]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"frame index out of range for a dataset of {len(self)} frames")
        return [(self.episodes[e], t) for e, t in self.index[idx]]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        frames = self._frames(indices)
        images = np.stack([ep.images[t] for ep, t in frames])  # (B, V, S, S, 3) uint8
        images = torch.from_numpy(images).permute(0, 1, 4, 2, 3).float().div_(255.0)
        return {
            "images": images.contiguous(),
            "instructions": [ep.instruction for ep, _ in frames],
            "state": torch.from_numpy(np.stack([ep.state[t] for ep, t in frames])),
            "actions": torch.from_numpy(np.stack([ep.actions[t] for ep, t in frames])),
            "action_is_pad": torch.from_numpy(np.stack([ep.action_is_pad[t] for ep, t in frames])),
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.batch([i]).items()}

    @staticmethod
    def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"instructions": [s["instructions"] for s in samples]}
        for k in ("images", "state", "actions", "action_is_pad"):
            out[k] = torch.stack([s[k] for s in samples])
        return out

    def stats(self) -> dict[str, FeatureStats]:
        """Normalization statistics: "action" over non-pad chunk steps, "state" over frames."""
        return compute_dataset_stats(self.episodes)


def compute_dataset_stats(episodes: Sequence[Episode]) -> dict[str, FeatureStats]:
    """{"action": stats over every non-pad chunk step, "state": stats over every frame}."""
    if not episodes:
        raise DatasetError("cannot compute statistics of zero episodes")
    actions = np.concatenate([e.actions[~e.action_is_pad] for e in episodes])
    states = np.concatenate([e.state for e in episodes])
    return {"action": compute_stats(actions), "state": compute_stats(states)}
