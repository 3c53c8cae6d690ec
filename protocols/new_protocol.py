"""`clipbench new protocol NAME --images DIR [--captions CSV]`: a working protocol file for a user's own
ImageFolder (one sub-folder of images per class) and captions CSV (`image,caption`).

The folder is the target stream (a fixed 20% of each class is its test split, classes in folder-name
order, cut into at most five experiences of near-equal class counts) and, whole, a zero-shot held-out
set (the pretrained model's accuracy on the same classes, before and after each experience); the
captions file is a retrieval set. Paths are written absolute, so the file works from any folder.
Everything is checked before the file is written: the folder is an ImageFolder with at least
`MIN_PER_CLASS` images per class (class folders as runs read them: `formats.image_folder.class_folders`),
class names that give distinct prompts, and the CSV (UTF-8) has `image` and `caption` columns, a caption on
every row and image files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from clipbench.errors import ClipbenchError
from clipbench.streams import duplicate_classes_error, same_prompts

from .catalog import get_protocol, protocol_names
from .formats import IMAGE_SUFFIXES
from .formats.image_folder import class_folders, images_in
from .formats.lists import read_rows

MAX_EXPERIENCES = 5
MIN_PER_CLASS = 3  # a 20% test split keeps at least one image per class (round(3 x 0.2) = 1)
TEST_FRACTION = 0.2
TEMPLATES = ["a photo of a {c}.", "a picture of a {c}."]


def image_folder_classes(root: Path) -> Dict[str, int]:
    """Class folder -> image count; one line naming the problem when `root` is not an ImageFolder."""
    if not root.is_dir():
        raise ClipbenchError(f"--images {root}: no such folder; give a folder with one sub-folder of images per class")
    counts = {name: len(images_in(root / name)) for name in class_folders(root)}  # the classes a run reads
    loose = sum(1 for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(counts) < 2:
        what = f"{loose} image(s) directly inside it" if loose else "no class sub-folders with images"
        raise ClipbenchError(f"--images {root} is not an ImageFolder ({what}): put each class's images in a "
                             "sub-folder named after the class (<folder>/<class>/<image>.png), at least 2 classes")
    few = [k for k, v in counts.items() if v < MIN_PER_CLASS]
    if few:
        raise ClipbenchError(f"--images {root}: class folder(s) {', '.join(few)} hold fewer than {MIN_PER_CLASS} "
                             "images; add images or remove the folder")
    same = same_prompts(list(counts), [TEMPLATES] * len(counts))
    if same:
        raise ClipbenchError(duplicate_classes_error(f"--images {root}", same))
    return counts


def check_captions(path: Path) -> int:
    """The number of caption rows; one line naming the problem when the CSV cannot serve as a retrieval set."""
    if not path.is_file():
        raise ClipbenchError(f"--captions {path}: no such file; give a CSV with the header image,caption")
    try:
        rows = read_rows(path, "caption")  # as runs read it
    except ClipbenchError as err:
        raise ClipbenchError(f"--captions {err}") from None
    missing = [r["image"] for r in rows if not (path.parent / r["image"]).is_file()]
    if missing:
        raise ClipbenchError(f"--captions {path}: {len(missing)} image(s) not found beside it, e.g. {missing[0]} "
                             "(image paths are relative to the CSV's folder)")
    return len(rows)


def experience_increments(n_classes: int) -> List[int]:
    """At most five experiences of near-equal class counts (larger ones first)."""
    n = min(MAX_EXPERIENCES, n_classes)
    return [n_classes // n + (1 if k < n_classes % n else 0) for k in range(n)]


def protocol_text(name: str, images: Path, captions: Optional[Path]) -> str:
    """The protocol file's YAML text."""
    classes = image_folder_classes(images)
    increments = experience_increments(len(classes))
    params: Dict[str, object] = {
        "target": {"adapter": "image_folder", "root": str(images), "test_fraction": TEST_FRACTION},
        "increments": increments,
        "templates": list(TEMPLATES),
        "zeroshot": {name: {"adapter": "image_folder", "root": str(images), "split": "all", "templates": list(TEMPLATES)}},
    }
    headline = ["last", "avg", "bwt", "zs_retention"]
    if captions is not None:
        check_captions(captions)
        params["retrieval"] = {f"{name}_captions": {"adapter": "csv", "list": str(captions)}}
        headline += ["i2t_r1", "t2i_r1"]
    doc = {"name": name, "version": 1, "kind": "class_incremental", "builder": "datasets",
           "description": f"{images.name}: {len(classes)} classes in {len(increments)} experiences"
                          + (f"; retrieval on {captions.name}" if captions else ""),
           "headline": headline, "params": params}
    shown = ", ".join(n if n.isprintable() else repr(n) for n in classes)  # a comment line holds no line break
    header = (f"# Written by `clipbench new protocol {name}`: {len(classes)} classes ({shown}), "
              f"{sum(classes.values())} images.\n"
              "# Target: the folder, 20% of each class held out for testing, in experiences of `increments`\n"
              "# classes; zero-shot: the whole folder" + ("; retrieval: the captions CSV" if captions else "") +
              ". Edit freely;\n# bump `version` when you change what a run measures.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def new_protocol(name: str, images: str, captions: Optional[str], out: Optional[str]) -> Path:
    """Check the inputs, then write the protocol file (never over an existing file)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ClipbenchError(f"protocol name '{name}': use lower-case letters, digits and _ (e.g. my_clipart)")
    if name in protocol_names():
        raise ClipbenchError(f"protocol name '{name}' is taken by a protocol of the catalog "
                             f"({get_protocol(name).description}); choose another")
    path = Path(out or f"{name}.yaml").expanduser()
    if path.exists():
        raise ClipbenchError(f"{path} exists; choose another --out or remove it")
    text = protocol_text(name, Path(images).expanduser().resolve(),
                         Path(captions).expanduser().resolve() if captions else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
