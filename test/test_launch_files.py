"""Launch files are checked statically here, where `launch`/`launch_ros` cannot be installed.

Each file must be valid Python, start only executables this package installs, and declare
every argument with a default and a full-sentence description.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
EXECUTABLES = {line.split("=")[0].strip() for line in (ROOT / "scripts" / "executables.txt").read_text().splitlines()
               if "=" in line and not line.startswith("#")}


def test_there_are_launch_files():
    assert LAUNCH_FILES


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_nodes_name_installed_executables(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") in ("Node", "LifecycleNode")]
    assert nodes, f"{path.name} starts no node"
    for call in nodes:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("package"), ast.Constant) and kw["package"].value == "vla_ros"
        assert kw["executable"].value in EXECUTABLES, f"{path.name}: {kw['executable'].value} is not installed"
    assert "generate_launch_description" in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_arguments_have_defaults_and_sentences(path):
    tree = ast.parse(path.read_text())
    arguments = next((n.value for n in tree.body if isinstance(n, ast.Assign)
                      and getattr(n.targets[0], "id", "") == "ARGUMENTS"), None)
    assert arguments is not None, f"{path.name} keeps its arguments in an ARGUMENTS table"
    for name, default, text in ast.literal_eval(arguments):
        assert isinstance(default, str), name
        assert text[0].isupper() and text.endswith("."), f"{name}: description should be a sentence: {text!r}"


def test_robot_parameter_files_referenced_by_default_exist():
    for name in ("sim_panda",):
        assert (ROOT / "config" / "robots" / f"{name}.yaml").is_file()
