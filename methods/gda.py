"""Gaussian discriminant analysis with one shared covariance, accumulated task by task, as LAMDA-CL's
ENGINE and BOFA compute it on normalised pre-projection image features.

Transcribed from `update_stat` in LAMDA-CL/ICCV25-ENGINE at 8803d66 (`utils/inc_net.py`, class
`Engine`) and LAMDA-CL/C3Box at 1378ab2 (`utils/inc_net.py`, class `BofaAdapter`; the same formula).
Per task, with x the task's L2-normalised features, mu_c its class means (class order) and Z the
class-centred features stacked by class (n rows, d columns):

    S = cov(Z)  (torch.cov: rows of Z^T are variables)
    P = d * pinv((n - 1) S + trace(S) I)                       the task's shrunk inverse covariance
    first task:  P_all = P
    later tasks: P_all = (k/t) P_all + ((t-k)/t) P + (k/t)((t-k)/t^2) (m_old - m_new)(m_old - m_new)^T
                 (k classes before, t after; m_old, m_new the means of the old and new class means)
    W = (mu P_all)^T  [d, C],   b_c = log(1/C) - mu_c P_all mu_c^T / 2,   logits = x W + b
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch


def task_statistics(features: torch.Tensor, labels: torch.Tensor, classes: range) -> Tuple[torch.Tensor, torch.Tensor]:
    """(class means [n_new, d], shrunk inverse covariance [d, d]) of one task's normalised features."""
    mu = torch.stack([features[labels == c].mean(dim=0) for c in classes])
    centred = torch.cat([features[labels == c] - mu[i] for i, c in enumerate(classes)])
    cov = centred.T.cov()
    d = centred.shape[1]
    eye = torch.eye(d, dtype=features.dtype, device=features.device)
    precision = d * torch.linalg.pinv((centred.shape[0] - 1) * cov + cov.trace() * eye)
    return mu, precision


def linear_head(mu: torch.Tensor, precision: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """W [d, C] and b [C] of the linear discriminant with equal priors."""
    prior = torch.full((mu.shape[0],), 1.0 / mu.shape[0], dtype=mu.dtype, device=mu.device)
    W = torch.einsum("nd,dc->cn", mu, precision)
    b = prior.log() - torch.einsum("nd,dc,nc->n", mu, precision, mu) / 2
    return W, b


class SharedCovarianceGDA:
    """The accumulated class means and shared inverse covariance; `logits(x)` = x W + b over every
    class learned so far (x normalised pre-projection features)."""

    def __init__(self) -> None:
        self.mu: Optional[torch.Tensor] = None
        self.precision: Optional[torch.Tensor] = None
        self.W: Optional[torch.Tensor] = None
        self.b: Optional[torch.Tensor] = None

    def update(self, features: torch.Tensor, labels: torch.Tensor, known: int, total: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add classes known..total-1 from their features; returns the task's own (W, b) (BOFA's
        `current_W`, `current_b`, which initialise its per-task head)."""
        mu, precision = task_statistics(features, labels, range(known, total))
        if self.mu is None:
            self.mu, self.precision = mu, precision
        else:
            gap = self.mu.T.mean(dim=1, keepdim=True) - mu.T.mean(dim=1, keepdim=True)
            k, t = known, total
            self.precision = (k / t) * self.precision + (t - k) / t * precision + ((k / t) * (t - k) / t ** 2) * gap @ gap.T
            self.mu = torch.cat([self.mu, mu])
        self.W, self.b = linear_head(self.mu, self.precision)
        return linear_head(mu, precision)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        assert self.W is not None, "GDA has learned no class"
        return features @ self.W.to(features) + self.b.to(features)

    def state_dict(self) -> Dict[str, Any]:
        return {k: None if v is None else v.cpu() for k, v in
                (("mu", self.mu), ("precision", self.precision), ("W", self.W), ("b", self.b))}

    def load_state_dict(self, state: Dict[str, Any], device) -> None:
        for k in ("mu", "precision", "W", "b"):
            setattr(self, k, None if state[k] is None else state[k].to(device))
