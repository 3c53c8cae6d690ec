"""GeoDL: geodesic distillation (Simon, Koniusz & Harandi, CVPR 2021), as the founding paper adapts it."""

from dataclasses import dataclass

import torch

from .base import MethodConfig, WithTeacher, register_method


def principal_subspace(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal basis [D, dim] of the span of the top `dim` right singular vectors of features [n, D]."""
    _, _, vh = torch.linalg.svd(features, full_matrices=False)
    return vh[:dim].T


def geodesic_flow_kernel(p1: torch.Tensor, p2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """G = integral over t in [0, 1] of Phi(t) Phi(t)^T, Phi the geodesic from span(p1) to span(p2)
    on the Grassmannian (Gong et al., CVPR 2012), in closed form.

    With p1^T p2 = U diag(cos theta) V^T: a = p1 U, b = p2 V, E = (b - a cos theta) / sin theta,
    Phi(t) = a cos(t theta) + E sin(t theta), so Phi(0) spans p1 and Phi(1) = b spans p2.
    """
    u, cos, vh = torch.linalg.svd(p1.T @ p2)
    cos = cos.clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    a, b = p1 @ u, p2 @ vh.T
    sin = torch.sin(theta)
    moving = sin > eps
    e = torch.where(moving, (b - a * cos) / torch.where(moving, sin, torch.ones_like(sin)), torch.zeros_like(b))
    safe = torch.where(moving, theta, torch.ones_like(theta))
    i_cc = torch.where(moving, 0.5 + torch.sin(2 * safe) / (4 * safe), torch.ones_like(theta))
    i_ss = torch.where(moving, 0.5 - torch.sin(2 * safe) / (4 * safe), torch.zeros_like(theta))
    i_cs = torch.where(moving, (1 - torch.cos(2 * safe)) / (4 * safe), torch.zeros_like(theta))
    return (a * i_cc) @ a.T + (a * i_cs) @ e.T + (e * i_cs) @ a.T + (e * i_ss) @ e.T


def geodesic_distance(student: torch.Tensor, teacher: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """mean_i (1 - sim_G(t_i, s_i)), sim_G(x, y) = x^T G y / sqrt(x^T G x * y^T G y), with G the flow
    kernel from the teacher's to the student's batch subspace (`dim` 0: min(n - 1, D / 2), at least 1)."""
    n, d = student.shape
    dim = dim or max(1, min(n - 1, d // 2))
    with torch.no_grad():  # the subspaces are taken as constants: SVD gradients are unstable at ties
        g = geodesic_flow_kernel(principal_subspace(teacher.float(), dim), principal_subspace(student.detach().float(), dim))
    ts = ((teacher @ g) * student).sum(-1)
    tt = ((teacher @ g) * teacher).sum(-1).clamp_min(1e-12)
    ss = ((student @ g) * student).sum(-1).clamp_min(1e-12)
    return (1 - ts / torch.sqrt(tt * ss)).mean()


@dataclass
class GeoDLConfig(MethodConfig):
    alpha: float = 0.5  # weight of each geodesic term (the paper's code: --alpha 0.5)
    subspace_dim: int = 0  # 0: min(rows - 1, D / 2)


@register_method
class GeoDL(WithTeacher):
    """GeoDL for CLIP (Ding et al., 2022, Sec. 5; code: yxding95/CL-CLIP methods/geodl.py; the
    distillation of Simon et al., 2021).

    loss = CE + alpha * d_G(image features) + alpha * d_G(class-prompt text features), where
    d_G(s, t) = mean_i (1 - sim_G(t_i, s_i)) compares teacher and student features along the
    geodesic between their batch subspaces (`geodesic_distance`). Like the paper's code, the image
    term is used when the image encoder trains and the text term (over the classes seen so far)
    when the text encoder trains. Teacher: the model before this experience.

    Departures: the GFK helper of the authors' code is not public, so the kernel is computed here in
    closed form (Gong et al., 2012) with subspaces from the SVD of each batch's features, treated as
    constants in the backward pass; features are L2-normalised first (the cosine is scale-free per
    sample, the subspace is not); no gradient clipping.
    """

    name = "geodl"
    version = 1
    Config = GeoDLConfig

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        total = torch.zeros((), device=strategy.mb_output.device)
        if cfg.part in ("whole", "image"):
            teacher = self.teacher_image_features(model, strategy.mb_x)
            total = total + geodesic_distance(model.last_image_features, teacher, cfg.subspace_dim)
        if cfg.part in ("whole", "text") and model.num_active > 1:
            total = total + geodesic_distance(model.class_text_features(), self.teacher_classes, cfg.subspace_dim)
        return cfg.alpha * total
