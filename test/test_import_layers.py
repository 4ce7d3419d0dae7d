"""The package's layers hold: read from the source's imports (every import statement, also
those inside functions), not from what a test happens to load.

Bottom-up: share and cli_fields (standard library); imaging, sim and robots (numpy, OpenCV,
the config/robots files) -> model (torch) -> data -> training, evaluation; runtime (the model served to the control loop) sits on model; ros (the only
layer that imports rclpy or ROS interfaces) on everything below it; cli on top.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vla_ros"

# Which layers each layer may import (its own modules always).
ALLOWED: dict[str, set[str]] = {
    "share": set(),
    "imaging": {"share"},
    "sim": {"share"},
    "robots": {"share"},
    "model": {"share", "imaging"},
    "data": {"share", "imaging", "sim", "model"},
    "training": {"share", "imaging", "model", "data"},
    "evaluation": {"share", "imaging", "sim", "model", "data"},
    "runtime": {"share", "imaging", "model"},
    "ros": {"share", "imaging", "sim", "model", "data", "evaluation", "runtime", "interfaces", "robots"},
    "cli": {"share", "robots", "imaging", "sim", "model", "data", "training", "evaluation", "runtime", "ros"},
}
# The ROS client library and interface packages: only the ros layer uses them.
ROS_MODULES = ("rclpy", "rcl_interfaces", "rosidl_runtime_py", "launch", "launch_ros", "lifecycle_msgs",
               "std_msgs", "std_srvs", "sensor_msgs", "geometry_msgs", "trajectory_msgs", "control_msgs",
               "builtin_interfaces", "diagnostic_msgs", "rosgraph_msgs", "action_msgs", "unique_identifier_msgs")
# Standard-library-only modules at the bottom (vla_ros/__init__.py: the version).
BASE = ("share", "cli_fields")
# vla_ros.msg / .srv / .action are generated ROS interfaces (rosidl), not Python source.
INTERFACES = ("msg", "srv", "action")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "share"
    if parts[1] in INTERFACES:
        return "interfaces"
    return parts[1]


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))
            # `from vla_ros.x import y` may import the module vla_ros.x.y
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names
                      if f"{name}.{alias.name}" in MODULES]
    return found


MODULES = modules()


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({layer_of(m) for m in MODULES} - set(ALLOWED))
    assert not unknown, f"vla_ros subpackages {unknown} have no layer in ALLOWED: place them"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    path, own = MODULES[module], layer_of(module)
    bad = []
    for line, name in imports_of(module, path):
        top = name.split(".")[0]
        if top in ROS_MODULES and own != "ros":
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} (only vla_ros/ros/ uses ROS)")
        if top != "vla_ros" or name == "vla_ros":
            continue
        target = layer_of(name)
        if target != own and target not in ALLOWED[own]:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}: layer {own} may not use {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph = {m: {n for _, n in imports_of(m, p) if n in MODULES and n != m} for m, p in MODULES.items()}
    # A package's __init__ re-exporting its modules is not a cycle through them.
    for m in graph:
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("from .b import c\n\ndef f():\n    from ..runtime import images\n    import rclpy\n")
    names = {n for _, n in imports_of("vla_ros.model.mod", src)}
    assert {"vla_ros.model.b", "vla_ros.runtime", "rclpy"} <= names


def test_readme_layout_names_every_layer_and_top_level_folder():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## Benchmarks")]
    entries = [p.name for p in PACKAGE.iterdir() if not p.name.startswith("_") and (p.suffix == ".py" or p.is_dir())]
    missing = [f"vla_ros/{e}" for e in sorted(entries) if f"vla_ros/{e}" not in layout]
    layers = {layer_of(m) for m in MODULES} - {"share", "interfaces"}
    missing += [f"layer {n}" for n in sorted(layers) if f"vla_ros/{n}" not in layout]
    tracked = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {
        "build", "install", "log", "data", "eval_closed_loop"}  # outputs, not sources
    missing += [d for d in sorted(tracked) if f"{d}/" not in layout]
    assert not missing, f"README's Layout section does not name {missing}"
