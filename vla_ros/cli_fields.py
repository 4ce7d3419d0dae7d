"""Command-line options that mirror a config dataclass's fields take their help and the default
they show from the field, so a default or its explanation is written once, in the dataclass.

A field's documentation is the comment on the lines right above it or at the end of its line
(the style of VLAConfig, TrainConfig, CollectConfig)::

    # Linear warmup steps, then cosine decay.     <- help
    warmup_steps: int = 100                       <- default shown: 100

`refuse_unknown_keys` is the other way in from outside, a JSON/dict of those fields: a key that is
no field is a typo, named in the error, never silently dropped.

Standard library only: the CLI builds its parsers without importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import tokenize
from functools import lru_cache


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its comment (the lines above it joined, else its end-of-line comment)."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    docs: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        row = next((i + 1 for i, ln in enumerate(lines) if ln.strip().startswith(f"{f.name}:")), None)
        if row is None:
            continue
        above, r = [], row - 1
        while r in comments and lines[r - 1].strip().startswith("#"):
            above.insert(0, comments[r])
            r -= 1
        docs[f.name] = " ".join(above) if above else comments.get(row, "")
    return docs


def field_default(cls: type, name: str):
    """The default of a dataclass field (dataclasses.MISSING when it has none)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_field_option(parser: argparse._ActionsContainer, cls: type, name: str, *flags: str,
                     help: str | None = None, **kwargs) -> argparse.Action:
    """``--name-with-dashes`` (or ``flags``) for field ``name`` of ``cls``.

    The option's value is None unless given (so that a caller can tell "not given" from "given
    the default", e.g. to keep a resumed run's value); the help text is the field's comment (or
    ``help``) and the field's default. ``type`` is the default's type unless given.
    """
    default = field_default(cls, name)
    text = help or field_docs(cls).get(name) or name.replace("_", " ")
    if default is not dataclasses.MISSING and not isinstance(default, bool):
        shown = "none" if default is None else (" ".join(map(str, default)) if isinstance(default, (list, tuple))
                                               else str(default))
        text = f"{text} (default: {shown})".replace("%", "%%")
    if "type" not in kwargs and "action" not in kwargs and isinstance(default, (int, float, str)) \
            and not isinstance(default, bool):
        kwargs["type"] = type(default)
    return parser.add_argument(*(flags or ("--" + name.replace("_", "-"),)), help=text, **kwargs)


def refuse_unknown_keys(cls, data: dict, what: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the keys of ``data`` that are not fields of dataclass ``cls`` (or,
    for a dict with no dataclass behind it, not among the names ``cls`` lists)."""
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise error(f"unknown {what} key(s) {unknown}; valid keys are {sorted(names)}")
