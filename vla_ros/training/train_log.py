"""train_log.jsonl: one JSON object per logged step or validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vla_ros.training.checkpoint import json_default

LOG_FILE = "train_log.jsonl"


class TrainLog:
    def __init__(self, path: Path):
        self.path = path

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=json_default) + "\n")

    def truncate(self, step: int) -> None:
        """Drop the entries after ``step`` (a resumed run writes them again)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        self.path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
