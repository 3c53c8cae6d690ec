"""Loading any open_clip model: an architecture with a hub tag, a local checkpoint file, or `local-dir:`.

Weights are fingerprinted (sha256 of the files) so that run ids and caches are keyed on the exact
weights, not on a name. Hub tags are checked before loading: offline, a tag whose files are not
in the local Hugging Face cache fails at once with instructions instead of minutes of retries.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Set, Tuple

import torch


from . import mini_model
from .checksums import file_sha256
from .errors import ClipbenchError, unknown_name_error
from .model_input import to_model_input
from .preprocess import Preprocess, from_open_clip_cfg
from .quiet import without_log_message

CONFIG_DIR = Path(__file__).parent / "model_configs"
LOCAL_DIR = "local-dir:"
HUB_HOST = "huggingface.co"


BUNDLED = "bundled:"  # a file shipped inside clipbench (benchmark/assets/...), e.g. the mini projections
BUNDLED_DIR = Path(__file__).resolve().parent / "assets"


@dataclass
class LoadedModel:
    """An open_clip model with what evaluation and training need to feed it."""

    clip: torch.nn.Module
    tokenizer: Callable[[list], torch.Tensor]
    image_size: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    frozen_prefixes: Tuple[str, ...] = ()  # parameters that never train (and may be cached)
    # the model resizes and normalises uint8 batches itself (the mini model, whose frozen-tower
    # cache then keys on the small raw pixels and skips preprocessing on a hit)
    takes_uint8: bool = False
    # how image files are decoded for this model (its own eval transform up to uint8 pixels)
    preprocess: Optional[Preprocess] = None
    # computes, all at once, what a model that caches its frozen text tower (the mini model) will be asked for
    # these texts; changes no number (None: nothing to warm)
    warm_texts: Optional[Callable[[Sequence[str]], None]] = None

    def model_input(self, images: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What `clip.encode_image` takes for a batch: uint8 batches resized and normalised (on their
        device) unless the model does that itself; float batches are taken as already prepared.
        `out`: a buffer to reuse (see `to_model_input`)."""
        if images.dtype != torch.uint8 or self.takes_uint8:
            return images
        return to_model_input(images, self.image_size, self.mean, self.std, out)

    def input_buffer(self, images: torch.Tensor, batch_size: int, device: str) -> Optional[torch.Tensor]:
        """A float buffer `model_input` can write batches of `images` into, or None where it would not
        use one (the model takes uint8 as it is, or batches are resized, which allocates anyway)."""
        if (not len(images) or images.dtype != torch.uint8 or self.takes_uint8
                or tuple(images.shape[-2:]) != tuple(self.image_size)):
            return None
        return torch.empty((min(batch_size, len(images)), *images.shape[1:]), device=device)


def resolve_bundled(pretrained: Optional[str]) -> Optional[str]:
    """`bundled:mini/x.pt` -> the file's path inside the installed clipbench."""
    if pretrained and str(pretrained).startswith(BUNDLED):
        return str(BUNDLED_DIR / str(pretrained)[len(BUNDLED):])
    return pretrained


def _open_clip():
    import open_clip  # imported lazily: it pulls in torchvision and timm

    if not getattr(_open_clip, "_configs_added", False):
        open_clip.add_model_config(CONFIG_DIR)  # clipbench's own configs (the tiny test model)
        _open_clip._configs_added = True
    try:
        mini_model.register_config(open_clip)
    except ClipbenchError:
        pass  # the mini model's packages are not installed; only that model is unavailable
    return open_clip


