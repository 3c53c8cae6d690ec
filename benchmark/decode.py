"""Decoding a protocol's images for a model: `ImageSources` -> uint8 tensors, with the model's preprocessing.

Builders list image files (or raw pixel arrays) without decoding them; the runner calls
`decode_streams` once the model is known, so every image is prepared by the model's own
preprocessing (`clipbench.preprocess`). Every image of every set is decoded before any training:
files that cannot be decoded (over PIL's pixel limit, truncated, empty, not an image) stop the run
with one error naming each of them.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np
import torch
from tqdm import tqdm

from clipbench.protocols.data import CaptionedImages, ImageSources, LabelledImages, Streams

from .errors import ClipbenchError
from .preprocess import Preprocess

Failure = Tuple[str, str]  # (file as the user finds it, what went wrong)


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())  # one line, whatever PIL printed
    return f"{type(err).__name__}: {text[:160]}"


def decode(sources: ImageSources, preprocess: Preprocess, desc: str = "decode", progress: bool = False,
           failures: List[Failure] | None = None) -> torch.Tensor:
    """uint8 [N, 3, H, W] of `sources` prepared by `preprocess`. An image that cannot be decoded is
    recorded in `failures` (its slot left black) when a list is given, else raises at once."""
    from PIL import Image

    height, width = preprocess.size
    out = np.zeros((len(sources), 3, height, width), dtype=np.uint8)
    for k in tqdm(range(len(sources)), desc=desc, disable=not progress, leave=False, unit="img"):
        try:
            with sources.open(k) as img:
                out[k] = preprocess(img)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            # OSError covers truncated files, empty files and non-images (PIL's UnidentifiedImageError)
            if failures is None:
                raise ClipbenchError(f"cannot decode image {sources.describe(k)}: {_reason(err)}") from None
            failures.append((sources.describe(k), _reason(err)))
    return torch.from_numpy(out)


def _image_sets(streams: Streams) -> Iterator[Tuple[str, object]]:
    """(name, LabelledImages or CaptionedImages) of every image set in the streams."""
    for k, data in enumerate(streams.train):
        yield f"train {k}", data
    for k, data in enumerate(streams.test):
        yield f"test {k}", data
    for name, zs in streams.zeroshot_sets.items():
        yield f"zero-shot {name}", zs.data
    for name, cap in streams.retrieval_sets.items():
        yield f"retrieval {name}", cap
    if streams.reference is not None:
        yield "reference", streams.reference


def decode_streams(streams: Streams, preprocess: Preprocess, progress: bool = False) -> Streams:
    """Decode, in place, every `ImageSources` of the streams; sets already decoded are left as they are.

    Raises one ClipbenchError naming every file that cannot be decoded, before anything trains.
    """
    failures: List[Failure] = []
    for name, data in _image_sets(streams):
        if isinstance(data, (LabelledImages, CaptionedImages)) and isinstance(data.images, ImageSources):
            data.images = decode(data.images, preprocess, f"decode {name}", progress, failures)
    if failures:
        unique = list(dict.fromkeys(failures))
        listed = "; ".join(f"{path} ({why})" for path, why in unique)
        raise ClipbenchError(
            f"{len(unique)} image(s) cannot be decoded: {listed}. Remove or repair these files (an image over PIL's "
            "pixel limit can be shrunk, e.g. with ImageMagick `mogrify -resize 8000x8000\\> FILE`), then run again")
    return streams
