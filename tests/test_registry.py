import sys
import textwrap

import pytest

from clipbench.errors import ClipbenchError
from clipbench.registry import Registry


def test_builtin_methods_are_discovered():
    from clipbench.methods.base import METHODS

    assert {"zeroshot", "finetune"} <= set(METHODS.names())


def test_unknown_method_gives_did_you_mean_and_known_names():
    from clipbench.methods.base import METHODS

    with pytest.raises(ClipbenchError) as err:
        METHODS.get("finetun")
    msg = str(err.value)
    assert "Did you mean 'finetune'" in msg and "zeroshot" in msg


def test_discovery_is_lazy_and_duplicate_names_fail():
    reg = Registry("widget", None)
    assert reg._discovered is False
    reg.register("a", object)
    with pytest.raises(ClipbenchError, match="two widgets"):
        reg.register("a", int)
    assert reg.names() == ["a"]


def test_importing_clipbench_runs_no_discovery():
    import subprocess

    code = "import clipbench, clipbench.cli, sys; print('avalanche' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_third_party_method_registers_through_entry_point(tmp_path, monkeypatch):
    """A package that declares `clipbench.methods = mine = my_methods` is found on first use."""
    (tmp_path / "my_methods.py").write_text(textwrap.dedent('''
        from clipbench.methods.base import Method, register_method

        @register_method
        class Mine(Method):
            """A third-party method."""
            name = "third_party_mine"
    '''))
    dist = tmp_path / "my_methods-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-methods\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[clipbench.methods]\nmine = my_methods\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", "clipbench.methods", entry_point_group="clipbench.methods")
    import clipbench.methods.base as base

    monkeypatch.setattr(base, "METHODS", reg)
    assert "third_party_mine" in reg.names()
    sys.modules.pop("my_methods", None)
