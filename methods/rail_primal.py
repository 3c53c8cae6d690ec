"""RAIL, primal form (Xu et al., NeurIPS 2024): recursive ridge regression on random ReLU features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from clipbench.errors import ClipbenchError

from .base import register_method
from .rail_fusion import RAILBase, RAILConfig

# the code's projection: 512-d ViT-B/16 features to 15,000 hidden units
CODE_FEATURE_DIM, CODE_HIDDEN_DIM = 512, 15000


def hidden_size(feature_dim: int, hidden_dim: int = 0) -> int:
    """`hidden_dim`, or when 0 the code's 15,000 scaled to the model's feature dimension (15000 * D / 512)."""
    return hidden_dim or round(CODE_HIDDEN_DIM * feature_dim / CODE_FEATURE_DIM)


def random_projection(feature_dim: int, hidden: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The fixed expansion's weights [D, H]: uniform in +-1/sqrt(D), the default initialisation of the code's
    `nn.Linear(D, H, bias=False)` (Kaiming uniform with a = sqrt(5)); never trained."""
    bound = feature_dim ** -0.5
    return torch.empty(feature_dim, hidden).uniform_(-bound, bound, generator=generator)


def recursive_ridge_update(R: torch.Tensor, W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One block of recursive least squares, in place: R = (sum X'X + lambda I)^-1 and W = R sum X'Y after it.

    The code's update (`analytic_adaption`, later tasks): R <- R - R X' (I + X R X')^-1 X R, then
    W <- W + R X' (Y - X W) with the new R. Here, with U = R X' and K = (I + X U)^-1: R <- R - U K U'
    and, since the new R X' equals U K, W <- W + U K (Y - X W), which spares one H x H product.
    """
    U = R @ X.T
    KUt = torch.linalg.solve(torch.eye(len(X), dtype=X.dtype, device=X.device) + X @ U, U.T)  # K U', K symmetric
    W += KUt.T @ (Y - X @ W)
    R.addmm_(U, KUt, alpha=-1.0)
    return R, W


@dataclass
class RAILPrimalConfig(RAILConfig):
    hidden_dim: int = 0  # random ReLU features; 0: the code's 15000 scaled to the model's dimension (15000 D / 512)
    regularization: float = 0.1  # ridge lambda (the config's `regularization`)
    batch_size: int = 128  # images per recursive update (the code's training batch)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim < 0 or self.batch_size < 1 or self.regularization <= 0:
            raise ClipbenchError("rail_primal needs hidden_dim >= 0 (0: scaled), batch_size >= 1 and "
                                 f"regularization > 0; got {self.hidden_dim}, {self.batch_size}, {self.regularization}")


@register_method
class RAILPrimal(RAILBase):
    """RAIL, primal (Xu et al., NeurIPS 2024): recursive ridge on random ReLU features, fused with zero-shot.

    Code: linghan1997/Regression-based-Analytic-Incremental-Learning at eaac644, `primal_RAIL.py`
    (`continual_clip_adaptor`) and `configs/analytic_clip.yaml`.

    The image encoder is frozen (every tower: the features are the model's, on any open_clip model and on
    the mini model alike); nothing trains by gradient. Each normalised image feature f is expanded by a
    fixed random projection, phi = ReLU(f P), and a ridge regressor W maps phi onto one-hot labels of
    every class seen so far (lambda 0.1). Each experience is one pass over its data: the recursive update
    (`recursive_ridge_update`, blocks of 128 images) keeps R = (Phi'Phi + lambda I)^-1 and W exactly the
    batch ridge solution over every image seen, old classes' columns included, without storing any
    image or feature. At test, RAIL's fusion with zero-shot CLIP over every class name (`rail_fusion`).

    Departures, each said:
    - hidden size: the code expands its 512-d ViT-B/16 features to 15,000 units (`hidden_dim`); here by
      default the same ratio to the model's feature dimension D, round(15000 D / 512): 15,000 for every
      512-d model (ViT-B/32, ViT-B/16), 7,500 for the mini model (256-d), 1,875 for the tiny test model;
      `--set methods.rail_primal.hidden_dim=15000` gives the code's fixed size. R is H x H (225 MB in
      float32 at 7,500; 900 MB at 15,000) and is what the method keeps between experiences.
    - the first experience: the code inverts Phi'Phi + lambda I directly (in numpy, then float32); here
      the recursion starts from R = I / lambda, W = 0, which gives the same solution (tested against the
      closed form) at less cost whenever an experience has fewer images than hidden units.
    - (I + X R X')^-1 by a linear solve instead of the code's pseudo-inverse (the matrix is symmetric
      positive definite, so both are its inverse). Float32 throughout, as the code's recursion on the GPU;
      on the mini suite's 5 experiences (2,000 images, H = 7,500) W stays within 2e-4 of a float64 closed
      form (largest entry 0.65) and 999 of 1,000 test predictions agree.
    - training images as they are: the code's training transform is a random resized crop (scale 0.9-1);
      clipbench feeds no augmentation to any method.
    - the projection is drawn from the run's seeded generator (the code seeds torch with 42 and draws it
      as an `nn.Linear` default initialisation: the same distribution).
    """

    name = "rail_primal"
    version = 1
    Config = RAILPrimalConfig
    kept = ("projection", "R", "W")  # [D, H] fixed, [H, H], [H, n_seen]

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu(features @ self.projection)

    def learn(self, features, labels, n_seen) -> None:
        if self.projection is None:
            d = features.shape[1]
            h = hidden_size(d, self.config.hidden_dim)
            self.projection = random_projection(d, h).to(self.device)  # torch's RNG, seeded per experience by the runner
            self.R = torch.eye(h, device=self.device) / self.config.regularization
            self.W = torch.zeros(h, 0, device=self.device)
        self.W = F.pad(self.W, (0, n_seen - self.W.shape[1]))  # new classes' columns start at zero, as the code's
        targets = F.one_hot(labels, n_seen).float()
        step = self.config.batch_size
        for s in range(0, len(features), step):
            recursive_ridge_update(self.R, self.W, self.expand(features[s:s + step]), targets[s:s + step])

    def predict(self, features):
        return None if self.W is None else self.expand(features) @ self.W

    def inference_extras(self) -> str:
        if self.projection is None:
            return "random ReLU projection and ridge regressor (sizes set by the model's feature dimension)"
        (d, h), c = self.projection.shape, self.W.shape[1]
        return f"random ReLU projection {d}x{h} and ridge regressor {h}x{c}"
