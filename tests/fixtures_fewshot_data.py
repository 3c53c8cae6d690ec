"""Small files in the on-disk layouts of CoOp's split JSON and of Tiny ImageNet (the X-TAIL, few-shot MTIL and
class-incremental TinyImageNet protocols read them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from fixtures_data import COLOURS, save_image


def write_coop_split(folder: Path, split_name: str, image_dir: str, classes: Sequence[str],
                     per_split: Dict[str, int]) -> Path:
    """`<folder>/<image_dir>/<class>/<k>.jpg` and `<folder>/<split_name>` listing them as CoOp does:
    {"train"|"val"|"test": [[<path under image_dir>, <label>, <class name>], ...]}; images of a class
    share a colour, and each split takes its own files. Returns the split file."""
    doc: Dict[str, List[list]] = {}
    k = 0
    for split, n in per_split.items():
        doc[split] = []
        for label, name in enumerate(classes):
            for _ in range(n):
                rel = f"{name.replace(' ', '_')}/img_{k:04d}.jpg"
                save_image(folder / image_dir / rel, COLOURS[label % len(COLOURS)], size=(12, 10))
                doc[split].append([rel, label, name])
                k += 1
    path = folder / split_name
    path.write_text(json.dumps(doc, indent=4))
    return path


def write_tinyimagenet(root: Path, wnids: Sequence[str], train_per_class: int = 2, val_per_class: int = 1,
                       words: Dict[str, str] | None = None) -> None:
    """Tiny ImageNet as its zip unpacks: wnids.txt (in the given, unsorted order), words.txt (with an extra
    WordNet entry not in wnids.txt), train/<wnid>/images/<wnid>_<k>.JPEG and <wnid>_boxes.txt,
    val/images/val_<k>.JPEG and val/val_annotations.txt (plus a line of a wnid outside wnids.txt)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    words = words or {w: f"thing {w}, other name" for w in wnids}
    (root / "words.txt").write_text("n00000001\tentity\n" + "".join(f"{w}\t{t}\n" for w, t in words.items()))
    for c, w in enumerate(wnids):
        folder = root / "train" / w
        for k in range(train_per_class):
            save_image(folder / "images" / f"{w}_{k}.JPEG", COLOURS[c % len(COLOURS)], size=(8, 8))
        (folder / f"{w}_boxes.txt").write_text("".join(f"{w}_{k}.JPEG\t0\t0\t7\t7\n" for k in range(train_per_class)))
    lines, k = [], 0
    for c, w in enumerate(wnids):
        for _ in range(val_per_class):
            save_image(root / "val" / "images" / f"val_{k}.JPEG", COLOURS[c % len(COLOURS)], size=(8, 8))
            lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t7\t7")
            k += 1
    save_image(root / "val" / "images" / f"val_{k}.JPEG", COLOURS[0], size=(8, 8))
    lines.append(f"val_{k}.JPEG\tn09999999\t0\t0\t7\t7")  # not one of wnids.txt: left out, as continuum does
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
