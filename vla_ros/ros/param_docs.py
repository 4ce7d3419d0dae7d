"""README's parameter tables, written from each node's SPEC.

    python -m vla_ros.ros.param_docs            # rewrite the tables in README.md
    python -m vla_ros.ros.param_docs --check    # exit 1 naming the first difference

Each table sits between `<!-- params:<node> -->` and `<!-- /params:<node> -->` in README.md.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from pathlib import Path

from vla_ros.ros.params import markdown

# node -> the module holding its SPEC
NODES = {
    "policy_node": "vla_ros.ros.policy_params",
    "sim_robot_node": "vla_ros.ros.sim_robot_node",
    "recorder_node": "vla_ros.ros.recorder_node",
    "player_node": "vla_ros.ros.player_node",
}
README = Path(__file__).resolve().parents[2] / "README.md"


def _block(node: str) -> re.Pattern:
    return re.compile(rf"(<!-- params:{node} -->\n)(.*?)(<!-- /params:{node} -->)", re.S)


def render(text: str) -> str:
    """text with every node's table between its markers replaced by the one made from its SPEC;
    ValueError when a node's markers are missing."""
    for node, module in NODES.items():
        table = markdown(importlib.import_module(module).SPEC)
        text, n = _block(node).subn(lambda m, table=table: m.group(1) + table + m.group(3), text)
        if n != 1:
            raise ValueError(f"README.md has {n} blocks <!-- params:{node} --> ... <!-- /params:{node} -->; "
                             "expected one")
    return text


def first_difference(old: str, new: str) -> str | None:
    """The first differing line of two texts, said as a unified-diff hunk; None when equal."""
    if old == new:
        return None
    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), "README.md", "from SPEC", n=0, lineterm="")
    lines = list(diff)
    return "\n".join(lines[:6])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    old = args.readme.read_text()
    new = render(old)
    diff = first_difference(old, new)
    if args.check:
        if diff:
            print(f"{args.readme}: parameter tables differ from SPEC (python -m vla_ros.ros.param_docs "
                  f"rewrites them):\n{diff}", file=sys.stderr)
            return 1
        return 0
    if diff:
        args.readme.write_text(new)
        print(f"{args.readme}: parameter tables written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
