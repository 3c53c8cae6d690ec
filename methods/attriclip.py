"""AttriCLIP (Wang et al., CVPR 2023): an attribute bank of keys and prompts, chosen per image."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, register_method
from .toolkit import token_space

# The authors' recipe (bhrqw/AttriCLIP at 031076a, CIFAR-100 script), one citation per key.
REFERENCE_RECIPE: Dict[str, Any] = {
    "optimizer": "sgd",  # classifier/vcop_4.py CoOp.init_model: torch.optim.SGD (momentum 0)
    "lr": 8e-4,  # CoOp.__init__: lr * train_batch / 20 = 1e-3 * 16 / 20 (main_incremental_submit.py --lr, --train_batch)
    "weight_decay": 0.0,  # main_incremental_submit.py --wd
    "batch_size": 16,  # main_incremental_submit.py --train_batch (mammoth models/config/attriclip.yaml: 32)
    "epochs": 10,  # main_incremental_submit.py --epochs
    "schedule": "cosine per step down to lr*1e-3",  # classifier/utils.py build_cosine_scheduler
    "ce_classes": "current",  # CoOp.fit: y - 10 * sess against the current task's class names
    "eval_batch_size": 8,  # main_incremental_submit.py --test_batch
    "arch": "ViT-L-14",  # main_incremental_submit.py --arch
}


def select_keys(image_features: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """`CLIP.forward`: probability = image_features @ text_key^T (normalised images, raw keys: a dot product,
    not a cosine); the indices [N, k] of the k largest, in descending order."""
    probability = image_features @ keys.T
    return probability.topk(k=min(k, probability.shape[1]), dim=1, largest=True).indices


def key_loss(image_features: torch.Tensor, chosen_keys: torch.Tensor) -> torch.Tensor:
    """classifier/utils.py `cosine_loss`: 1 - the mean over images and chosen keys of <image, key / |key|>."""
    keys = chosen_keys / chosen_keys.norm(dim=-1, keepdim=True)
    return 1 - (image_features[:, None, :] * keys).sum(-1).mean()


def orthogonality_loss(prompt_features: torch.Tensor) -> torch.Tensor:
    """loss_m: the mean absolute off-diagonal cosine between the normalised prompt-only text features [M, D]."""
    f = F.normalize(prompt_features, dim=-1)
    dis = f @ f.T
    return dis[~torch.eye(len(f), dtype=torch.bool, device=f.device)].abs().mean()


def placeholder_tokens(tokenizer, names: List[str], length: int) -> torch.Tensor:
    """The code's prompts "x x ... x <name>." (`length` x's) tokenized: positions 1..length hold the
    placeholders whose embeddings the chosen prompts replace."""
    return tokenizer([" ".join(["x"] * length) + " " + name + "." for name in names])


def fitted_context(tokenizer, names: List[str], n_ctx: int, per_image: int) -> int:
    """The largest n_ctx <= the configured one with start + per_image * n_ctx placeholders + the longest
    "<name>." + end inside the tokenizer's context (clipbench-tiny's is 16 tokens)."""
    pad = token_space(tokenizer)["pad"]
    longest = int(((tokenizer([n + "." for n in names]) != pad).sum(dim=1) - 2).max())
    room = (tokenizer.context_length - 2 - longest) // per_image
    if room < 1:
        raise ClipbenchError(f"attriclip: the text context ({tokenizer.context_length} tokens) holds no prompt "
                             f"before the class names; choose a model with a longer context")
    return min(n_ctx, room)


class AttributeBank(nn.Module):
    """The attribute bank: M keys (in the image-feature space) and M prompts of n_ctx token embeddings,
    both initialised N(0, 0.02^2) (`CoOp.__init__`)."""

    def __init__(self, size: int, key_dim: int, n_ctx: int, width: int):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(size, key_dim) * 0.02)
        self.prompts = nn.Parameter(torch.randn(size, n_ctx, width) * 0.02)


def _embedding(clip: nn.Module) -> nn.Embedding:
    if isinstance(getattr(clip, "token_embedding", None), nn.Embedding):
        return clip.token_embedding  # open_clip CLIP
    text = getattr(clip, "text", None)
    emb = getattr(getattr(getattr(text, "transformer", None), "embeddings", None), "word_embeddings", None)
    if isinstance(emb, nn.Embedding):
        return emb  # open_clip's Hugging Face text tower
    raise ClipbenchError("attriclip needs a text tower whose token embeddings it can replace (open_clip CLIP or "
                         "a Hugging Face tower)")


@contextmanager
def injected(clip: nn.Module, context: torch.Tensor) -> Iterator[None]:
    """Within the block, the token embeddings at positions 1..L are `context` [B, L, width] (the code's
    PromptLearner: prefix (start token), ctx, suffix (the rest of the tokenized prompt))."""
    length = context.shape[1]

    def hook(module, inputs, output):
        return torch.cat([output[:, :1], context.to(output.dtype), output[:, 1 + length:]], dim=1)

    handle = _embedding(clip).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_with_context(clip: nn.Module, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The text tower's features (unnormalised) of `tokens` with `context` in place of positions 1..L; the
    frozen tower runs every time (the mini model's text cache keys on the token ids, not the prompts)."""
    with injected(clip, context):
        if isinstance(getattr(clip, "token_embedding", None), nn.Embedding):
            return clip.encode_text(tokens)
        text = clip.text
        mask = (tokens != text.config.pad_token_id).long()
        return text.proj(text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask))


