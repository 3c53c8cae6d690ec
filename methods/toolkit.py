"""Pieces several methods share: teacher snapshots, distillation losses, pseudo-vocabulary sampling,
batch cycling over image sets, batched feature extraction, the L2 pull to a weight snapshot.

A teacher is a snapshot of the trainable parameters only (frozen ones are equal in both models),
evaluated by swapping them into the live model with `torch.func.functional_call`: no deep copy of
the model, which for a ViT-B/32 would cost 600 MB per teacher.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

State = Dict[str, torch.Tensor]


def require_reference(streams, method: str, pairs: bool = False):
    """The reference set the protocol declares for `method` (read into `streams.reference` for methods with
    `uses_reference`), or a clear error; `pairs`: its sentences must caption its images."""
    from clipbench.errors import ClipbenchError

    if streams.reference is None:
        raise ClipbenchError(f"{method} needs a reference set (outside data) and none was read for it: declare "
                             f"`reference:` or `references.{method}:` in the protocol file (and `uses_reference = True` "
                             "on the method's class)")
    if pairs and streams.reference.caption_image is None:
        raise ClipbenchError(f"{method} needs image-caption pairs as its reference set; the one declared for it takes "
                             "images and sentences from separate sources")
    return streams.reference


def reference_not_declared(spec, method: str, needs: Tuple[str, ...]) -> Optional[str]:
    """The n/a reason of a method whose reference set the protocol of `spec` does not declare, or None.
    `needs`: ("pairs",) for image-caption pairs, or the parts it reads among ("images", "sentences"), which
    pairs also give. Protocols whose builder makes its own reference set (mini, synthetic) always have one."""
    from clipbench.protocols.catalog import get_protocol

    roles = get_protocol(spec.protocol).reference_roles(spec.protocol_params, method)
    if roles is None or "pairs" in roles or (needs != ("pairs",) and set(needs) <= set(roles)):
        return None
    what = "image-caption pairs" if needs == ("pairs",) else " and ".join(f"reference {n}" for n in needs)
    if not roles:
        return f"needs {what} (outside data); the protocol declares no reference set"
    return f"needs {what}; the protocol's reference set for it holds only {' and '.join(roles)}"


def snapshot(model: nn.Module, params: Iterable[nn.Parameter]) -> State:
    """Clones of `params`, keyed by their names in `model`."""
    wanted = {id(p) for p in params}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in wanted}


class _Apply(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[nn.Module], Any]) -> Any:
        return fn(self.model)


@torch.no_grad()
def with_weights(model: nn.Module, state: State, fn: Callable[[nn.Module], Any]) -> Any:
    """`fn(model)` computed as if `model` held the weights in `state` (the others unchanged), without grad."""
    return functional_call(_Apply(model), {f"model.{k}": v for k, v in state.items()}, (fn,), strict=False)


def lwf_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), averaged over the batch (the founding paper's LwF term; no T^2)."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")


def soft_cross_entropy(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """ZSCL's distillation: T^2 * mean_i CE(softmax(t_i/T), s_i/T)."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    return F.cross_entropy(student_logits / temperature, target) * temperature**2


def zscl_distillation(teacher_images: torch.Tensor, student_images: torch.Tensor, text: torch.Tensor,
                      scale: torch.Tensor, temperature: float = 2.0, image_weight: float = 1.0,
                      text_weight: float = 1.0) -> torch.Tensor:
    """ZSCL's feature-space distillation in both directions (Thunderbeee/ZSCL at b96e714,
    mtil/src/models/finetune.py `finetune` and cil/continual_clip/models.py `ClassIncremental.train`):

        L_t = scale * t_img @ text^T,   L_s = scale * s_img @ text^T   (features L2-normalised)
        loss = image_weight * D(L_t, L_s) + text_weight * D(L_t^T, L_s^T)

    D is ZSCL's `distillation` (`soft_cross_entropy` here); the text embeddings come from the teacher.
    ZSCL, its LwF, its LwF-VR and its iCaRL differ only in the teacher, the images and the texts.
    """
    teacher = scale * teacher_images @ text.T
    student = scale * student_images @ text.T
    return (image_weight * soft_cross_entropy(teacher, student, temperature)
            + text_weight * soft_cross_entropy(teacher.T, student.T, temperature))


def l2_to(model: nn.Module, state: State) -> torch.Tensor:
    """sum over the parameters in `state` of ||theta - theta_state||^2 (ZSCL's `l2_loss`: summed MSE)."""
    params = dict(model.named_parameters())
    return sum(((params[n] - v) ** 2).sum() for n, v in state.items())


def session_steps(strategy) -> int:
    """Optimizer steps of the experience being trained (epochs x mini-batches); Avalanche has built the
    experience's dataloader before the plugins' `before_training_exp`."""
    return strategy.train_epochs * len(strategy.dataloader)


class Cycle:
    """Index batches over `n` items, pass after pass, as ZSCL draws its reference batches: `next()` on a
    loader, and a fresh pass when it is exhausted (the last batch of a pass may be short). `shuffle`:
    a new permutation per pass (a shuffled DataLoader); otherwise the stored order (ZSCL's iCaRL
    `batch(memory)`). Permutations come from torch's global generator, which the runner seeds per
    experience, so a resumed run draws the same batches."""

    def __init__(self, n: int, batch_size: int, shuffle: bool):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.order: Optional[torch.Tensor] = None
        self.position = n

    def next(self) -> torch.Tensor:
        if self.position >= self.n:
            self.order = torch.randperm(self.n) if self.shuffle else torch.arange(self.n)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return index


@torch.no_grad()
def encode_in_batches(model: nn.Module, images: torch.Tensor, device, batch_size: int = 128) -> torch.Tensor:
    """Normalised image features of uint8 `images`, on the CPU, computed in batches without grad."""
    return torch.cat([model.encode_images(images[s:s + batch_size].to(device)).cpu()
                      for s in range(0, len(images), batch_size)])


@torch.no_grad()
def raw_image_features(model: nn.Module, images: torch.Tensor, device, batch_size: int = 128) -> torch.Tensor:
    """Image features of uint8 `images` as the image encoder returns them (not normalised), on the CPU, in
    batches without grad, the encoder in eval mode (the LAMDA methods' `convnet.encode_image(x)`)."""
    clip = model.clip
    was_training = clip.training
    clip.eval()
    out = [clip.encode_image(model.preprocess(images[s:s + batch_size].to(device))).float().cpu()
           for s in range(0, len(images), batch_size)]
    clip.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def token_space(tokenizer) -> Dict[str, Any]:
    """Start, end and pad ids, the ordinary token ids, and the context length of an open_clip tokenizer."""
    if hasattr(tokenizer, "sot_token_id"):  # open_clip's BPE tokenizer
        start, end, pad = tokenizer.sot_token_id, tokenizer.eot_token_id, 0
        ordinary = torch.arange(0, min(start, end))
        return {"start": start, "end": end, "pad": pad, "ordinary": ordinary, "context": tokenizer.context_length}
    hf = tokenizer.tokenizer  # open_clip's HFTokenizer wraps a Hugging Face tokenizer
    special = set(hf.all_special_ids)
    ordinary = torch.tensor([i for i in range(hf.vocab_size) if i not in special])
    return {"start": hf.cls_token_id, "end": hf.sep_token_id, "pad": hf.pad_token_id, "ordinary": ordinary,
            "context": tokenizer.context_length}


def pseudo_sentences(tokenizer, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` pseudo-sentences: start token, `length` ordinary token ids drawn uniformly, end token, padding."""
    space = token_space(tokenizer)
    if length + 2 > space["context"]:
        raise ValueError(f"pseudo sentences of {length} tokens do not fit a context of {space['context']}")
    picks = torch.randint(len(space["ordinary"]), (n, length), generator=generator)
    out = torch.full((n, space["context"]), space["pad"], dtype=torch.long)
    out[:, 0] = space["start"]
    out[:, 1:length + 1] = space["ordinary"][picks]
    out[:, length + 1] = space["end"]
    return out


def interpolate(a: State, b: State, alpha: float) -> State:
    """alpha * a + (1 - alpha) * b, key by key."""
    return {k: alpha * a[k] + (1 - alpha) * b[k] for k in a}


def load_into(model: nn.Module, state: State) -> None:
    """Copy `state` into `model`'s parameters of the same names."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def check_template(template: str) -> None:
    """A method's prompt template must say where the class name goes (clipbench formats `{c}`)."""
    from clipbench.errors import ClipbenchError

    if "{c}" not in template:
        raise ClipbenchError(f"template must hold '{{c}}' where the class name goes, got '{template}'")


def same_optimizer(optimizer: torch.optim.Optimizer, params, lr_factor: float = 1.0) -> torch.optim.Optimizer:
    """A fresh optimizer of the run's kind and settings over `params`, at its learning rate times `lr_factor`
    (a method's own extra phase: MG-CLIP's epoch probe, CLAP4CLIP's finetune on the memory)."""
    import inspect

    accepted = inspect.signature(type(optimizer).__init__).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    settings["lr"] = optimizer.defaults["lr"] * lr_factor
    return type(optimizer)(params, **settings)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module of `model` in eval mode for the block, each module's own flag restored after (a frozen tower
    that stays in eval mode while the rest trains stays so)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag
