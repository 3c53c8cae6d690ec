"""How an image becomes a model's uint8 input: the PIL stages of the model's own evaluation transform.

For an open_clip model that is its `preprocess_val` (open_clip's `image_transform_v2` built from the
model's `visual.preprocess_cfg`) without the last two stages: everything up to `MaybeToTensor` and
`Normalize` (resize by the config's rule and interpolation, centre crop or pad, convert to RGB, in
that order and on the image's own PIL mode). Those two stages are a per-pixel affine map that
`to_model_input` applies to uint8 batches later, so decoding once to uint8 gives, bit for bit, the
images open_clip's own transform would produce (tested on every PIL mode of the Debian packages).

The mini model keeps its own documented preprocessing (`clipbench.mini_model.to_square_rgb`).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Tuple

import numpy as np

# Bump when the uint8 an image decodes to could change for the same model (it enters run ids and caches).
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class Preprocess:
    """A model's image preparation up to uint8 pixels: `preprocess(pil_image) -> uint8 [3, H, W]`.

    `kind` is `open_clip` (the model's `preprocess_val`, parameters from its `preprocess_cfg`) or
    `square_white` (the mini model's: alpha on white, padded square, bicubic resize).
    """

    kind: str
    size: Tuple[int, int]
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill_color: int = 0
    _stages: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def identity(self) -> Dict[str, Any]:
        """What the decoded pixels depend on: for run ids, caches and fingerprints."""
        out = {k: v for k, v in asdict(self).items() if k != "_stages"}
        out["size"] = list(self.size)
        out["version"] = PREPROCESS_VERSION
        return out

    def _pil_stages(self) -> Callable:
        if "pil" not in self._stages:
            self._stages["pil"] = open_clip_pil_stages(self)
        return self._stages["pil"]

    def prepare(self) -> None:
        """Build the transform now (it imports open_clip): before forking decoding workers, so each
        inherits it instead of importing open_clip itself (seconds per worker)."""
        if self.kind == "open_clip":
            self._pil_stages()

    def __call__(self, img) -> np.ndarray:
        if self.kind == "square_white":
            from .mini_model import to_square_rgb

            return to_square_rgb(img, self.size[0])
        with warnings.catch_warnings():
            # PIL's advice for palette images with transparency: the model's own transform does the same
            # conversion, so it is what the model sees, and nothing a user should act on
            warnings.filterwarnings("ignore", message="Palette images with Transparency")
            out = self._pil_stages()(img)
        return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()


def from_open_clip_cfg(cfg: Dict[str, Any]) -> Preprocess:
    """The Preprocess of an open_clip model's `visual.preprocess_cfg`."""
    size = cfg.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    return Preprocess("open_clip", size, cfg.get("resize_mode") or "shortest", cfg.get("interpolation") or "bicubic",
                      int(cfg.get("fill_color", 0) or 0))


def open_clip_pil_stages(pre: Preprocess) -> Callable:
    """open_clip's eval transform for these parameters, stopped before its tensor stages."""
    from open_clip.transform import MaybeToTensor, image_transform
    from torchvision.transforms import Compose, Normalize

    full = image_transform(pre.size, is_train=False, resize_mode=pre.resize_mode, interpolation=pre.interpolation,
                           fill_color=pre.fill_color)
    stages = list(full.transforms)
    if not (isinstance(stages[-1], Normalize) and isinstance(stages[-2], MaybeToTensor)):
        # open_clip changed its transform: refuse rather than prepare images some other way
        raise RuntimeError(f"open_clip's eval transform no longer ends with ToTensor, Normalize: {full}")
    return Compose(stages[:-2])

