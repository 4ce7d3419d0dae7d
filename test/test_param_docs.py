"""README's parameter tables are the nodes' SPEC tables (python -m vla_ros.ros.param_docs writes them)."""
from pathlib import Path

from vla_ros.ros import param_docs
from vla_ros.ros.sim_robot_node import SPEC as SIM_SPEC

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_parameter_tables_agree_with_spec():
    text = README.read_text()
    diff = param_docs.first_difference(text, param_docs.render(text))
    assert diff is None, f"README.md's parameter tables differ from SPEC (run python -m vla_ros.ros.param_docs):\n{diff}"


def test_a_changed_default_is_named_as_the_first_difference(monkeypatch):
    text = README.read_text()
    monkeypatch.setitem(SIM_SPEC, "objects", (SIM_SPEC["objects"][0], 4, *SIM_SPEC["objects"][2:]))
    diff = param_docs.first_difference(text, param_docs.render(text))
    assert diff is not None and "-| `objects` | int | `3` |" in diff and "+| `objects` | int | `4` |" in diff


def test_check_exits_1_on_a_difference(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text().replace("| `physics_hz` | double | `240.0`", "| `physics_hz` | double | `24`"))
    assert param_docs.main(["--check", "--readme", str(readme)]) == 1
    assert "physics_hz" in capsys.readouterr().err
    assert param_docs.main(["--readme", str(readme)]) == 0
    assert param_docs.main(["--check", "--readme", str(readme)]) == 0
