import json
import os

import pytest

from clipbench.store import atomic_write_json


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "r" / "run.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["run.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"ok": True})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["run.json"]
