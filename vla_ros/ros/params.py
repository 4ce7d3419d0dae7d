"""Node parameters declared from one table per node, read into typed, frozen attributes.

A node's SPEC maps each parameter name to (type, default, description, extra), as
ros2_controllers' generate_parameter_library does with its YAML; extra may hold
range=(lo, hi), choices=(...) and live=True (the one kind of parameter that may change while
the node runs; every other one is read-only once declared). A default of None declares the
parameter with its type and no value. `declare` declares the table on a node, `read` returns
its values as nested frozen attributes (`p.control.rate` for "control.rate") or raises
`ParameterError` naming the parameter and its value; `markdown` writes the table for README.
"""
from __future__ import annotations

from dataclasses import fields, make_dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                               ParameterUninitializedException)
from rclpy.parameter import Parameter

Spec = dict[str, tuple[Parameter.Type, Any, str, dict]]
T = Parameter.Type
# What rclpy raises for a value of the wrong type or outside a declared range (--params-file, -p).
PARAM_ERRORS = (InvalidParameterTypeException, InvalidParameterValueException)
_PY_TYPES = {T.BOOL: bool, T.INTEGER: int, T.DOUBLE: float, T.STRING: str, T.BYTE_ARRAY: tuple,
             T.BOOL_ARRAY: tuple, T.INTEGER_ARRAY: tuple, T.DOUBLE_ARRAY: tuple, T.STRING_ARRAY: tuple}
_TYPE_NAMES = {T.BOOL: "bool", T.INTEGER: "int", T.DOUBLE: "double", T.STRING: "string", T.BYTE_ARRAY: "byte[]",
               T.BOOL_ARRAY: "bool[]", T.INTEGER_ARRAY: "int[]", T.DOUBLE_ARRAY: "double[]",
               T.STRING_ARRAY: "string[]"}


class ParameterError(ValueError):
    """An invalid parameter value; the message names the parameter."""


def descriptor(name: str, entry: tuple) -> ParameterDescriptor:
    ptype, _, text, extra = entry
    d = ParameterDescriptor(name=name, type=ptype.value, description=text, read_only=not extra.get("live", False))
    if "range" in extra:
        lo, hi = extra["range"]
        if ptype == T.INTEGER:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    if "choices" in extra:
        d.additional_constraints = "one of: " + ", ".join(extra["choices"])
    return d


def overrides(spec: Spec, given: dict[str, Any]) -> list[Parameter]:
    """Parameters for a node's parameter_overrides from plain values, typed by the table (a caller
    such as the vla-ros CLI needs no rclpy); a name the table lacks is a ParameterError."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown}; the node has {sorted(spec)}")
    return [Parameter(name, spec[name][0], list(v) if isinstance(v, tuple) else v) for name, v in given.items()]


def declare(node, spec: Spec) -> None:
    """Declare every parameter of the table on the node (--params-file and -p values override defaults)."""
    for name, entry in spec.items():
        ptype, default = entry[0], entry[1]
        node.declare_parameter(name, ptype if default is None else Parameter(name, ptype, default).value,
                               descriptor(name, entry))


def values(node, spec: Spec) -> dict[str, Any]:
    """The table's values by name, each within its range and choices; ParameterError names the first
    that is not. A parameter declared without a default and not set reads as [] (arrays) or None."""
    v = {}
    for name, (ptype, _, _, extra) in spec.items():
        try:
            value = node.get_parameter(name).value
        except ParameterUninitializedException:
            value = [] if _PY_TYPES[ptype] is tuple else None
        if "choices" in extra and value not in extra["choices"]:
            raise ParameterError(f"parameter '{name}' is {value!r}; expected one of {list(extra['choices'])}")
        if "range" in extra:
            lo, hi = extra["range"]
            if not (lo <= value <= hi):
                raise ParameterError(f"parameter '{name}' is {value!r}; expected a value in [{lo}, {hi}]")
        v[name] = value
    return v


def attributes_class(class_name: str, spec: Spec) -> type:
    """A frozen dataclass with one attribute per parameter, "a.b" nested as attribute b of a frozen
    dataclass in attribute a."""
    tree: dict = {}
    for name in spec:
        *groups, leaf = name.split(".")
        node = tree
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = name

    def build(cls_name: str, node: dict) -> type:
        attrs = [(key, build(cls_name + key.title().replace("_", ""), sub) if isinstance(sub, dict)
                  else _PY_TYPES[spec[sub][0]]) for key, sub in node.items()]
        cls = make_dataclass(cls_name, attrs, frozen=True)
        cls._names = node
        return cls

    return build(class_name, tree)


def freeze(cls: type, v: dict[str, Any]):
    """Values by parameter name -> an instance of attributes_class(); arrays become tuples."""
    def build(c: type):
        out = {}
        for f in fields(c):
            sub = c._names[f.name]
            if isinstance(sub, dict):
                out[f.name] = build(f.type)
            else:
                value = v[sub]
                out[f.name] = tuple(value) if f.type is tuple and value is not None else value
        return c(**out)

    return build(cls)


def read(node, spec: Spec, cls: type):
    """values() of the table, as an instance of cls (attributes_class of the same table)."""
    return freeze(cls, values(node, spec))


def _default_text(ptype, default) -> str:
    if default is None:
        return "(none)"
    if isinstance(default, str):
        return f'`"{default}"`' if default == "" else f"`{default}`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, (list, tuple)):
        return "`[" + ", ".join(_default_text(ptype, d).strip("`") for d in default) + "]`"
    if isinstance(default, float):
        text = f"{default:g}"
        return f"`{text if any(c in text for c in '.en') else text + '.0'}`"
    return f"`{default}`"


def markdown(spec: Spec) -> str:
    """The table as a Markdown table: name, type, default, range or choices, description."""
    lines = ["| parameter | type | default | range / choices | description |", "|---|---|---|---|---|"]
    for name, (ptype, default, text, extra) in spec.items():
        allowed = ""
        if "range" in extra:
            allowed = " .. ".join(str(x) if isinstance(x, int) else f"{x:g}" for x in extra["range"])
        elif "choices" in extra:
            allowed = ", ".join(extra["choices"])
        if extra.get("live"):
            allowed = (allowed + "; " if allowed else "") + "settable while running"
        lines.append(f"| `{name}` | {_TYPE_NAMES[ptype]} | {_default_text(ptype, default)} | {allowed} | "
                     f"{text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
