"""CLI options that mirror a config dataclass take their help and shown default from the field."""
from __future__ import annotations

import argparse
import dataclasses

from vla_ros.cli_fields import add_field_option, field_docs
from vla_ros.data.collect import CollectConfig
from vla_ros.training import TrainConfig
from vla_ros.training.cli import _TRAIN_ARG_FIELDS, add_train_arguments


@dataclasses.dataclass
class Example:
    # Two comment lines
    # above the field.
    above: int = 3
    trailing: float = 0.5  # at the end of the line
    names: list = dataclasses.field(default_factory=lambda: ["a", "b"])


def test_docs_come_from_comments_above_or_trailing():
    docs = field_docs(Example)
    assert docs == {"above": "Two comment lines above the field.", "trailing": "at the end of the line", "names": ""}
    p = argparse.ArgumentParser()
    add_field_option(p, Example, "above")
    add_field_option(p, Example, "names", nargs="+")
    helps = {a.dest: a.help for a in p._actions}
    assert helps["above"] == "Two comment lines above the field. (default: 3)"
    assert helps["names"] == "names (default: a b)"
    args = p.parse_args([])
    assert args.above is None  # not given: the caller keeps the dataclass's (or a resumed run's) value
    assert p.parse_args(["--above", "7"]).above == 7


def test_train_and_collect_options_show_the_dataclass_defaults():
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    helps = {a.dest: a.help for a in p._actions}
    defaults = TrainConfig()
    for name in _TRAIN_ARG_FIELDS:
        if name != "warmup_steps":  # its default (None) is resolved in __post_init__
            assert helps[name].endswith(f"(default: {getattr(defaults, name)})"), (name, helps[name])
        assert field_docs(TrainConfig)[name], f"TrainConfig.{name} has no comment"
    assert all(field_docs(CollectConfig)[f.name] for f in dataclasses.fields(CollectConfig))
