"""The house: every file named for what it holds, no import circle, the model loader free of protocols,
and a new dataset format or builder being one new file (what docs/architecture.md, "Where things live", says)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"benchmark": "clipbench", "methods": "clipbench.methods", "protocols": "clipbench.protocols"}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = PACKAGES[folder].split(".") + list(rest)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> Set[str]:
    """Every clipbench module `path` imports, at module level or inside a function (not those imported
    only for type checkers, under `if TYPE_CHECKING:`)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clipbench")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("clipbench"):
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` imports module x
    return found


def _graph() -> Dict[str, Set[str]]:
    files = {_module_name(p): p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}


def _reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_circle_between_modules():
    graph = _graph()
    circles = sorted(m for m in graph if m in _reachable(graph, m))
    assert circles == []


def test_model_loader_imports_nothing_from_protocols():
    graph = _graph()
    for loader in ("clipbench.models", "clipbench.mini_model", "clipbench.model_input", "clipbench.checksums"):
        assert not {m for m in _reachable(graph, loader) | {loader} if m.startswith("clipbench.protocols")}, loader


def test_protocols_has_no_vague_module_names():
    names = {p.name for p in (ROOT / "protocols").iterdir()}
    assert not names & {"data.py", "datasets.py", "generic.py"}


def _extend_package(monkeypatch, registry, package, folder: Path) -> None:
    """Make `folder` part of `package` and let `registry` discover again, leaving the real one as it was."""
    # discover the real modules first: imported during the test, they would never register again after it
    registry.names()
    monkeypatch.setattr(package, "__path__", list(package.__path__) + [str(folder)])
    monkeypatch.setattr(registry, "_items", dict(registry._items))
    monkeypatch.setattr(registry, "_discovered", False)


def test_a_new_dataset_format_is_one_new_file(tmp_path, monkeypatch):
    """docs/suites.md's rule, by example: a file `parity_list.py` in the formats folder is usable by protocol files at once."""
    import clipbench.protocols.formats as formats
    from clipbench.protocols.builders.dataset_specs import load_labelled
    from fixtures_data import write_image_folder

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "parity_list.py").write_text(textwrap.dedent('''
        """Every image of a flat folder, labelled even or odd by its position."""
        import torch
        from clipbench.streams import FileReader, ImageSources, LabelledImages
        from clipbench.protocols.formats import Format, register_format, resolve

        def labelled(spec, split, data_root):
            files = sorted(p for p in resolve(data_root, spec["root"]).rglob("*.jpg"))
            labels = torch.tensor([k % 2 for k in range(len(files))])
            return LabelledImages(ImageSources(FileReader(), files), labels), ["even", "odd"]

        register_format(Format("parity_list", "any folder of JPEGs", ("root",), labelled=labelled))
    '''))
    _extend_package(monkeypatch, formats.FORMATS, formats, plugin)
    write_image_folder(tmp_path / "flat", ("a",), per_class=4)
    data, names = load_labelled({"adapter": "parity_list", "root": "flat"}, "train", str(tmp_path))
    assert names == ["even", "odd"] and data.labels.tolist() == [0, 1, 0, 1]


def test_a_new_builder_is_one_new_file(tmp_path, monkeypatch):
    import clipbench.protocols.builders as builders
    from clipbench.protocols import catalog

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "two_blobs.py").write_text(textwrap.dedent('''
        """Two classes of flat colour, one experience each."""
        import torch
        from clipbench.streams import LabelledImages, Streams
        from clipbench.protocols.catalog import register_builder

        @register_builder("two_blobs")
        def build(params, data_root, seed):
            def part(c):
                images = torch.full((4, 3, 8, 8), 200 * c, dtype=torch.uint8)
                return LabelledImages(images, torch.full((4,), c))
            return Streams(kind="class_incremental", class_names=["black", "white"], templates=["a {c} blob."],
                           train=[part(0), part(1)], test=[part(0), part(1)], experience_classes=[[0], [1]])
    '''))
    _extend_package(monkeypatch, catalog.BUILDERS, builders, plugin)
    (tmp_path / "blobs.yaml").write_text("name: blobs\nversion: 1\nkind: class_incremental\nbuilder: two_blobs\n")
    streams = catalog.load_protocol_file(tmp_path / "blobs.yaml").build(None, 0)
    assert streams.n_experiences == 2 and streams.class_names == ["black", "white"]


@pytest.mark.parametrize("folder", ["benchmark", "methods", "protocols"])
def test_every_module_has_a_docstring(folder):
    missing = [str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py")
               if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []
