"""A-GEM: averaged gradient episodic memory (Chaudhry et al., ICLR 2019), with image-text memory."""

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F


from .base import Method, MethodConfig, register_method, require_choice
from .toolkit import reference_not_declared, require_reference


def project_gradient(grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's rule: if g . g_ref < 0, g <- g - (g . g_ref / g_ref . g_ref) g_ref; else g unchanged."""
    dot = torch.dot(grad, reference)
    if dot < 0:
        return grad - (dot / torch.dot(reference, reference).clamp_min(1e-12)) * reference
    return grad


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over matching pairs."""
    logits = scale * image_features @ text_features.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


REFERENCES = ("memory", "current_batch")


@dataclass
class AGEMConfig(MethodConfig):
    reference_batch_size: int = 0  # pairs per reference gradient; 0: the training batch size
    episodic_per_experience: int = 250  # samples of each finished experience added (CL-CLIP: Replayed_MST, 250)
    reference: str = "memory"  # memory: A-GEM's; current_batch: what CL-CLIP's released code computes

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("agem reference", self.reference, REFERENCES)


@register_method
class AGEM(Method):
    """A-GEM for CLIP (Ding et al., 2022; code: yxding95/CL-CLIP at 877a69f, methods/agem.py `AGEM.train`,
    data.py `Replayed`, `Replayed_MST`; the rule of Chaudhry et al., ICLR 2019).

    The episodic memory holds image-text pairs: the reference pairs the protocol declares for it
    (`references.agem`, else `reference`; the paper used a LAION subset, `Replayed`; the suites after it
    declare Conceptual Captions' validation pairs; the offline suite uses its alignment corpus's training
    split; a protocol without pairs gives n/a) plus,
    after each experience, `episodic_per_experience` = 250 of its images captioned with their class
    prompt (`Replayed_MST` samples 250 per COCO session; the EuroSAT script 250 per class). At every
    step the reference gradient g_ref is the gradient of CLIP's contrastive loss on a memory batch;
    the task gradient g is projected when it conflicts: g <- g - (g . g_ref / g_ref . g_ref) g_ref if
    g . g_ref < 0.

    Departure, the default: CL-CLIP's released code draws a memory batch but never uses it; its
    reference loss is the contrastive loss of the current training batch's own images and own captions
    ("this is a photo of <class> in the scene .": `RI = data['image']`, `RC = data['caption']`), so its
    memory has no effect. `reference: memory` (default) follows A-GEM and the paper's text;
    `reference: current_batch` reproduces the released code (each image with its class prompt).
    """

    name = "agem"
    version = 2
    Config = AGEMConfig
    uses_reference = True

    @classmethod
    def not_applicable(cls, spec):
        return reference_not_declared(spec, cls.name, ("pairs",))

    def setup(self, model, streams) -> None:
        ref = require_reference(streams, self.name, pairs=True)
        self.streams = streams
        # banks of (uint8 images, captions): sources differ in image size, so each is kept apart
        self.banks: List[Tuple[torch.Tensor, List[str]]] = [(ref.images[ref.caption_image], list(ref.captions))]

    def _params(self, model):
        return [p for p in model.parameters() if p.requires_grad]

    def memory_batch(self, size: int) -> Tuple[List[torch.Tensor], List[str]]:
        """`size` pairs drawn uniformly from the whole memory: uint8 images, one tensor per bank drawn from
        (banks differ in image size), and their captions in the same order."""
        sizes = [len(c) for _, c in self.banks]
        pick = torch.randint(sum(sizes), (min(size, sum(sizes)),)).sort().values
        starts = torch.tensor([0] + sizes).cumsum(0)
        images, captions = [], []
        for b, (bank_images, bank_captions) in enumerate(self.banks):
            local = pick[(pick >= starts[b]) & (pick < starts[b + 1])] - starts[b]
            if len(local):
                images.append(bank_images[local])
                captions += [bank_captions[i] for i in local.tolist()]
        return images, captions

    def reference_batch(self, strategy) -> Tuple[List[torch.Tensor], List[str]]:
        """The pairs of this step's reference loss: a memory batch, or the training batch with its prompts."""
        if self.config.reference == "current_batch":
            names, template = self.streams.class_names, self.streams.train_template
            return [strategy.mb_x], [template.format(c=names[int(y)]) for y in strategy.mb_y]
        return self.memory_batch(self.config.reference_batch_size or strategy.train_mb_size)

    def before_training_iteration(self, strategy, **kwargs):
        model = strategy.model
        images, captions = self.reference_batch(strategy)
        tokens = model.tokenizer(captions).to(strategy.device)
        image_features = torch.cat([model.encode_images(part) for part in images])
        loss = contrastive_loss(image_features, model.encode_tokens(tokens), model.clip.logit_scale.exp().detach())
        params = self._params(model)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        self.reference = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                    for g, p in zip(grads, params)])

    def after_backward(self, strategy, **kwargs):
        params = self._params(strategy.model)
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        projected = project_gradient(grad, self.reference)
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(projected[offset:offset + n].view_as(p))
            offset += n

    def after_training_exp(self, strategy, **kwargs):
        index = strategy.experience.current_experience
        data = self.streams.train[index]
        keep = torch.randperm(len(data))[: self.config.episodic_per_experience]
        prompts = self.streams.train_prompts()
        self.banks.append((data.images[keep], [prompts[int(y)] for y in data.labels[keep]]))

    def state_dict(self) -> Dict[str, Any]:
        return {"banks": self.banks}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.banks = [(images, list(captions)) for images, captions in state["banks"]]
