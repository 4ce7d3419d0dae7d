"""Launch files are checked statically here, where `launch`/`launch_ros` cannot be installed.

Each file must be valid Python, start only executables this package installs, and declare
every argument with a default and a full-sentence description. A robot's launch file only names
the robot for the shared launch function (vla_ros/ros/launch_policy.py), checked as a launch file too.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
SHARED = ROOT / "vla_ros" / "ros" / "launch_policy.py"
SHARED_CALL = "robot_launch_description"


def robot_named(path):
    """The robot a launch file names for the shared launch function (None: it calls it for the
    robot:= argument, or does not call it)."""
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == SHARED_CALL:
            return call.args[0].value if call.args else None
    return None


def calls_shared(path):
    return f"{SHARED_CALL}(" in path.read_text() and path != SHARED
# Packages a launch file may use besides vla_ros (named in its docstring as prerequisites).
OTHER_PACKAGES = {"ros_gz_sim", "ros_gz_bridge", "controller_manager", "robot_state_publisher"}
EXECUTABLES = {line.split("=")[0].strip() for line in (ROOT / "scripts" / "executables.txt").read_text().splitlines()
               if "=" in line and not line.startswith("#")}


def test_there_are_launch_files():
    assert LAUNCH_FILES


@pytest.mark.parametrize("path", [*LAUNCH_FILES, SHARED], ids=lambda p: p.name)
def test_launch_file_nodes_name_installed_executables(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") in ("Node", "LifecycleNode")]
    included = [c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and str(c.value).endswith(".launch.py")]
    assert nodes or included or calls_shared(path), f"{path.name} starts no node and includes no launch file"
    for name in included:
        if name == "gz_sim.launch.py":  # ros_gz_sim's, a documented prerequisite
            continue
        assert (ROOT / "launch" / name).is_file(), f"{path.name} includes missing {name}"
    for call in nodes:
        kw = {k.arg: k.value for k in call.keywords}
        package, exe = kw["package"].value, kw["executable"].value
        if package == "vla_ros":
            assert exe in EXECUTABLES, f"{path.name}: {exe} is not installed by vla_ros"
        else:  # other packages' executables, documented as prerequisites in the launch file
            assert package in OTHER_PACKAGES and package in path.read_text().split('"""')[1], (path.name, package)
    if path != SHARED:
        assert "generate_launch_description" in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}


@pytest.mark.parametrize("path", [*LAUNCH_FILES, SHARED], ids=lambda p: p.name)
def test_launch_arguments_have_defaults_and_sentences(path):
    if calls_shared(path):
        return   # its arguments are the shared module's
    tree = ast.parse(path.read_text())
    arguments = next((n.value for n in tree.body if isinstance(n, ast.Assign)
                      and getattr(n.targets[0], "id", "") == "ARGUMENTS"), None)
    assert arguments is not None, f"{path.name} keeps its arguments in an ARGUMENTS table"
    for name, default, text in ast.literal_eval(arguments):
        assert isinstance(default, str), name
        assert text[0].isupper() and text.endswith("."), f"{name}: description should be a sentence: {text!r}"


ROBOT_LAUNCH_FILES = [p for p in [*LAUNCH_FILES, SHARED] if '("robot",' in p.read_text() or robot_named(p)]


@pytest.mark.parametrize("path", ROBOT_LAUNCH_FILES, ids=lambda p: p.name)
def test_robot_parameter_file_named_by_default_exists(path):
    robot = robot_named(path)
    if robot is None:
        arguments = next(n.value for n in ast.parse(path.read_text()).body
                         if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ARGUMENTS")
        robot = {name: default for name, default, _ in ast.literal_eval(arguments)}.get("robot")
    assert robot and (ROOT / "config" / "robots" / f"{robot}.yaml").is_file(), robot


def test_a_robot_launch_file_is_a_few_lines():
    """Adding a robot is its YAML plus a launch file that names it: no arguments or nodes of its own."""
    robots = [p for p in LAUNCH_FILES if robot_named(p)]
    assert len(robots) >= 4
    for path in robots:
        code = [ln for ln in path.read_text().split('"""')[2].splitlines() if ln.strip()]
        assert len(code) <= 4, (path.name, code)


ROBOTS = sorted(p.stem for p in (ROOT / "config" / "robots").glob("*.yaml"))


@pytest.mark.parametrize("robot", ROBOTS)
def test_node_configures_with_each_robot_parameters_file_in_dry_run(robot, tmp_path):
    """The parameters file passes the node's own validation: start it, see it configure."""
    from ros_testing import executable, ros_process, wait_for

    args = ["--ros-args", "--params-file", str(ROOT / "config" / "robots" / f"{robot}.yaml"),
            "-p", "autostart:=true", "-p", "dry_run:=true"]
    with ros_process(executable("policy_node", *args), tmp_path / f"{robot}.log") as proc:
        wait_for(lambda: "active (dry run)" in proc.output(), what=f"{robot} configured and active", process=proc)
        assert "configure failed" not in proc.output()


@pytest.mark.parametrize("path", [*LAUNCH_FILES, SHARED], ids=lambda p: p.name)
def test_activation_handlers_fire_only_after_configuring(path):
    """An OnStateTransition that activates on reaching "inactive" must also name start_state
    "configuring": without it, every `ros2 lifecycle set ... deactivate` re-activated the node
    (active -> deactivating -> inactive matched too; found with the real launch_ros 0.26.6)."""
    tree = ast.parse(path.read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "OnStateTransition":
            kw = {k.arg: k.value for k in call.keywords}
            if getattr(kw.get("goal_state"), "value", None) == "inactive":
                assert getattr(kw.get("start_state"), "value", None) == "configuring", path.name