@dataclass
class AttriCLIPConfig(MethodConfig):
    num_prompt: int = 10  # --num_prompt: keys and prompts in the bank
    text_prompt: int = 3  # --text_prompt: prompts chosen per image
    n_ctx: int = 12  # tokens per prompt (CoOp n_ctx)
    key_weight: float = 0.7  # loss_k (vcop_ima.py: 0.5)
    ortho_weight: float = 0.3  # loss_m (vcop_ima.py: 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.num_prompt, self.text_prompt, self.n_ctx) < 1:
            raise ClipbenchError("methods.attriclip: num_prompt, text_prompt and n_ctx must be >= 1")


@register_method
class AttriCLIP(Method):
    """AttriCLIP (Wang et al., "AttriCLIP: A Non-Incremental Learner for Incremental Knowledge Learning",
    CVPR 2023; bhrqw/AttriCLIP at 031076a: `classifier/vcop_4.py` `PromptLearner.forward`/`only_prefix`,
    `TextEncoder`, `CLIP.forward`, `CoOp.__init__`/`fit`/`init_model`/`inference`; `classifier/utils.py`
    `cosine_loss`, `build_cosine_scheduler`; `main_incremental_submit.py` (defaults). The mammoth port,
    aimagelab/mammoth at e75a491 `models/attriclip.py`, was read for comparison).

    CLIP is frozen. The bank (`AttributeBank`) holds 10 keys and 10 prompts of 12 token embeddings, shared by
    every task and trained throughout. Per image (normalised feature f), the 3 keys with the largest f . key
    are chosen (`select_keys`); their prompts, concatenated in that order (36 tokens), replace the
    placeholders of "x ... x <name>." after the start token, and the text encoder gives that image's class
    features (`encode_with_context`; images choosing the same keys share one encoding, the same numbers).
    Logits = exp(logit_scale) cos(f, text). Loss = CE over the current task's classes + 0.7 (1 - mean
    cos(f, chosen key)) + 0.3 mean |off-diagonal cos| between the prompt-only features (each prompt alone
    in "x*36 ." at positions 1..12, the remaining 24 placeholders kept as the code's `only_prefix` does).
    At test every class of the stream is scored with the image's chosen prompts (argmax over the seen
    classes as the code's test_class). The prompt loss replaces the harness's cross-entropy: `loss` returns
    it minus the engine's CE (which has no gradient: the encoders are frozen).

    Reference recipe (`REFERENCE_RECIPE`): OpenAI ViT-L/14, SGD (no momentum) lr 8e-4, batch 16, 10 epochs,
    cosine per step to lr*1e-3; `train_defaults` holds what the harness can express.

    Departures: keys live in the image-feature space and prompts in the token-embedding width (the code's
    ViT-L/14 has 768 for both; the mini model 256 and 384); where the model's context cannot hold
    3 x 12 placeholders before the longest class name (clipbench-tiny: 16 tokens), n_ctx is cut to what fits
    (`fitted_context`); the harness's cosine goes to 0, not lr*1e-3. No exemplars.
    """

    name = "attriclip"
    version = 1
    Config = AttriCLIPConfig

    train_defaults = {"optimizer": "sgd", "momentum": 0.0, "lr": 8e-4, "weight_decay": 0.0, "batch_size": 16,
                      "epochs": 10, "schedule": "cosine", "ce_classes": "current"}

    def setup(self, model, streams) -> None:
        cfg = self.config
        self.streams, self.model = streams, model
        self.n_ctx = fitted_context(model.tokenizer, streams.class_names, cfg.n_ctx, cfg.text_prompt)
        length = self.n_ctx * cfg.text_prompt
        device = model.prompt_tokens.device
        self.class_tokens = placeholder_tokens(model.tokenizer, streams.class_names, length).to(device)
        self.only_prompt_tokens = model.tokenizer([" ".join(["x"] * length) + "."]).to(device)
        placeholder = model.tokenizer(["x"])[0, 1]
        if not bool((self.class_tokens[:, 1:1 + length] == placeholder).all()):
            raise ClipbenchError("attriclip: this tokenizer does not give one token per placeholder 'x'")
        with torch.no_grad():
            key_dim = model.encode_tokens(model.prompt_tokens[:1]).shape[1]
        width = _embedding(model.clip).embedding_dim
        model.add_module("attriclip", AttributeBank(cfg.num_prompt, key_dim, self.n_ctx, width))
        self.trained = 0
        self._cache: Dict[Tuple[int, ...], torch.Tensor] = {}

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        return [model.attriclip.keys, model.attriclip.prompts]

    def inference_extras(self) -> str:
        return "per image, the text encoder over every class with the image's chosen prompts"

    def class_text(self, choices: torch.Tensor, classes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised class features [U, len(classes), D] for each distinct choice of keys (rows of `choices`),
        and each image's row in them."""
        bank = self.model.attriclip
        unique, inverse = torch.unique(choices, dim=0, return_inverse=True)
        tokens = self.class_tokens[classes]
        contexts = bank.prompts[unique].reshape(len(unique), -1, bank.prompts.shape[-1])  # [U, L, width]
        feats = encode_with_context(self.model.clip, tokens.repeat(len(unique), 1),
                                    contexts.repeat_interleave(len(classes), dim=0))
        return F.normalize(feats, dim=-1).view(len(unique), len(classes), -1), inverse

    def prompt_only_features(self) -> torch.Tensor:
        bank = self.model.attriclip
        tokens = self.only_prompt_tokens.repeat(len(bank.prompts), 1)
        return encode_with_context(self.model.clip, tokens, bank.prompts)

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        f = model.last_image_features.detach()
        exp = strategy.experience.current_experience
        classes = self.streams.experience_classes[exp]
        lo = classes[0]
        bank = model.attriclip
        choices = select_keys(f, bank.keys, cfg.text_prompt)
        text, inverse = self.class_text(choices, torch.as_tensor(classes, device=f.device))
        logits = model.clip.logit_scale.exp().detach() * (f[:, None, :] * text[inverse]).sum(-1)
        own = (F.cross_entropy(logits, strategy.mb_y - lo) + cfg.key_weight * key_loss(f, bank.keys[choices])
               + cfg.ortho_weight * orthogonality_loss(self.prompt_only_features()))
        return own - strategy.loss.detach()  # replaces the engine's cross-entropy (no gradient: frozen encoders)

    def before_training_exp(self, strategy, **kwargs):
        self._cache = {}

    def after_training_exp(self, strategy, **kwargs):
        self.trained += 1
        self._cache = {}

    @torch.no_grad()
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if self.trained == 0:
            return None
        bank = self.model.attriclip
        device = bank.keys.device
        f = image_features.float().to(device)
        choices = select_keys(f, bank.keys, self.config.text_prompt)
        classes = torch.arange(len(class_features), device=device)
        rows = []
        for choice in choices.tolist():
            key = tuple(choice)
            if key not in self._cache:
                text, _ = self.class_text(torch.tensor([choice], device=device), classes)
                self._cache[key] = text[0]
            rows.append(self._cache[key])
        text = torch.stack(rows)
        return (self.model.clip.logit_scale.exp() * (f[:, None, :] * text).sum(-1)).cpu()

    def state_dict(self) -> Dict[str, Any]:
        return {"trained": self.trained}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.trained = state["trained"]
        self._cache = {}
