"""Decoding a protocol's images for a model: `ImageSources` -> uint8 tensors, with the model's preprocessing.

Builders list image files (or raw pixel arrays) without decoding them; the runner calls
`decode_streams` once the model is known, so every image is prepared by the model's own
preprocessing (`clipbench.preprocess`). Every image of every set is decoded before any training:
files that cannot be decoded (over PIL's pixel limit, truncated, empty, not an image) stop the run
with one error naming each of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from clipbench.streams import CaptionedImages, ImageSources, LabelledImages, Streams

from .errors import ClipbenchError
from .preprocess import Preprocess

if TYPE_CHECKING:
    from .image_store import ImageStore

Failure = Tuple[str, str]  # (file as the user finds it, what went wrong)


class UndecodableImages(ClipbenchError):
    """Images that cannot be decoded; the message names every file."""

    def __init__(self, failures: List[Failure]):
        self.failures = list(dict.fromkeys(failures))
        listed = "; ".join(f"{path} ({why})" for path, why in self.failures)
        super().__init__(
            f"{len(self.failures)} image(s) cannot be decoded: {listed}. Remove or repair these files (an image over "
            "PIL's pixel limit can be shrunk, e.g. with ImageMagick `mogrify -resize 8000x8000\\> FILE`), then run again")


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())  # one line, whatever PIL printed
    return f"{type(err).__name__}: {text[:160]}"


def decode_into(out: np.ndarray, sources: ImageSources, preprocess: Preprocess, indices: Iterable[int],
                failures: List[Failure]) -> None:
    """Write `preprocess(image k)` into `out[k]` for each k of `indices`; an image that cannot be decoded is
    added to `failures` (its slot left as it was)."""
    from PIL import Image

    for k in indices:
        try:
            with sources.open(k) as img:
                out[k] = preprocess(img)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            # OSError covers truncated files, empty files and non-images (PIL's UnidentifiedImageError)
            failures.append((sources.describe(k), _reason(err)))


def decode(sources: ImageSources, preprocess: Preprocess, desc: str = "decode", progress: bool = False) -> torch.Tensor:
    """uint8 [N, 3, H, W] of `sources` prepared by `preprocess`, in this process (no store); raises
    UndecodableImages, naming every file, if any image cannot be decoded."""
    out = np.zeros((len(sources), 3, *preprocess.size), dtype=np.uint8)
    failures: List[Failure] = []
    decode_into(out, sources, preprocess, tqdm(range(len(sources)), desc=desc, disable=not progress, leave=False,
                                               unit="img"), failures)
    if failures:
        raise UndecodableImages(failures)
    return torch.from_numpy(out)


def image_sets(streams: Streams) -> Iterator[Tuple[str, object]]:
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


def decode_streams(streams: Streams, preprocess: Preprocess, progress: bool = False, store: Optional["ImageStore"] = None
                   ) -> Streams:
    """Decode, in place, every `ImageSources` of the streams (through `store` when given, which decodes each
    set once per machine and hands back memory-mapped images); sets already decoded are left as they are.

    Raises one ClipbenchError naming every file that cannot be decoded, of every set, before anything trains;
    the sets the store decoded in this call are removed again (a refused run leaves nothing behind).
    """
    failures: List[Failure] = []
    mark = len(store.written) if store is not None else 0
    for name, data in image_sets(streams):
        if isinstance(data, (LabelledImages, CaptionedImages)) and isinstance(data.images, ImageSources):
            try:
                data.images = (store.get(data.images, preprocess, f"decode {name}") if store is not None
                               else decode(data.images, preprocess, f"decode {name}", progress))
            except UndecodableImages as err:
                failures += err.failures
    if failures:
        if store is not None:  # the refused run writes nothing: the sets it decoded go too
            store.remove(store.written[mark:])
        raise UndecodableImages(failures)
    return streams
