"""Instruction augmentation: training instructions rewritten with interchangeable phrases.

A policy conditioned on a frozen sentence encoder only learns what its training instructions
span: with a few tens of phrasings it follows those and drifts on words it never saw. A
paraphrase table (JSON, e.g. ``config/instructions/sim_tasks.json``) lists groups of
interchangeable phrases (verbs of one task, nouns of one object, words of one direction),
prefixes and suffixes. A rewrite replaces every
phrase of any group an instruction contains (longest match first, whole words only; ``keep`` phrases are
left alone) is replaced by a random phrase of the same group, then a prefix or suffix may be added, an article dropped, and one
word may get a typo (two letters swapped). The meaning (which task, which object, which
direction) is kept by construction, so the recorded action stays the right label.

Training draws from a pool (:class:`ParaphrasePool`): a fixed number of rewrites of every
recorded instruction, made once from the run's seed, so that a frozen sentence encoder
encodes each string once (encoding fresh strings at every step costs more than the
optimizer step on a CPU) and a resumed run sees the same strings. Each sample then keeps
its recorded instruction or, with ``probability``, takes one of its rewrites.

Written here rather than taken from a text-augmentation library (nlpaug, textattack): those
substitute synonyms from WordNet or a language model, which would put words of the held-out
evaluation sets into training and cannot keep a push direction's meaning; a table keeps
both under the user's control. The random stream is a numpy Generator the run seeds and
saves, so ``--resume`` stays exact.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from vla_ros.cli_fields import refuse_unknown_keys
from vla_ros.share import share_dirs


class ParaphraseTableError(ValueError):
    """A paraphrase table that cannot be used; the message names the file and the field."""


def table_path(name_or_path: str | Path) -> Path:
    """A paraphrase table: a path, or a name in config/instructions/ of the source tree or the
    installed share directory; a name found nowhere is returned as a path (load reports it)."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists() or "/" in str(name_or_path):
        return p
    for d in share_dirs():
        f = d / "config" / "instructions" / f"{p.name}.json"
        if f.is_file():
            return f
    return p


@dataclass
class ParaphraseTable:
    groups: dict[str, list[str]]               # group name -> interchangeable phrases
    probability: float = 0.8                   # share of training samples given a rewrite
    prefix_probability: float = 0.25           # share of rewritten ones that get a prefix
    suffix_probability: float = 0.15           # ... a suffix
    typo_probability: float = 0.1              # ... a typo in one word of 4+ letters
    drop_article_probability: float = 0.1      # ... lose their first "the"
    prefixes: list[str] = field(default_factory=list)
    suffixes: list[str] = field(default_factory=list)
    # phrases left as they are even though they contain a group's phrase ("can you" is not a can)
    keep: list[str] = field(default_factory=list)
    about: str = ""                            # free text: what the table is for

    @classmethod
    def load(cls, path: str | Path) -> "ParaphraseTable":
        """Read a table: a JSON file, or a name in config/instructions/ (``sim_tasks``)."""
        path = table_path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ParaphraseTableError(f"paraphrase table {str(path)!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise ParaphraseTableError(f"paraphrase table {str(path)!r} is not readable JSON: {e}") from None
        try:
            if not isinstance(data, dict):
                raise ValueError("the top level must be an object")
            refuse_unknown_keys(cls, data, "ParaphraseTable")
            if "groups" not in data:
                raise ValueError("'groups' is missing")
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ParaphraseTableError(f"paraphrase table {str(path)!r}: {e}") from None

    def __post_init__(self) -> None:
        if not isinstance(self.groups, dict) or not self.groups:
            raise ValueError("'groups' must be a non-empty object of phrase lists")
        owner: dict[str, str] = {}
        for name, phrases in self.groups.items():
            if (not isinstance(phrases, list) or len(phrases) < 2
                    or not all(isinstance(p, str) and p.strip() for p in phrases)):
                raise ValueError(f"group {name!r} must list at least two non-empty phrases")
            for p in phrases:
                key = _norm(p)
                if key in owner and owner[key] != name:
                    raise ValueError(f"phrase {p!r} is in groups {owner[key]!r} and {name!r}: "
                                     f"its meaning would be ambiguous")
                owner[key] = name
        for f in fields(self):
            if f.name.endswith("probability"):
                v = getattr(self, f.name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ValueError(f"{f.name!r} must be a number in [0, 1], got {v!r}")
        for name in ("prefixes", "suffixes", "keep"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(p, str) and p.strip() for p in v):
                raise ValueError(f"{name!r} must be a list of non-empty strings")

    def words(self) -> set[str]:
        """Every lower-case word the table can put into an instruction."""
        phrases = [p for g in self.groups.values() for p in g] + self.prefixes + self.suffixes
        return {w for p in phrases for w in re.findall(r"[a-z0-9'-]+", p.lower())}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


class Paraphraser:
    """Rewrites instructions with a :class:`ParaphraseTable` and a seeded numpy Generator."""

    def __init__(self, table: ParaphraseTable, rng: np.random.Generator):
        self.table, self.rng = table, rng
        self._group_of = {_norm(p): name for name, g in table.groups.items() for p in g}
        self._phrases = {name: [_norm(p) for p in g] for name, g in table.groups.items()}
        self._keep = {_norm(p) for p in table.keep}
        alternatives = sorted(set(self._group_of) | self._keep, key=len, reverse=True)  # longest match first
        self._pattern = re.compile(r"(?<![\w'-])(" + "|".join(re.escape(p) for p in alternatives) + r")(?![\w'-])")

    def __call__(self, instruction: str) -> str:
        """One rewrite of ``instruction`` (lower-cased; it may come out unchanged)."""
        t, rng = self.table, self.rng

        def swap(m: re.Match) -> str:
            if m.group(1) in self._keep:
                return m.group(1)
            options = self._phrases[self._group_of[m.group(1)]]
            return options[int(rng.integers(len(options)))]

        text = self._pattern.sub(swap, _norm(instruction))
        if rng.random() < t.drop_article_probability:
            text = re.sub(r"(^|\s)the\s", r"\1", text, count=1)
        if t.prefixes and rng.random() < t.prefix_probability:
            text = f"{t.prefixes[int(rng.integers(len(t.prefixes)))]} {text}"
        if t.suffixes and rng.random() < t.suffix_probability:
            text = f"{text} {t.suffixes[int(rng.integers(len(t.suffixes)))]}"
        if rng.random() < t.typo_probability:
            text = self._typo(text)
        return text

    def _typo(self, text: str) -> str:
        words = text.split(" ")
        long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
        if not long_words:
            return text
        i = long_words[int(self.rng.integers(len(long_words)))]
        w = words[i]
        j = int(self.rng.integers(1, len(w) - 1))  # keep the first letter, as most typos do
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        return " ".join(words)



class ParaphrasePool:
    """``per_instruction`` rewrites of each instruction, made once; samples draw from them."""

    def __init__(self, table: ParaphraseTable, instructions, per_instruction: int, seed: int):
        maker = Paraphraser(table, np.random.default_rng(seed))
        self.probability = table.probability
        self.rewrites = {s: [maker(s) for _ in range(per_instruction)] for s in sorted(set(instructions))}

    def strings(self) -> list[str]:
        """Every string a batch can hold (recorded instructions and rewrites), in a fixed order."""
        return list(dict.fromkeys(s for k, v in self.rewrites.items() for s in (k, *v)))

    def sample(self, instructions: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for s in instructions:
            options = self.rewrites.get(s)
            take = bool(options) and rng.random() < self.probability
            out.append(options[int(rng.integers(len(options)))] if take else s)
        return out