def _hub_reachable(timeout: float = 3.0) -> bool:
    old = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(HUB_HOST, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(old)


def _cached_hub_file(arch: str, tag: str) -> Optional[str]:
    """The weights file of (arch, tag) if it is already in the local Hugging Face cache."""
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    repo = cfg.get("hf_hub", "").rstrip("/")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.safetensors"):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def _readable_file(path: Path) -> bool:
    if not path.is_file():
        raise ClipbenchError(f"model.pretrained: checkpoint file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ClipbenchError(f"model.pretrained: cannot read checkpoint {path}: permission denied")
    return True


def weights_fingerprint(arch: str, pretrained: Optional[str]) -> str:
    """A string that changes whenever the weights do; validates the model spec on the way.

    - None: random initialisation ("random-init"; the seed is part of the run spec).
    - a file: its sha256.  - `local-dir:DIR`: sha256 over the directory's files.
    - a hub tag: "hub:<arch>/<tag>" (the files are not on disk to hash before download).
    """
    open_clip = _open_clip()
    pretrained = resolve_bundled(pretrained)
    if arch == mini_model.ARCH:
        proj = "none" if pretrained is None else _readable_file(Path(pretrained)) and file_sha256(pretrained)
        return hashlib.sha256(f"{mini_model.tower_fingerprint()}:{proj}".encode()).hexdigest()
    if pretrained is None:
        if arch not in open_clip.list_models():
            raise unknown_name_error("model architecture", arch, open_clip.list_models())
        return "random-init"
    pretrained = str(pretrained)
    if pretrained.startswith(LOCAL_DIR):
        folder = Path(pretrained[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ClipbenchError(
                f"model.pretrained {pretrained}: no open_clip_config.json in {folder}; a local-dir needs the "
                "config and weights file that open_clip writes (open_clip_config.json, open_clip_model.safetensors)"
            )
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(path.name.encode() + file_sha256(path).encode())
        return digest.hexdigest()
    if arch not in open_clip.list_models():
        raise unknown_name_error("model architecture", arch, open_clip.list_models())
    looks_like_path = os.sep in pretrained or Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}
    if looks_like_path or Path(pretrained).exists():
        path = Path(pretrained).expanduser()
        _readable_file(path)
        return file_sha256(path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise unknown_name_error(f"pretrained tag for {arch}", pretrained, tags)
    if _cached_hub_file(arch, pretrained) is None and not _hub_reachable():
        raise ClipbenchError(
            f"model {arch} with pretrained tag '{pretrained}' needs a download from {HUB_HOST}, which cannot be "
            f"reached (offline?). Fetch the weights on a machine with internet and pass the file instead: "
            f"--set model.pretrained=/path/to/open_clip_pytorch_model.bin (or local-dir:/path/to/dir)"
        )
    return f"hub:{arch}/{pretrained}"


_WARMED: dict = {}  # per tower fingerprint: the texts whose frozen-tower features this process computed


def load_model(arch: str, pretrained: Optional[str], device: str = "cpu") -> LoadedModel:
    """Build the open_clip model and its tokenizer. Seed torch first when `pretrained` is None."""
    open_clip = _open_clip()
    weights_fingerprint(arch, pretrained)  # validates, fails fast with a clear message
    pretrained = resolve_bundled(pretrained)
    if arch == mini_model.ARCH:
        clip = mini_model.build(open_clip, Path(pretrained) if pretrained else None, device)
        tokenizer = open_clip.get_tokenizer(arch)
        warmed: Set[str] = _WARMED.setdefault(mini_model.tower_fingerprint(), set())

        def warm_texts(texts: Sequence[str]) -> None:  # each text once per process: the cache outlives the model
            fresh = sorted(set(texts) - warmed)
            if fresh:
                mini_model.warm_text_cache(clip, tokenizer(fresh).to(device))
                warmed.update(fresh)

        return LoadedModel(clip, tokenizer, (mini_model.IMAGE_SIZE,) * 2, mini_model.MEAN,
                           mini_model.STD, mini_model.FROZEN_PREFIXES, takes_uint8=True,
                           preprocess=Preprocess("square_white", (mini_model.IMAGE_SIZE,) * 2), warm_texts=warm_texts)
    name, weights = arch, pretrained
    if pretrained and str(pretrained).startswith(LOCAL_DIR):
        name, weights = str(pretrained), None
    elif pretrained and not Path(str(pretrained)).expanduser().is_file():
        weights = _cached_hub_file(arch, pretrained) or pretrained
    elif pretrained:
        weights = str(Path(str(pretrained)).expanduser())
    # open_clip warns that a random init is random: asked for (pretrained: null), not news
    random_init = f"No pretrained weights loaded for model '{name}'. Model initialized randomly."
    try:
        with without_log_message(random_init):
            clip = open_clip.create_model(name, pretrained=weights, device=device)
    except Exception as err:  # corrupt or mismatched weights: a user-input problem, said in one line
        first = (str(err).strip().splitlines() or [""])[0]
        raise ClipbenchError(f"cannot load model {arch} with weights {pretrained}: {type(err).__name__}: {first}") from None
    tokenizer = open_clip.get_tokenizer(name)
    cfg: dict[str, Any] = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
    cfg.setdefault("size", getattr(clip.visual, "image_size", (224, 224)))
    preprocess = from_open_clip_cfg(cfg)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return LoadedModel(clip=clip, tokenizer=tokenizer, image_size=preprocess.size, mean=mean, std=std,
                       preprocess=preprocess)


def model_slug(arch: str, pretrained: Optional[str]) -> str:
    """A folder-safe model name for result paths: arch plus the weights' short name."""
    pretrained = resolve_bundled(pretrained)
    if pretrained is None:
        tail = "random"
    elif str(pretrained).startswith(LOCAL_DIR):
        tail = Path(str(pretrained)[len(LOCAL_DIR):]).name
    else:
        tail = Path(str(pretrained)).stem
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{arch}__{tail}")
