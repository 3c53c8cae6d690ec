"""`clipbench new protocol`: a checked protocol file for a user's ImageFolder and captions CSV."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from clipbench.errors import ClipbenchError
from clipbench.protocols import catalog
from clipbench.protocols.catalog import load_protocol_file
from clipbench.protocols.new_protocol import experience_increments, new_protocol
from helpers import run_cli
from real_images import OPENCLIPART

CLASSES = {"bird": "animals/birds", "flower": "plants/flowers", "fruit": "food/fruit"}


def clipart_folder(root: Path, per_class: int = 4) -> Path:
    """<root>/clipart/<class>/*.png: the smallest real clip-art files of three openclipart-png folders."""
    for name, folder in CLASSES.items():
        files = sorted((OPENCLIPART / folder).glob("*.png"), key=lambda p: (p.stat().st_size, p.name))[:per_class]
        assert len(files) == per_class, f"openclipart-png lacks {folder}"
        (root / "clipart" / name).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, root / "clipart" / name / f.name)
    return root / "clipart"


def captions_csv(root: Path, n: int = 8) -> Path:
    """<root>/captions/captions.csv: real clip art of buildings captioned with their titles (file names)."""
    folder = root / "captions"
    folder.mkdir(parents=True)
    rows = []
    for f in sorted((OPENCLIPART / "buildings").rglob("*.png"), key=lambda p: (p.stat().st_size, p.name))[:n]:
        shutil.copy2(f, folder / f.name)
        rows.append((f.name, "a drawing of a " + f.stem.replace("_", " ").replace("-", " ")))
    with open(folder / "captions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return folder / "captions.csv"


def test_experience_split():
    assert experience_increments(3) == [1, 1, 1]
    assert experience_increments(10) == [2, 2, 2, 2, 2]
    assert experience_increments(12) == [3, 3, 2, 2, 2]
    assert sum(experience_increments(101)) == 101


def test_writes_a_protocol_that_builds_the_folder_and_captions(tmp_path):
    images, captions = clipart_folder(tmp_path), captions_csv(tmp_path)
    path = new_protocol("my_clipart", str(images), str(captions), str(tmp_path / "out" / "p.yaml"))
    proto = load_protocol_file(path)
    assert (proto.name, proto.builder, proto.kind) == ("my_clipart", "datasets", "class_incremental")
    streams = proto.build(None, 0)
    assert streams.class_names == ["bird", "flower", "fruit"] and streams.n_experiences == 3
    assert sum(len(t) for t in streams.train) + sum(len(t) for t in streams.test) == 12
    assert all(len(t) == 1 for t in streams.test)  # 20% of 4 images per class
    assert len(streams.zeroshot_sets["my_clipart"].data) == 12
    assert len(streams.retrieval_sets["my_clipart_captions"].captions) == 8
    with pytest.raises(ClipbenchError, match="exists"):
        new_protocol("my_clipart", str(images), str(captions), str(path))


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "is not an ImageFolder \\(no class sub-folders with images\\)"),
    (lambda root: [root.mkdir(), shutil.copy2(next(OPENCLIPART.rglob("*.png")), root / "a.png")],
     "is not an ImageFolder \\(1 image\\(s\\) directly inside it\\)"),
    (lambda root: None, "no such folder"),
])
def test_refuses_what_is_not_an_image_folder(tmp_path, make, message):
    make(tmp_path / "imgs")
    with pytest.raises(ClipbenchError, match=message):
        new_protocol("mine", str(tmp_path / "imgs"), None, str(tmp_path / "p.yaml"))
    assert not (tmp_path / "p.yaml").exists()


def test_refuses_small_classes_bad_captions_and_taken_names(tmp_path, capsys):
    images = clipart_folder(tmp_path, per_class=2)
    with pytest.raises(ClipbenchError, match="fewer than 3 images"):
        new_protocol("mine", str(images), None, str(tmp_path / "p.yaml"))
    shutil.rmtree(images.parent)
    images = clipart_folder(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\na.png,a bird\n")
    with pytest.raises(ClipbenchError, match="needs the header image,caption"):
        new_protocol("mine", str(images), str(bad), str(tmp_path / "p.yaml"))
    bad.write_text("image,caption\nmissing.png,a bird\n")
    with pytest.raises(ClipbenchError, match="1 image\\(s\\) not found beside it, e.g. missing.png"):
        new_protocol("mine", str(images), str(bad), str(tmp_path / "p.yaml"))
    assert run_cli("new", "protocol", "tiny_shapes", "--images", images, "--out", tmp_path / "p.yaml") == 2
    assert "is taken" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()
