"""GeoDL: geodesic distillation (Simon, Koniusz & Harandi, CVPR 2021), as the founding paper's code runs it."""

from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F

from .base import MethodConfig, WithTeacher, register_method

NULL_DIRECTIONS = 60  # null-space columns appended to the source basis (`num_nullspacedim = 60`)


def centred_pca_basis(features: torch.Tensor, dim: int) -> torch.Tensor:
    """[D, dim]: the top `dim` left singular vectors of features^T [D, n] after removing each sample's own
    mean over its D coordinates (`train_pca_tall(x.t())`: `data - data.mean(0)` on the [D, n] matrix)."""
    x = features.T
    u, _, _ = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    return u[:, :dim]


def null_directions(basis: torch.Tensor, count: int) -> torch.Tensor:
    """Up to `count` orthonormal columns spanning part of the orthogonal complement of span(basis): the
    trailing right singular vectors of basis^T, first `count` of them (scipy's `null_space(P.t())[:, :60]`)."""
    _, s, vh = torch.linalg.svd(basis.T, full_matrices=True)
    rank = int((s > s.max() * max(basis.shape) * torch.finfo(s.dtype).eps).sum())
    return vh[rank:].T[:, :count]


def newton_schulz_inverse(m: torch.Tensor) -> torch.Tensor:
    """The authors' approximate inverse (`GFK.inverse`): Z Z with Z one Newton-Schulz step towards
    M^(-1/2) from the identity, Z = (3 I - M / ||M||_F) / (2 sqrt(||M||_F)) (`sqrt_newton_schulz_minus`,
    numIters=1)."""
    norm = torch.linalg.matrix_norm(m)
    eye = torch.eye(len(m), dtype=m.dtype, device=m.device)
    z = (3 * eye - m / norm) / (2 * norm.sqrt())
    return z @ z


def hogsvd_pair(a: torch.Tensor, b: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The authors' higher-order GSVD of two matrices with equal column counts (`HOGSVD_fit`):
    S = (A^T A inv(B^T B) + B^T B inv(A^T A)) / 2 with `newton_schulz_inverse`, V the left singular
    vectors of S, and for X in (A, B): sigma = column norms of X V, U = X V / sigma."""
    grams = [a.T @ a, b.T @ b]
    s = (grams[0] @ newton_schulz_inverse(grams[1]) + grams[1] @ newton_schulz_inverse(grams[0])) / 2
    v = torch.linalg.svd(s)[0]
    us, sigmas = [], []
    for x in (a, b):
        xv = x @ v
        sigma = xv.norm(dim=0)
        us.append(xv / sigma.clamp_min(1e-12))
        sigmas.append(sigma)
    return us, sigmas


def gfk_kernel(source: torch.Tensor, target: torch.Tensor, source_dim: int) -> torch.Tensor:
    """The authors' geodesic flow kernel (`GFK.gfk_G`), D x D, from source = [P_s | R_s] ([D, source_dim]
    principal directions, then null-space directions) to target P_t:

        A = P_s^T P_t = V1 Gam V^T,  B = R_s^T P_t = U2 Sig V^T  (`hogsvd_pair`),  V2 = -U2,
        theta = arccos(Gam),  b1 = (1 + sin 2θ / 2θ) / 2,  b2 = (cos 2θ - 1) / (2 · 2θ),  b4 = (1 - sin 2θ / 2θ) / 2
        G = [P_s R_s] [[V1, 0], [0, V2]] [[b1, b2], [b2, b4]] [[V1, 0], [0, V2]]^T [P_s R_s]^T

    (2θ + 1e-12 in every denominator, as in the code)."""
    principal, null = source[:, :source_dim], source[:, source_dim:]
    (v1, u2), (gam, _) = hogsvd_pair(principal.T @ target, null.T @ target)
    theta = torch.arccos(gam.clamp(-1.0, 1.0))
    two = 2 * theta + 1e-12
    b1 = 0.5 * (1 + torch.sin(2 * theta) / two)
    b2 = 0.5 * (torch.cos(2 * theta) - 1) / two
    b4 = 0.5 * (1 - torch.sin(2 * theta) / two)
    x, y = principal @ v1, null @ -u2
    return (x * b1) @ x.T + (x * b2) @ y.T + (y * b2) @ x.T + (y * b4) @ y.T


def gfk_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The authors' GeoDL term (`GFK.fit(student, teacher)`): both L2-normalised, subspaces of dimension
    n - 2 (n rows) by `centred_pca_basis`, the student's extended by `NULL_DIRECTIONS` null-space columns,
    G = `gfk_kernel` (a constant: detached), and

        loss = mean_i (s_i - t_i)^T G (s_i - t_i).

    Fewer than 3 rows give no term (the authors' code fails there and its `except` drops both terms)."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    n, d = s.shape
    dim = min(n - 2, d - 1)  # at least one null direction (the code has none when n - 2 >= D)
    if dim < 1:
        return s.sum() * 0.0
    with torch.no_grad():
        principal = centred_pca_basis(s.double(), dim)
        source = torch.cat([principal, null_directions(principal, NULL_DIRECTIONS)], dim=1)
        g = gfk_kernel(source, centred_pca_basis(t.double(), dim), dim).to(s.dtype)
    diff = s - t
    return ((diff @ g) * diff).sum(-1).mean()


@dataclass
class GeoDLConfig(MethodConfig):
    alpha: float = 0.5  # weight of each geodesic term (the paper's code: --alpha 0.5)


@register_method
class GeoDL(WithTeacher):
    """GeoDL for CLIP as the founding paper's code runs it (Ding et al., 2022; yxding95/CL-CLIP at
    877a69f, methods/geodl.py `GeoDL.train` with methods/GFK_distill_normalise.py `GFK.fit`, public since
    2024-05-05; the distillation of Simon et al., 2021):

        loss = CE + alpha * gfk(student image features, teacher image features)
                  + alpha * gfk(student class-prompt features, teacher class-prompt features)

    gfk is `gfk_distillation`: mean (s - t)^T G (s - t) with G the geodesic flow kernel between the
    centred principal subspaces of the student's and the teacher's batch (dimension n - 2; the student's
    extended by 60 null-space directions), computed with the authors' approximate higher-order GSVD.
    As in the code, the image term is used when the image encoder trains and the text term (the classes
    seen so far) when the text encoder trains. Teacher: the model before this experience.

    Departures: G is computed in float64 (the code mixes float32 and float64, under fp16 autocast);
    which 60 of the null-space directions are kept is whatever the SVD returns (as in the code, where
    scipy's choice is as arbitrary); a zero column norm in the GSVD is clamped to 1e-12 (the code would
    give NaN); subspaces have at most D - 1 dimensions; the last, smaller batch of an epoch is used
    (the code drops it: `drop_last=True`); no gradient clipping (a training setting).
    """

    name = "geodl"
    version = 2
    Config = GeoDLConfig

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        total = torch.zeros((), device=strategy.mb_output.device)
        if cfg.part in ("whole", "image"):
            teacher = self.teacher_image_features(model, strategy.mb_x)
            total = total + gfk_distillation(model.last_image_features, teacher)
        if cfg.part in ("whole", "text"):
            total = total + gfk_distillation(model.class_text_features(), self.teacher_classes)
        return cfg.alpha * total
