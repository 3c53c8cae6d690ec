"""The frozen towers' features for a grid's images and texts, computed once by the grid's processes together.

Every process of `clipbench run --jobs N` keeps its own content cache of the mini model's frozen towers
(`mini_model.install_caches`); left alone, each would fill it in its first run with the same rows, the same
work N times (about 20 s of one core per process for the mini grid). Instead, before the first run, process
k of N computes every N-th row (k, k + N, ... of the sorted row keys), writes them to a shared folder, then
reads the others' rows. A row's features depend on nothing but the row (`mini_model.fixed_batches`), so
which process computed it changes no number; a part that never comes (a process died) is waited for at
most `WAIT_SECONDS` and its rows are then computed by the runs that need them, as before.

Only the mini model has such caches: for any other model `grid_inputs` finds nothing to do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import mini_model
from .decode import image_sets
from .evaluator import stream_texts
from .models import load_model
from .plan import method_registry
from .runner import decode_run_images, run_streams
from .spec import RunSpec

WAIT_SECONDS = 300.0  # the most a process waits for another's part


def _protocol_specs(specs: Sequence[RunSpec]) -> List[RunSpec]:
    """One spec per protocol setting (the first), preferring one whose method reads a reference set (its
    sentences and images are then filled too)."""
    chosen: Dict[Tuple[str, str], RunSpec] = {}
    registry = method_registry()
    for spec in specs:
        key = (spec.protocol, repr(sorted(spec.protocol_params.items())) + str(spec.data_root))
        if key not in chosen or (registry.get(spec.method).uses_reference
                                 and not registry.get(chosen[key].method).uses_reference):
            chosen[key] = spec
    return list(chosen.values())


def grid_inputs(specs: Sequence[RunSpec], root: Path, options: Any, device: str
                ) -> Tuple[Any, List[torch.Tensor], List[str]]:
    """The loaded mini model, the uint8 image sets and the texts the grid's runs put through the frozen towers;
    (None, [], []) when the grid's model is not the mini model."""
    if not specs or any(s.model.get("arch") != mini_model.ARCH for s in specs):
        return None, [], []
    loaded = load_model(specs[0].model["arch"], specs[0].model.get("pretrained"), device)
    images: List[torch.Tensor] = []
    texts: List[str] = []
    for spec in _protocol_specs(specs):
        streams = run_streams(spec)  # as the runs build and decode them
        decode_run_images(streams, loaded, options, root, False)
        images += [data.images for _, data in image_sets(streams)
                   if isinstance(getattr(data, "images", None), torch.Tensor) and data.images.dtype == torch.uint8]
        texts += stream_texts(streams)
    return loaded, images, texts


def _my_rows(x: torch.Tensor, share: int, shares: int) -> Tuple[torch.Tensor, List[bytes]]:
    """The rows of `x` that are this process's share (every `shares`-th of its distinct rows, by sorted key),
    and their keys."""
    keys = mini_model._row_keys(x)
    ordered = sorted(set(keys))
    wanted = {k for i, k in enumerate(ordered) if i % shares == share}
    rows, seen = [], set()
    for i, k in enumerate(keys):
        if k in wanted and k not in seen:
            rows.append(i)
            seen.add(k)
    return torch.tensor(rows, dtype=torch.long), [keys[i] for i in rows]


def fill_share(specs: Sequence[Dict[str, Any]], root: str, options: Any, device: str, folder: str, share: int,
               shares: int, stop: Optional[Callable[[], bool]] = None) -> int:
    """Compute this process's share of the grid's frozen-tower rows (`specs`: the pending runs, as
    `RunSpec.to_dict` with their data_root), write it to `folder`, then load every other process's share.
    Returns the rows this process holds afterwards (0: nothing shared). Never fails the grid: whatever goes
    wrong here, the runs compute their misses themselves, to the same numbers. `stop()` true: stop waiting
    for the other parts (the caller knows a process died)."""
    from .store import atomic_torch_save

    out = Path(folder)
    mine: Dict[str, Dict[bytes, torch.Tensor]] = {}
    try:
        mine = _compute_share([RunSpec.from_dict(d) for d in specs], Path(root), options, device, share, shares)
    except Exception as err:  # noqa: BLE001  (a speed-up only)
        print(f"clipbench: the frozen features were not shared ({type(err).__name__}: {err}); each run computes "
              "its own", file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(out / f"part-{share}.pt", mine)  # even empty: the others stop waiting for it
    except Exception:  # noqa: BLE001
        return 0
    return _load_shares(out, share, shares, stop or (lambda: False)) if mine else 0


def _compute_share(specs: Sequence[RunSpec], root: Path, options: Any, device: str, share: int, shares: int
                   ) -> Dict[str, Dict[bytes, torch.Tensor]]:
    loaded, images, texts = grid_inputs(specs, root, options, device)
    if loaded is None:
        return {}
    caches = _caches()
    mine: Dict[str, Dict[bytes, torch.Tensor]] = {part: {} for part in caches}
    sets = [("image", x) for x in images] + ([("text", loaded.tokenizer(sorted(set(texts))))] if texts else [])
    with torch.no_grad():
        for tower, x in sets:
            rows, keys = _my_rows(x, share, shares)
            if not keys:
                continue
            (loaded.clip.visual if tower == "image" else loaded.clip.text).pooled(x[rows])
            for part in (("image", "preactivation") if tower == "image" else ("text",)):
                mine[part].update((k, caches[part][k]) for k in keys if k in caches[part])
    return mine


def _caches() -> Dict[str, Dict[bytes, torch.Tensor]]:
    names = mini_model.cache_names(mini_model.tower_fingerprint())
    return {part: mini_model._CACHE.setdefault(name, {}) for part, name in names.items()}


def _load_shares(out: Path, share: int, shares: int, stop: Callable[[], bool]) -> int:
    """Every other process's part into this process's caches, each as soon as it is written."""
    caches = _caches()
    deadline = time.monotonic() + WAIT_SECONDS
    waiting = set(range(shares)) - {share}
    while waiting and time.monotonic() < deadline and not stop():
        for k in sorted(waiting):
            path = out / f"part-{k}.pt"
            if path.is_file():
                for part, rows in torch.load(path, weights_only=True).items():
                    if len(caches[part]) < mini_model.MAX_CACHED_ROWS:
                        caches[part].update(rows)
                waiting.discard(k)
        if waiting:
            time.sleep(0.05)
    return sum(len(c) for c in caches.values())
