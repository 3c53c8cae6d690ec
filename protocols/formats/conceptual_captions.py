"""`conceptual_captions`: Conceptual Captions as ZSCL's `gather_cc.py` leaves it: a tab-separated file with the
header `title<TAB>filepath` (`Validation_GCC-1.1.0-Validation_output.csv`), one downloaded image per row, its
path relative to the file's folder (Thunderbeee/ZSCL at b96e714, `mtil/gather_cc.py`; read by
`mtil/src/datasets/cc.py` and `cil/continual_clip/cc.py`, `CsvDataset(..., img_key="filepath",
caption_key="title", sep="\\t")`).

Spec keys: `list` (the file). Rows are read as ZSCL reads them (pandas, tab-separated), in file order; every
row is one image with its caption (ZSCL's reference images and sentences on class-incremental CIFAR-100 and
TinyImageNet; its reference sentences on MTIL).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import CaptionedImages, FileReader, ImageSources

from . import Format, Spec, missing, register_format, resolve

HOW = ("Conceptual Captions' validation split as ZSCL prepares it (mtil/datasets.md): download "
       "Validation_GCC-1.1.0-Validation.tsv from ai.google.com/research/ConceptualCaptions/download, then "
       "`python gather_cc.py Validation_GCC-1.1.0-Validation.tsv` (ZSCL's mtil/gather_cc.py) writes the images "
       "and Validation_GCC-1.1.0-Validation_output.csv")
COLUMNS = ("title", "filepath")


def read_rows(path: Path) -> List[List[str]]:
    """[caption, image path] per row, as ZSCL's CsvDataset reads the file (pandas, sep='\\t')."""
    import pandas as pd

    if not path.is_file():
        raise missing("Conceptual Captions file", path, HOW)
    frame = pd.read_csv(path, sep="\t")
    absent = [c for c in COLUMNS if c not in frame.columns]
    if absent:
        raise ClipbenchError(f"{path}: needs the tab-separated columns {', '.join(COLUMNS)} (gather_cc.py's header); "
                             f"missing {', '.join(absent)}")
    return [[str(t), str(f)] for t, f in zip(frame["title"].tolist(), frame["filepath"].tolist())]


def captioned(spec: Spec, data_root: Optional[str]) -> CaptionedImages:
    path = resolve(data_root, spec["list"])
    rows = read_rows(path)
    sources = ImageSources(FileReader(), [path.parent / image for _, image in rows])
    return CaptionedImages(sources, [caption for caption, _ in rows], torch.arange(len(rows)))


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    """The file and every image it names."""
    path = resolve(data_root, spec["list"])
    return [path] + ([path.parent / image for _, image in read_rows(path)] if path.is_file() else [])


register_format(Format("conceptual_captions", HOW, ("list",), captioned=captioned, read_paths=read_paths))
