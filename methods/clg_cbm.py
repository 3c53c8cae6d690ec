"""CLG-CBM (Yu et al., "Language Guided Concept Bottleneck Models for Interpretable Continual Learning", CVPR 2025)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, register_method
from .descriptions import resolve

REPO = "FisherCats/CLG-CBM at cdd26ceb9f13ee7295d6c4669356092b9717e47a"

NEEDS_FILE = ("needs methods.clg_cbm.concepts: the LLM-written concept file, a JSON {class: [concepts]} as the "
              "authors' data/<dataset>/*_cpts.json (numeric keys with methods.clg_cbm.class_names_file)")


# ---------------------------------------------------------------------------------------------- the concept file

def _loose(name: str) -> str:
    return name.lower().replace("_", " ").strip()


def load_concepts(path: str, names_path: str, class_names: List[str]) -> Dict[str, List[str]]:
    """Concept lists per protocol class from the authors' format: `{"<label id>": [concept, ...]}` with a
    `{"<label id>": class name}` file (`data/<dataset>/*_label2class.json`), or `{class name: [concepts]}`.
    Names match exactly, or after lower-casing and reading "_" as " "."""
    what = "methods.clg_cbm.concepts"

    def read(p: str, label: str) -> Any:
        file = resolve(p)
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except OSError as err:
            raise ClipbenchError(f"{label}: cannot read {file}: {err.strerror or err}") from None
        except ValueError as err:
            raise ClipbenchError(f"{label}: {file} is not JSON: {err}") from None

    doc = read(path, what)
    if not isinstance(doc, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                            for v in doc.values()):
        raise ClipbenchError(f"{what}: must be a JSON object {{class: [concept, ...]}}")
    if names_path:
        names = read(names_path, "methods.clg_cbm.class_names_file")
        if not isinstance(names, dict):
            raise ClipbenchError("methods.clg_cbm.class_names_file: must be a JSON object {label id: class name}")
        doc = {str(names[k]): v for k, v in doc.items() if k in names}
    loose = {_loose(k): k for k in doc}
    out = {}
    for c in class_names:
        key = c if c in doc else loose.get(_loose(c))
        if key is None or not doc[key]:
            raise ClipbenchError(f"{what}: no concepts for class {c!r} (keys must be the protocol's class names, or "
                                 f"label ids with class_names_file; the file has e.g. {sorted(doc)[:3]})")
        out[c] = doc[key]
    return out


# ---------------------------------------------------------------------------------------------- cores

def mahalanobis_mean(x: torch.Tensor, mu: torch.Tensor, sigma_inv: torch.Tensor) -> torch.Tensor:
    """`Player.mahalanobis_distance` at stage 0: mean_i (x_i - mu) Sigma^-1 (x_i - mu)^T (squared, no root)."""
    d = x - mu[None]
    return torch.diag(d @ sigma_inv @ d.T).mean()


def search_regulariser(weight: torch.Tensor, mu: torch.Tensor, sigma_inv: torch.Tensor, mean_distance: float,
                       power: float) -> torch.Tensor:
    """`Player._compute_loss('mahalanobis')`: |(mahal(W / ||W||_row) - mean_distance) / mean_distance^power|,
    the row norms taken without gradient (`weight.data.norm`)."""
    w = weight / weight.detach().norm(dim=-1, keepdim=True)
    return torch.abs((mahalanobis_mean(w, mu, sigma_inv) - mean_distance) / mean_distance ** power)


def select_concepts(centers: torch.Tensor, embeddings: torch.Tensor, k: int) -> List[int]:
    """`Player.cluster`'s selection: for each gate centre (normalised) in order, the nearest (squared L2)
    concept embedding not chosen yet; the first `k` choices."""
    chosen: List[int] = []
    for center in centers:
        c = center / center.norm()
        distances = ((embeddings - c[None]) ** 2).sum(dim=1)
        for j in torch.argsort(distances, stable=True).tolist():
            if j not in chosen:
                chosen.append(j)
                break
    return chosen[:k]


def similarity_loss(inputs: torch.Tensor, bottleneck: torch.Tensor, csv: torch.Tensor) -> torch.Tensor:
    """`Player._similiarity_loss`: t = (x B^T)^3, c = csv^3, each column L2-normalised over the batch;
    -mean_j sum_i c_ij t_ij."""
    t = (inputs.float() @ bottleneck.T) ** 3
    c = csv ** 3
    t = t / torch.norm(t, p=2, dim=0, keepdim=True)
    c = c / torch.norm(c, p=2, dim=0, keepdim=True)
    return -torch.sum(c * t, dim=0).mean()


def sparse_linear_loss(weights: List[torch.Tensor], lam: float = 0.001, alpha: float = 0.99) -> torch.Tensor:
    """`Player._sparse_linear_loss`: elastic net lam * alpha * |W|_1 + lam * (1 - alpha) / 2 * |W|_2^2 over the
    stacked class-head weights."""
    w = torch.cat(weights)
    return lam * alpha * w.norm(p=1) + 0.5 * lam * (1 - alpha) * (w ** 2).sum()


def explain(x: torch.Tensor, explainer: nn.Linear, unity: nn.ModuleList) -> Tuple[torch.Tensor, torch.Tensor]:
    """`PrototypicalNet.forward_explainer`: csv = explainer(x / ||x||); logits = [fc(csv) for each task's fc]."""
    csv = explainer(x / x.norm(dim=1, keepdim=True))
    return torch.cat([fc(csv) for fc in unity], dim=1), csv


def expand_linear(old: Optional[nn.Linear], in_features: int, out_features: int, rows: bool) -> nn.Linear:
    """A fresh bias-free Linear (default init) holding `old`'s weight in its first rows (`rows`) or columns
    (`update_explainer`)."""
    new = nn.Linear(in_features, out_features, bias=False)
    if old is not None:
        with torch.no_grad():
            if rows:
                new.weight[:old.out_features] = old.weight
            else:
                new.weight[:, :old.in_features] = old.weight
    return new


# ---------------------------------------------------------------------------------------------- the method

@dataclass
class CLGCBMConfig(MethodConfig):
    concepts: str = ""  # the concept file (path or bundled:<file>); "" = n/a
    class_names_file: str = ""  # {"<label id>": name} when the concept file's keys are label ids
    concept_prefix: str = "A bad photo of an object with "  # `DataManager.get_prefix` (cifar100's)
    name_template: str = "A photo of a {c}"  # `Player.cluster`'s class-name prompt (cifar100's)
    pool: float = 10  # concepts kept per new class
    epochs: int = 31  # concept search (gate) epochs
    lr: float = 0.01  # concept search Adam lr
    fb_epochs: int = 61  # FB_epoch: bottleneck + heads, first task
    fb_epochs_inc: int = 61  # FB_epoch_inc: later tasks
    fb_lr: float = 1e-3  # FB_lr_init
    fb_lr_inc: float = 1e-3  # FB_lr_inc
    milestones: List[int] = field(default_factory=lambda: [30, 40, 50])
    sg_num: int = 1  # Gaussian pseudo-features per old class drawn (two old classes per batch)
    sim: float = 1.0  # weight of the concept-alignment loss
    division_power: float = 5  # of the Mahalanobis regulariser
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool <= 0 or self.batch_size < 1 or min(self.epochs, self.fb_epochs, self.fb_epochs_inc, self.sg_num) < 0:
            raise ClipbenchError("methods.clg_cbm needs pool > 0, batch_size >= 1 and epochs, sg_num >= 0")


@register_method
class CLGCBM(Method):
    """CLG-CBM (Yu et al., CVPR 2025). Code: FisherCats/CLG-CBM at cdd26ceb9f13ee7295d6c4669356092b9717e47a:
    `models/clgcbm.py::Player` (`incremental_train`, `cluster`, `building_protos`, `_compute_relations`,
    `_build_feature_set`, `_train`, `_train_function`, `_similiarity_loss`, `_sparse_linear_loss`,
    `_sample_gussian`, `_sample`, `_compute_loss`, `mahalanobis_distance`), `utils/inc_net.py`
    (`PrototypicalNet.update_explainer`, `forward_explainer`; `Gateway.generate_gate`),
    `utils/data_manager.py::get_attributes`, `get_prefix`, `exps/10,10_cifar100.json`. C3Box's port
    (`models/clg_cbm.py`) runs open_clip LAION instead of OpenAI CLIP.

    CLIP is frozen; everything learns on normalised image features. Per task with n new classes:
    1. Concept search: the new classes' concepts (from the user's concept file) are embedded as "<prefix>
       <concept>" (normalised CLIP text); mu and Sigma^-1 of those embeddings; a gate Linear(D, A) -> BN(A) ->
       Linear(A, n) (A candidates) trains `epochs` epochs (Adam `lr`) with CE on the new classes +
       |(mahal(W0 / ||W0||) - mean mahal) / mean mahal^division_power|; for each row of W0 the nearest unchosen
       concept is taken, the first pool * n kept, and appended to the bottleneck B.
    2. Class statistics: mean and covariance (+ 1e-4 I) of each new class's features. Old classes (tasks >= 1)
       get translated features: each old class c is related to the new class r whose mean is nearest to c's
       name embedding ("A photo of a {c}"); r's features - mean_r + mean_c, labelled c.
    3. Bottleneck and heads: the explainer Linear(D, |B|) (bias-free, old rows kept) and one bias-free head per
       task over all concepts (old heads keep their weights on old concepts, new columns fresh) train
       `fb_epochs` (later tasks `fb_epochs_inc`) epochs, Adam `fb_lr`, MultiStepLR(milestones, 0.1) per epoch,
       on new + translated features plus, per batch, `sg_num` Gaussian samples of two old classes (a fixed
       shuffle of the old classes, walked two per batch). Loss = CE + sim * alignment(csv, (x B^T)^3) +
       elastic net on the heads. Inference: logits = heads(explainer(x)) over the classes seen. No exemplars.

    The concept file is the user's (the authors ship GPT-4o lists for CIFAR-100, CUB, Cars, Flowers, Food,
    ImageNet-100, Tiny-ImageNet under `data/`, keyed by label id with a `*_label2class.json`); without it the
    method is not applicable. Departures: the code keeps the epoch with the best **test** accuracy (checked
    every 10 epochs, with early stopping of the search on no gain); clipbench keeps the last epoch of each
    stage (no test data in training); Sigma^-1 falls back to the pseudo-inverse where the concept covariance is
    singular (fewer concepts than dimensions; the code's `torch.linalg.inv` would fail or return noise); a final
    batch of one sample is skipped in the gate's epochs (its BatchNorm cannot train on one sample; the code
    would fail); the prefix and name prompt are CIFAR-100's (`concept_prefix`, `name_template`); the backbone
    is the suite's (the authors: OpenAI ViT-B/16); classes not learned yet score below every learned class;
    the held-out sets see the frozen CLIP.
    """

    name = "clg_cbm"
    version = 1
    Config = CLGCBMConfig
    trains = False

    @classmethod
    def not_applicable(cls, spec) -> Optional[str]:
        config = getattr(spec, "method_config", None) or {}
        return None if config.get("concepts") else NEEDS_FILE

    def setup(self, model, streams) -> None:
        if not self.config.concepts:
            raise ClipbenchError(NEEDS_FILE)
        self.model, self.streams = model, streams
        self.class_names = list(streams.class_names)
        self.concepts = load_concepts(self.config.concepts, self.config.class_names_file, self.class_names)
        self.device = model.prompt_tokens.device
        self.bottleneck: Optional[torch.Tensor] = None
        self.raw_concepts: List[str] = []
        self.protos: List[torch.Tensor] = []
        self.covs: List[torch.Tensor] = []
        self.explainer: Optional[nn.Linear] = None
        self.unity = nn.ModuleList()
        self.n_seen = 0

    @torch.no_grad()
    def _text(self, strings: List[str]) -> torch.Tensor:
        model = self.model
        return torch.cat([model.encode_tokens(model.tokenizer(strings[s:s + 256]).to(self.device)).float().cpu()
                          for s in range(0, len(strings), 256)])

    # ---- stage 0: concept search
    def _search(self, feats: torch.Tensor, targets: torch.Tensor, classes: List[int]) -> torch.Tensor:
        cfg = self.config
        attrs = [a for c in classes for a in self.concepts[self.class_names[c]]]
        emb = F.normalize(self._text([cfg.concept_prefix + a for a in attrs]), dim=-1)
        mu = emb.mean(dim=0)
        cov = torch.cov(emb.T)
        try:
            sigma_inv = torch.linalg.inv(cov)
            if not torch.isfinite(sigma_inv).all():
                raise RuntimeError
        except RuntimeError:
            sigma_inv = torch.linalg.pinv(cov)
        mean_distance = float(torch.stack([mahalanobis_mean(e[None], mu, sigma_inv) for e in emb]).mean())
        a, n = len(emb), len(classes)
        gate = nn.Sequential(nn.Linear(emb.shape[1], a, bias=False), nn.BatchNorm1d(a), nn.Linear(a, n))
        optimizer = torch.optim.Adam(gate.parameters(), lr=cfg.lr)
        gate.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(feats))
            for s in range(0, len(order), cfg.batch_size):
                idx = order[s:s + cfg.batch_size]
                if len(idx) < 2:
                    continue
                loss = F.cross_entropy(gate(feats[idx]), targets[idx])
                loss = loss + search_regulariser(gate[0].weight, mu, sigma_inv, mean_distance, cfg.division_power)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        chosen = select_concepts(gate[0].weight.detach(), emb, int(n * cfg.pool))
        self.raw_concepts += [attrs[j] for j in chosen]
        return emb[chosen].clone()

    # ---- the task
    def fit_experience(self, data, exp, encode) -> None:
        cfg = self.config
        classes = list(self.streams.experience_classes[exp])
        known, total = classes[0], classes[-1] + 1
        with torch.no_grad():
            feats = torch.cat([encode(data.images[s:s + 256]).float().cpu() for s in range(0, len(data), 256)])
        labels = data.labels.cpu()
        selected = self._search(feats, labels - known, classes)
        self.bottleneck = selected if self.bottleneck is None else torch.cat([self.bottleneck, selected])
        for c in classes:  # `building_protos`
            rows = feats[labels == c]
            self.protos.append(rows.mean(dim=0))
            self.covs.append(torch.cov(rows.T) + 1e-4 * torch.eye(rows.shape[1]))
        xs, ys = [feats], [labels]
        if known:  # `_compute_relations`, `_build_feature_set`
            names = self._text([cfg.name_template.format(c=self.class_names[c]) for c in range(known)])
            protos_new = F.normalize(torch.stack(self.protos[known:total]), dim=-1)
            relations = (F.normalize(names, dim=-1) @ protos_new.T).argmax(dim=1) + known
            for c in range(known):
                r = int(relations[c])
                xs.append(feats[labels == r] - self.protos[r] + self.protos[c])
                ys.append(torch.full((int((labels == r).sum()),), c, dtype=labels.dtype))
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        # `update_explainer`
        n_cpt = len(self.bottleneck)
        self.explainer = expand_linear(self.explainer, feats.shape[1], n_cpt, rows=True)
        self.unity = nn.ModuleList([expand_linear(fc, n_cpt, fc.out_features, rows=False) for fc in self.unity]
                                   + [nn.Linear(n_cpt, len(classes), bias=False)])
        params = list(self.explainer.parameters()) + list(self.unity.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.fb_lr if exp == 0 else cfg.fb_lr_inc, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, gamma=0.1)
        epochs = cfg.fb_epochs if exp == 0 else cfg.fb_epochs_inc
        old_order = torch.randperm(known).tolist()
        chol = [torch.linalg.cholesky(self.covs[c]) for c in range(known)] if known and cfg.sg_num else []
        for _ in range(epochs):
            order = torch.randperm(len(x_all))
            for b, s in enumerate(range(0, len(order), cfg.batch_size)):
                idx = order[s:s + cfg.batch_size]
                x, y = x_all[idx], y_all[idx]
                if known and cfg.sg_num:  # `_sample_gussian`
                    pick = [old_order[(2 * b) % known], old_order[(2 * b + 1) % known]]
                    x = torch.cat([x] + [torch.randn(cfg.sg_num, x.shape[1]) @ chol[c].T + self.protos[c] for c in pick])
                    y = torch.cat([y] + [torch.full((cfg.sg_num,), c, dtype=y.dtype) for c in pick])
                logits, csv = explain(x, self.explainer, self.unity)
                loss = F.cross_entropy(logits, y)
                if cfg.sim:
                    loss = loss + cfg.sim * similarity_loss(x, self.bottleneck, csv)
                loss = loss + sparse_linear_loss([fc.weight for fc in self.unity])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
        self.n_seen = total

    # ---- evaluation
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if self.explainer is None:
            return None
        with torch.no_grad():
            seen = explain(image_features.float().cpu(), self.explainer, self.unity)[0]
        out = torch.empty(len(image_features), len(class_features))
        out[:, :self.n_seen] = seen
        out[:, self.n_seen:] = seen.min(dim=1, keepdim=True).values - 1
        return out

    def inference_extras(self) -> str:
        n = 0 if self.bottleneck is None else len(self.bottleneck)
        return f"a concept bottleneck of {n} LLM-written concepts and one linear head per task"

    def state_dict(self) -> Dict[str, Any]:
        return {"bottleneck": self.bottleneck, "raw_concepts": self.raw_concepts, "protos": self.protos,
                "covs": self.covs, "n_seen": self.n_seen,
                "explainer": None if self.explainer is None else self.explainer.weight.detach().clone(),
                "unity": [fc.weight.detach().clone() for fc in self.unity]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.bottleneck, self.raw_concepts = state["bottleneck"], list(state["raw_concepts"])
        self.protos, self.covs, self.n_seen = list(state["protos"]), list(state["covs"]), state["n_seen"]
        self.explainer = None
        if state["explainer"] is not None:
            w = state["explainer"]
            self.explainer = nn.Linear(w.shape[1], w.shape[0], bias=False)
            self.explainer.weight.data.copy_(w)
        self.unity = nn.ModuleList()
        for w in state["unity"]:
            fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
            fc.weight.data.copy_(w)
            self.unity.append(fc)
