"""Every registered method, new ones included, runs on the tiny suite without anyone writing a test."""

import dataclasses
import importlib.util
import sys

import pytest

from clipbench.methods.base import METHODS, Method, MethodConfig
from helpers import SMALL, method_settings, records, run_cli


@pytest.mark.parametrize("name", METHODS.names())
def test_method_declares_its_contract(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.name == name and isinstance(cls.version, int) and cls.version >= 1
    assert issubclass(cls.Config, MethodConfig) and dataclasses.is_dataclass(cls.Config)
    cls.Config()  # every hyperparameter has a default
    assert (cls.__doc__ or "").strip(), f"{name} needs a docstring citing its paper"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_completes_on_tiny_suite(name, results, tmp_path):
    assert run_cli("run", "--method", name, "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", *SMALL, *method_settings(name, tmp_path)) == 0
    [rec] = records(results).values()
    assert rec["status"] == "complete", rec.get("error")
    assert len(rec["raw"]["acc_matrix"]) == 4 and "last" in rec["metrics"]


def test_scaffold_from_new_method_runs(tmp_path, results, capsys):
    assert run_cli("new", "method", "my_pull", "--dir", tmp_path) == 0
    path = tmp_path / "my_pull.py"
    assert "wrote" in capsys.readouterr().out and path.is_file()
    spec = importlib.util.spec_from_file_location("my_pull_scaffold", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_pull_scaffold"] = module
    try:
        spec.loader.exec_module(module)  # registers the method, as discovery would
        assert run_cli("run", "--method", "my_pull", "--protocol", "tiny_shapes", "--suite", "tiny",
                       "--results", results, "--quiet", "--set", *SMALL, "methods.my_pull.alpha=0.5") == 0
        [rec] = records(results).values()
        assert rec["status"] == "complete" and rec["spec"]["method_config"]["alpha"] == 0.5
    finally:
        METHODS._items.pop("my_pull", None)
        sys.modules.pop("my_pull_scaffold", None)


def test_new_method_rejects_bad_names(tmp_path, capsys):
    assert run_cli("new", "method", "Bad-Name", "--dir", tmp_path) == 2
    assert "snake_case" in capsys.readouterr().err


def test_the_adding_a_method_example_runs(results):
    """The method printed in docs/adding-a-method.md registers and runs as shown."""
    import re
    import types
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "adding-a-method.md").read_text()
    section = page.split("# Adding a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("docs_adding_a_method")
    try:
        exec(compile(code, "docs/adding-a-method.md", "exec"), module.__dict__)
        assert run_cli("run", "--method", "my_lwf", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                       "--quiet", "--set", *SMALL, "methods.my_lwf.alpha=2") == 0
        [rec] = records(results).values()
        assert rec["status"] == "complete" and rec["spec"]["method_config"]["alpha"] == 2
    finally:
        METHODS._items.pop("my_lwf", None)
