"""AREA (Xie, Shi, Zhou, "AREA: Attribute Extraction and Aggregation for CLIP-Based Class-Incremental Learning",
ICML 2026): per-class geodesic bases of image features and description texts, per-task scoring experts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, require_choice, register_method
from .descriptions import resolve
from .toolkit import raw_image_features

REPO = "LAMDA-CL/ICML2026-AREA at 1490acc35e3e512e333e2764b1a98c0235545237"

NEEDS_FILE = ("needs methods.area.descriptions: the folder of LLM/VLM-written descriptions, as the authors' "
              "descriptions/<dataset>/ (generated_descriptions, _aug, _occ: one <class>_descriptions.txt each)")

SUBFOLDERS = ("generated_descriptions", "generated_descriptions_occ", "generated_descriptions_aug")


def description_file(folder: Path, class_name: str) -> Path:
    """`<class name, " " and "/" as "_">_descriptions.txt`, the code's file naming."""
    return folder / (class_name.replace(" ", "_").replace("/", "_") + "_descriptions.txt")


def load_descriptions(root: str, class_names: List[str]) -> Dict[str, Dict[str, List[str]]]:
    """{subfolder: {class: lines}}; each line stripped as the code reads it (the authors' lines start with the
    image file name and a tab, which the code keeps in the text)."""
    base = resolve(root)
    if not base.is_dir():
        raise ClipbenchError(f"methods.area.descriptions: {base} is not a folder")
    out: Dict[str, Dict[str, List[str]]] = {}
    for sub in SUBFOLDERS:
        out[sub] = {}
        for c in class_names:
            file = description_file(base / sub, c)
            try:
                lines = [s.strip() for s in file.read_text(encoding="utf-8").splitlines() if s.strip()]
            except OSError:
                raise ClipbenchError(f"methods.area.descriptions: missing {file} (one file per class and folder)") from None
            if not lines:
                raise ClipbenchError(f"methods.area.descriptions: {file} is empty")
            out[sub][c] = lines
    return out


# ---------------------------------------------------------------------------------------------- cores

