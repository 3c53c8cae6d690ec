"""Feeding uint8 image batches to a GPU as fast training loops do: each batch is gathered on the CPU straight
into page-locked (pinned) memory, copied to the device asynchronously (`non_blocking`), and converted to
normalised floats there (`model_input`), so the CPU prepares batch k+1 while the device computes batch k
and the bus carries 1 byte per pixel instead of 4.

Two pinned slots alternate; before a slot is refilled, the copy that last read it is waited for (a CUDA
event), never the whole device. On the CPU nothing changes: batches are the same tensors they always were
(a gather, or a slice of the memory-mapped images), with no extra copy.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

SLOTS = 2  # one batch in flight while the next is gathered


class DeviceFeeder:
    """Moves CPU batches of one dtype and trailing shape to `device` through alternating pinned slots."""

    def __init__(self, device: str | torch.device, batch_size: int, item_shape: Sequence[int], dtype: torch.dtype):
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self._slots: List[torch.Tensor] = []
        self._events: List[Optional[torch.cuda.Event]] = []
        if self.pinned:
            self._slots = [torch.empty((batch_size, *item_shape), dtype=dtype).pin_memory() for _ in range(SLOTS)]
            self._events = [None] * SLOTS
        self._next = 0

    def _slot(self, n: int) -> torch.Tensor:
        k = self._next
        self._next = (k + 1) % SLOTS
        if self._events[k] is not None:
            self._events[k].synchronize()  # the copy that last read this slot has finished
        return self._slots[k][:n]

    def _send(self, staged: torch.Tensor) -> torch.Tensor:
        out = staged.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[(self._next - 1) % SLOTS] = event
        return out

    def gather(self, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """`source[index]` on the device (on the CPU: exactly `source[index]`)."""
        if not self.pinned:
            return source[index]
        staged = self._slot(len(index))
        torch.index_select(source, 0, index, out=staged)
        return self._send(staged)

    def put(self, batch: torch.Tensor) -> torch.Tensor:
        """A contiguous CPU batch (a slice) on the device (on the CPU: the batch itself)."""
        if not self.pinned or batch.device.type != "cpu":
            return batch.to(self.device, non_blocking=True)
        staged = self._slot(len(batch))
        staged.copy_(batch)
        return self._send(staged)
