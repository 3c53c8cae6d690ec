"""uint8 image batches to a model's normalised float input: the one step between stored images and a model.

Lives beside model loading (`models.py`, `mini_model.py`): the size, mean and std it needs are the
loaded model's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def to_model_input(images: torch.Tensor, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float [B, 3, *size], resized in one batched call.

    Scaling by 1/255 and normalising are folded into one multiply and one add, in place (resizing
    is linear, so it may come first). `torch.addcmul` with a broadcast input was 25x slower here.
    `out`, a float32 tensor shaped like `images`, is written into when no resizing is needed: a
    batch loop reuses one buffer instead of allocating fresh memory (and faulting it in) per batch.
    """
    resize = tuple(images.shape[-2:]) != tuple(size)
    if out is not None and not resize:
        x = out.copy_(images)
    else:
        x = images.to(torch.float32, copy=True)  # a copy even of float input: it is changed in place below
    if resize:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    scale, shift = _affine(tuple(mean), tuple(std), x.dtype, x.device)
    return x.mul_(scale).add_(shift)


@lru_cache(maxsize=32)
def _affine(mean: Tuple[float, ...], std: Tuple[float, ...], dtype: torch.dtype,
            device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The per-channel multiply and add of `to_model_input`, made once per device: building them per
    batch on a GPU was a blocking host-to-device copy at every batch."""
    std_t = torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1) / std_t
    return scale, shift