def log_map(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """`Learner.log_map`: the sphere's log map at mu of rows x (as given, not renormalised):
    theta = acos(clamp(x.mu, -1 + 1e-6, 1 - 1e-6)), u = theta / (sin theta + 1e-6) * (x - (x.mu) mu), the factor
    1 where theta <= 1e-4."""
    cos = torch.clamp(x @ mu.reshape(-1), -1.0 + 1e-6, 1.0 - 1e-6)
    theta = torch.acos(cos)
    coeff = theta / (torch.sqrt(1 - cos ** 2) + 1e-6)
    scaling = torch.where(theta > 1e-4, coeff, torch.ones_like(coeff))
    return scaling[:, None] * (x - cos[:, None] * mu.reshape(1, -1))


def geodesic_basis(features: torch.Tensor, k: int) -> torch.Tensor:
    """`_get_visual_base_matrix` / `_get_textual_base_matrix` for one class: mu = normalise(mean), the top-k right
    singular vectors of log_map(features, mu) as columns [D, k] (zero columns where there are fewer than k)."""
    mu = F.normalize(features.mean(dim=0, keepdim=True), dim=-1)
    _, _, vh = torch.linalg.svd(log_map(features, mu), full_matrices=False)
    out = torch.zeros(features.shape[1], k, dtype=features.dtype)
    top = vh[:k].T
    out[:, :top.shape[1]] = top
    return out


def sinkhorn_distance(cost: torch.Tensor, iterations: int = 50, eps: float = 0.1) -> torch.Tensor:
    """`Learner._sinkhorn_distance` on costs [B, N] per row: mu = 1, nu = 1/N, log K = -cost / eps, 50 rounds of
    f = log mu - logsumexp(g + log K), g = log nu - (f + log K) (the code's g update, element-wise);
    returns f mu + sum g nu [B]."""
    b, n = cost.shape
    mu = torch.ones(b, 1, dtype=cost.dtype)
    nu = torch.ones(b, n, dtype=cost.dtype) / n
    g = torch.zeros(b, n, dtype=cost.dtype)
    f = torch.zeros(b, 1, dtype=cost.dtype)
    log_k = -cost / eps
    for _ in range(iterations):
        f = torch.log(mu) - torch.logsumexp(g + log_k, dim=1, keepdim=True)
        g = torch.log(nu) - (f + log_k)
    return (f * mu).sum(dim=1) + (g * nu).sum(dim=1)


def route(features: torch.Tensor, task_bases: List[torch.Tensor], largest: bool = True) -> torch.Tensor:
    """`get_most_similar_task` per row: cost = 1 - cos(feature, each basis vector of the task's classes
    [(C_t K), D]); the task of the largest Sinkhorn value (the code's argmax; `largest=False`: the smallest)."""
    q = F.normalize(features, dim=1)
    dists = torch.stack([sinkhorn_distance(1.0 - q @ F.normalize(b.permute(0, 2, 1).reshape(-1, b.shape[1]), dim=1).T)
                         for b in task_bases], dim=1)  # [B, tasks]
    return dists.argmax(dim=1) if largest else dists.argmin(dim=1)


def area_logits(image: torch.Tensor, text: torch.Tensor, v_basis: torch.Tensor, t_basis: torch.Tensor,
                v_adapter: nn.Linear, t_adapter: nn.Linear, v_s: nn.Linear, t_s: nn.Linear,
                scale: torch.Tensor) -> torch.Tensor:
    """`Area.forward` / `forward_inference`: per image b and class c,
    img_bc = A_v x_b + V_c S_v x_b,  txt_c = A_t t_c + T_c S_t t_c,  each / (||.|| + 1e-6);  logit = scale img.txt."""
    img = v_adapter(image)[:, None, :] + torch.einsum("cdk,bk->bcd", v_basis, v_s(image))
    txt = t_adapter(text) + torch.einsum("cdk,ck->cd", t_basis, t_s(text))
    img = img / (img.norm(dim=-1, keepdim=True) + 1e-6)
    txt = txt / (txt.norm(dim=-1, keepdim=True) + 1e-6)
    return torch.einsum("bcd,cd->bc", img, txt) * scale


def occlude(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """`_generate_occluded_inputs`: per image, a rectangle of area rho H W (rho ~ U(0.1, 0.4)) and aspect eta
    (U(0.33, 3)) at a uniform position, filled with U(0, 1) noise (in the normalised input, as the code).
    `u` [B, 4]: uniform numbers for rho, eta, row, column. A uint8 input (the mini model's, prepared inside its
    tower) gets uniform pixels 0-255."""
    b, c, h, w = x.shape
    out = x.clone()
    for i in range(b):
        rho = 0.1 + 0.3 * float(u[i, 0])
        eta = 0.33 + (3.0 - 0.33) * float(u[i, 1])
        area = int(rho * h * w)
        hh = min(max(int((area * eta) ** 0.5), 1), h)
        ww = min(max(int((area / eta) ** 0.5), 1), w)
        top = min(int(float(u[i, 2]) * (h - hh + 1)), h - hh)
        left = min(int(float(u[i, 3]) * (w - ww + 1)), w - ww)
        noise = torch.rand(c, hh, ww, device=x.device)
        out[i, :, top:top + hh, left:left + ww] = noise.to(x.dtype) if x.is_floating_point() else (noise * 255).to(x.dtype)
    return out


class AreaHead(nn.Module):
    """`Area`'s own parameters: the shared residual adapters and one K-dim visual / textual expert per task."""

    def __init__(self, dim: int, k: int, tasks: int):
        super().__init__()
        self.visual_adapter = nn.Linear(dim, dim, bias=False)
        self.textual_adapter = nn.Linear(dim, dim, bias=False)
        self.visual_S = nn.ModuleList(nn.Linear(dim, k, bias=False) for _ in range(tasks))
        self.textual_S = nn.ModuleList(nn.Linear(dim, k, bias=False) for _ in range(tasks))


@dataclass
class AreaConfig(MethodConfig):
    descriptions: str = ""  # folder with generated_descriptions{,_occ,_aug}/<class>_descriptions.txt; "" = n/a
    k: int = 16  # basis size K
    vib_lambda: float = 1.0  # weight of the occlusion and consistency losses
    samples_per_class: int = 4  # Gaussian pseudo-features per old class per batch
    views: int = 3  # augmented views M
    name_template: str = "a good photo of a {c}."  # `_get_class_name_features`
    clean_template: str = "a photo of a {c}."  # the occlusion loss's clean text
    future_bases: bool = True  # the code's quirk: every class's visual basis from its training images before task 0
    routing: str = "argmax"  # the code takes the task of the largest Sinkhorn value; "argmin": the smallest

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("methods.area.routing", self.routing, ("argmax", "argmin"))
        if self.k < 1 or self.views < 1 or self.samples_per_class < 0 or self.vib_lambda < 0:
            raise ClipbenchError("methods.area needs k >= 1, views >= 1, samples_per_class >= 0, vib_lambda >= 0")


@register_method
class AREA(Method):
    """AREA (ICML 2026). Code: LAMDA-CL/ICML2026-AREA at 1490acc35e3e512e333e2764b1a98c0235545237: `models/area.py::
    Learner` (`log_map`, `_get_visual_base_matrix`, `_get_textual_base_matrix`, `incremental_train`, `train`,
    `_update_stat`, `sample`, `get_most_similar_task`, `_eval_cnn`, `_generate_occluded_inputs`,
    `_compute_cost_matrix`, `_sinkhorn_distance`), `utils/inc_net.py::Area` (`append_S`, `forward`,
    `forward_inference`, `_get_visual_score`, `_get_textual_score`, `analyze_mean_cov`), `exps/area/cifar_0_10.json`.

    CLIP is frozen; features are its raw (unnormalised) outputs. Bases: per class, the top-K right singular vectors
    of the log map (at the normalised mean) of (a) its training images' features and (b) its description texts'
    features. Per task t: experts S_v^t, S_t^t (Linear D -> K, bias-free; a new task's start as the previous
    task's); shared residual adapters A_v, A_t (Linear D -> D). Logits over the classes seen (`area_logits`):
    exp(logit_scale) cos(A_v x + V_c S_v x, A_t t_c + T_c S_t t_c), t_c the text of "a good photo of a {c}.". From
    task 1 on, each batch gets 4 Gaussian pseudo-features of every old class (mean, covariance + 1e-4 I of raw
    features). Loss = CE + vib_lambda (L_occ + L_cons): L_occ = mean relu(S_v occluded - S_v clean) + mean
    relu(S_t occ-description - S_t "a photo of a {c}."); L_cons = sum over 3 views of L1(S_v view, mean) +
    L1(S_t aug-description, mean), views by flip and colour jitter of the whole batch, descriptions drawn from the
    files of the batch's **first** sample's class. Inference: each image goes to the task of the largest Sinkhorn
    value against that task's bases (`route`), then that task's experts score every seen class. No exemplars.

    Quirks kept, each a setting where it can be one: the visual bases use every class's training images before
    task 0, future classes included (`future_bases`; false: each class's when its task starts); routing takes the
    largest Sinkhorn value (`routing`); this Sinkhorn's value reduces to mean(cost) / 0.1 - log N, so the routed
    task is the one whose bases are least similar on average (with equal task sizes); description lines keep
    their leading "<image file>\\t"; occlusion noise and colour jitter act on normalised inputs.
    Departures: the code's `_get_class_name_features` empties its class list before use (the committed code cannot
    run): the protocol's class names are used; the bases' images take the evaluation transform (the code: its
    training transform, batch 1); a class with fewer images or descriptions than K gets zero basis columns;
    GDA (`g_lambda`, 0 in every config) is not built; occlusion draws come from torch's generator (the code: numpy);
    description texts are encoded once at setup (frozen text tower: the same features); the schedule, optimizer
    and epochs are the suite's (`REFERENCE`: SGD 0.03, momentum 0.9, wd 0.01, MultiStepLR [15, 28], 40 epochs,
    batch 64); classes not learned yet score below every learned class; held-out sets see the frozen CLIP.
    The description folder is the user's (the authors ship part of theirs, written by a VLM through
    `descriptions/generate_descriptions.py`); without it the method is not applicable.
    """

    name = "area"
    version = 1
    Config = AreaConfig
    scores_raw_features = True
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.03, "weight_decay": 0.01, "batch_size": 64,
                      "epochs": 40}

    @classmethod
    def not_applicable(cls, spec) -> Optional[str]:
        config = getattr(spec, "method_config", None) or {}
        return None if config.get("descriptions") else NEEDS_FILE

    # ---- setup
    @torch.no_grad()
    def _text(self, strings: List[str]) -> torch.Tensor:
        model = self.model
        return torch.cat([model.clip.encode_text(model.tokenizer(strings[s:s + 256]).to(self.device)).float()
                          for s in range(0, len(strings), 256)])

    def setup(self, model, streams) -> None:
        if not self.config.descriptions:
            raise ClipbenchError(NEEDS_FILE)
        cfg = self.config
        self.model, self.streams = model, streams
        self.class_names = list(streams.class_names)
        docs = load_descriptions(cfg.descriptions, self.class_names)
        self.device = model.prompt_tokens.device
        self.text = self._text([cfg.name_template.format(c=c) for c in self.class_names])  # [C, D] raw
        dim = self.text.shape[1]
        self.t_basis = torch.stack([geodesic_basis(self._text(docs[SUBFOLDERS[0]][c]).cpu(), cfg.k)
                                    for c in self.class_names]).to(self.device)
        self.occ = {c: self._text(docs[SUBFOLDERS[1]][c]) for c in self.class_names}
        self.aug = {c: self._text(docs[SUBFOLDERS[2]][c]) for c in self.class_names}
        self.clean = self._text([cfg.clean_template.format(c=c) for c in self.class_names])
        self.v_basis = torch.zeros(len(self.class_names), dim, cfg.k, device=self.device)
        if cfg.future_bases:
            for exp in range(streams.n_experiences):
                self._fit_bases(streams.train[exp])
        self.head = AreaHead(dim, cfg.k, streams.n_experiences).to(self.device)
        model.clip.add_module("area", self.head)
        self.means: List[torch.Tensor] = []
        self.covs: List[torch.Tensor] = []
        self.learned = 0
        self.task_sizes = [0]
        method = self

        def forward(images: torch.Tensor) -> torch.Tensor:
            return method.train_forward(images)

        model.forward = forward

    def _fit_bases(self, data) -> None:
        feats = raw_image_features(self.model, data.images, self.device)
        for c in data.labels.unique().tolist():
            self.v_basis[c] = geodesic_basis(feats[data.labels == c], self.config.k).to(self.v_basis)

    # ---- training
    def trainable_parameters(self, model) -> List[nn.Parameter]:
        t, h = self.learned, self.head
        return (list(h.visual_adapter.parameters()) + list(h.textual_adapter.parameters())
                + list(h.visual_S[t].parameters()) + list(h.textual_S[t].parameters()))

    def before_training_exp(self, strategy, **kwargs):
        t = self.learned
        if not self.config.future_bases:
            self._fit_bases(self.streams.train[strategy.experience.current_experience])
        if t > 0:  # `append_S`: the new experts start as the previous ones
            with torch.no_grad():
                self.head.visual_S[t].weight.copy_(self.head.visual_S[t - 1].weight)
                self.head.textual_S[t].weight.copy_(self.head.textual_S[t - 1].weight)
        self.chol = [torch.linalg.cholesky(c.cpu()).to(self.device) for c in self.covs]
        strategy._criterion = _no_cross_entropy  # the CE over real and pseudo rows is in `loss`

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.clip.encode_image(x).float()

    def train_forward(self, images: torch.Tensor) -> torch.Tensor:
        model, h, t = self.model, self.head, self.learned
        x = model.preprocess(images)
        feats = self._encode(x)
        pseudo_y = None
        if self.means and self.config.samples_per_class:
            n = self.config.samples_per_class
            order = torch.randperm(len(self.means)).tolist()  # the code shuffles the old classes every epoch
            pseudo = [torch.randn(n, feats.shape[1], device=feats.device) @ self.chol[c].T + self.means[c] for c in order]
            feats = torch.cat([feats] + pseudo)
            pseudo_y = torch.cat([torch.full((n,), c, dtype=torch.long, device=feats.device) for c in order])
        c = model.num_active
        scale = model.clip.logit_scale.exp().detach()
        logits = area_logits(feats, self.text[:c], self.v_basis[:c], self.t_basis[:c], h.visual_adapter,
                             h.textual_adapter, h.visual_S[t], h.textual_S[t], scale)
        self.batch = (x, logits, pseudo_y)
        return logits[:len(images)]

    def loss(self, strategy) -> torch.Tensor:
        cfg, h, t = self.config, self.head, self.learned
        x, logits, pseudo_y = self.batch
        y = strategy.mb_y if pseudo_y is None else torch.cat([strategy.mb_y, pseudo_y])
        total = F.cross_entropy(logits, y)
        if cfg.vib_lambda == 0:
            return total
        v_s, t_s = h.visual_S[t], h.textual_S[t]
        first = self.class_names[int(strategy.mb_y[0])]
        clean = v_s(self._encode(x))
        occluded = v_s(self._encode(occlude(x, torch.rand(len(x), 4))))
        occ_text = self.occ[first][torch.randint(len(self.occ[first]), (1,))]
        clean_text = self.clean[self.class_names.index(first)][None]
        loss_mask = torch.relu(occluded - clean).mean() + torch.relu(t_s(occ_text) - t_s(clean_text)).mean()
        views, texts = [], []
        for _ in range(cfg.views):
            views.append(v_s(self._encode(self._augment(x))))
            texts.append(t_s(self.aug[first][torch.randint(len(self.aug[first]), (1,))]))
        mean_view, mean_text = torch.stack(views).mean(0), torch.stack(texts).mean(0)
        loss_cons = sum(F.l1_loss(v, mean_view) + F.l1_loss(s, mean_text) for v, s in zip(views, texts))
        return total + cfg.vib_lambda * (loss_mask + loss_cons)

    @staticmethod
    def _augment(x: torch.Tensor) -> torch.Tensor:
        """RandomHorizontalFlip(0.5) then ColorJitter(0.2, 0.2, 0.2, 0.1) on the whole batch tensor (one draw
        for the batch, as torchvision applies them to a tensor)."""
        import torchvision.transforms as T

        return T.Compose([T.RandomHorizontalFlip(p=0.5), T.ColorJitter(0.2, 0.2, 0.2, 0.1)])(x)

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        data = self.streams.train[exp]
        feats = raw_image_features(self.model, data.images, self.device).to(self.device)
        for c in sorted(data.labels.unique().tolist()):  # `analyze_mean_cov`
            rows = feats[data.labels.to(self.device) == c]
            self.means.append(rows.mean(dim=0))
            self.covs.append(torch.cov(rows.T) + 1e-4 * torch.eye(rows.shape[1], device=rows.device))
        self.learned += 1
        self.task_sizes.append(self.streams.experience_classes[exp][-1] + 1)
        self.batch = None

    # ---- evaluation
    @torch.no_grad()
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.learned or len(image_features) == 0:
            return None
        h, n = self.head, self.task_sizes[-1]
        feats = image_features.float().to(self.device)
        bases = [self.v_basis[self.task_sizes[i]:self.task_sizes[i + 1]].cpu() for i in range(self.learned)]
        tasks = route(feats.cpu(), bases, largest=self.config.routing == "argmax")
        scale = self.model.clip.logit_scale.exp()
        seen = torch.empty(len(feats), n)
        for t in tasks.unique().tolist():
            rows = tasks == t
            seen[rows] = area_logits(feats[rows.to(feats.device)], self.text[:n], self.v_basis[:n], self.t_basis[:n],
                                     h.visual_adapter, h.textual_adapter, h.visual_S[t], h.textual_S[t], scale).cpu()
        out = torch.empty(len(feats), len(class_features))
        out[:, :n] = seen
        out[:, n:] = seen.min(dim=1, keepdim=True).values - 1
        return out

    def inference_extras(self) -> str:
        return "per-class visual and description bases (K columns each), Sinkhorn task routing per image"

    def state_dict(self) -> Dict[str, Any]:
        return {"learned": self.learned, "task_sizes": self.task_sizes, "v_basis": self.v_basis.cpu(),
                "means": [m.cpu() for m in self.means], "covs": [c.cpu() for c in self.covs]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.learned, self.task_sizes = state["learned"], list(state["task_sizes"])
        self.v_basis = state["v_basis"].to(self.device)
        self.means = [m.to(self.device) for m in state["means"]]
        self.covs = [c.to(self.device) for c in state["covs"]]


def _no_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.new_zeros(())
