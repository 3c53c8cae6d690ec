"""Each method's loss or update on fixed tensors, pinned to its reference formula written out here,
independently of the method's code (no clipbench loss helper is used for an expected value).

Every registered method has exactly one `test_pinned_<name>` (checked by `test_every_method_is_pinned`):
a method added without one fails the suite.
"""

import copy
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from clipbench.engine import set_trainable, train_experience
from clipbench.methods.agem import AGEM
from clipbench.methods.base import METHODS
from clipbench.methods.er import ER
from clipbench.methods.ewc import EWC
from clipbench.methods.finetune import Finetune
from clipbench.methods.geodl import GeoDL, centred_pca_basis, null_directions
from clipbench.methods.icarl import ICaRL
from clipbench.methods.icarl_zscl import ICaRLZSCL
from clipbench.methods.imm import IMM
from clipbench.methods.joint import Joint
from clipbench.methods.lwf import LwF
from clipbench.methods.lwf_vr import LwFVR
from clipbench.methods.lwf_zscl import LwFZSCL
from clipbench.methods.rkr import RKR, RectifiedLinear
from clipbench.methods.toolkit import pseudo_sentences, snapshot
from clipbench.methods.vr_lwf import VRLwF
from clipbench.methods.wc_zscl import WCZSCL
from clipbench.methods.wise_ft import WiSEFT
from clipbench.methods.wise_ft_zscl import WiSEFTZSCL
from clipbench.methods.zscl import ZSCL, ensemble_interval
from clipbench.streams import LabelledImages
from helpers import SMALL, records, run_cli
from test_method_cores import streams, tiny_model  # noqa: F401  (fixture and helper)

MB = 8


# ---- formulas, written out independently -------------------------------------------------------

def soft_ce(teacher: torch.Tensor, student: torch.Tensor, T: float) -> torch.Tensor:
    """ZSCL's `distillation`: T^2 mean_i sum_j -softmax(t_i / T)_j log softmax(s_i / T)_j."""
    q = torch.exp(teacher / T) / torch.exp(teacher / T).sum(1, keepdim=True)
    log_p = student / T - torch.logsumexp(student / T, 1, keepdim=True)
    return -(q * log_p).sum(1).mean() * T * T


def kl_batchmean(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """CL-CLIP's `LwF_KL`: sum_i sum_j q_ij (log q_ij - log p_ij) / n, q = softmax(t / T), p = softmax(s / T)."""
    log_q = teacher / T - torch.logsumexp(teacher / T, 1, keepdim=True)
    log_p = student / T - torch.logsumexp(student / T, 1, keepdim=True)
    return (log_q.exp() * (log_q - log_p)).sum() / len(student)


def both_ways(scale, t_img, s_img, text, T, w_image=1.0, w_text=1.0):
    """ZSCL's image-to-text and text-to-image distillation of L = scale * img @ text^T."""
    lt, ls = scale * t_img @ text.T, scale * s_img @ text.T
    return w_image * soft_ce(lt, ls, T) + w_text * soft_ce(lt.T, ls.T, T)


def authors_gfk_loss(input1: np.ndarray, input2: np.ndarray) -> float:
    """CL-CLIP (877a69f) methods/GFK_distill_normalise.py `GFK.fit(input1, input2)`, transcribed to numpy
    block by block (train_pca_tall, null_space, HOGSVD_fit with the one-step Newton-Schulz inverse,
    gfk_G's delta1 / delta2 / delta3)."""
    x1 = input1 / np.linalg.norm(input1, axis=-1, keepdims=True)
    x2 = input2 / np.linalg.norm(input2, axis=-1, keepdims=True)
    sd = td = x1.shape[0] - 2

    def pca(data, dim):
        u = np.linalg.svd(data - data.mean(0), full_matrices=False)[0]
        return u[:, :dim]

    ps = pca(x1.T, sd)
    ps = np.hstack([ps, scipy.linalg.null_space(ps.T)[:, :60]])
    n_cols = ps.shape[1]
    pt = pca(x2.T, td)

    def ns_minus(a):
        norm = np.sqrt((a * a).sum())
        y, eye = a / norm, np.eye(len(a))
        t = 0.5 * (3.0 * eye - eye @ y)
        return (t @ eye) / np.sqrt(norm)

    def inverse(a):
        z = ns_minus(a)
        return z @ z

    xs = [ps[:, :sd].T @ pt, ps[:, sd:].T @ pt]
    grams = [x.T @ x for x in xs]
    s = (grams[0] @ inverse(grams[1]) + grams[1] @ inverse(grams[0])) / 2
    v = np.linalg.svd(s)[0]
    bs = [(v.T @ x.T).T for x in xs]
    sigmas = [np.linalg.norm(b, axis=0) for b in bs]
    v1, v2 = bs[0] / sigmas[0], -(bs[1] / sigmas[1])
    theta = np.arccos(np.clip(sigmas[0], -1, 1))
    b1 = np.diag(0.5 * (1 + np.sin(2 * theta) / (2 * theta + 1e-12)))
    b2 = np.diag(0.5 * (np.cos(2 * theta) - 1) / (2 * theta + 1e-12))
    b4 = np.diag(0.5 * (1 - np.sin(2 * theta) / (2 * theta + 1e-12)))
    delta1 = np.block([[v1, np.zeros((sd, td))], [np.zeros((n_cols - sd, td)), v2]])
    delta2 = np.block([[b1, b2], [b2, b4]])
    delta3 = np.block([[v1.T, np.zeros((td, n_cols - sd))], [np.zeros((td, sd)), v2.T]])
    g = ps @ delta1 @ delta2 @ delta3 @ ps.T
    qq = x1 - x2
    return float(np.mean(np.sum(qq * (g.T @ qq.T).T, axis=-1)))


# ---- fixtures ----------------------------------------------------------------------------------

def strategy_on(model, streams, exp: int, mb: int = MB):
    """What a method's hooks see at the first step of experience `exp`: its first `mb` images."""
    data = streams.train[exp]
    model.num_active = streams.experience_classes[exp][-1] + 1
    x, y = data.images[:mb], data.labels[:mb]
    return SimpleNamespace(model=model, mb_x=x, mb_y=y, mb_output=model(x), device="cpu", train_mb_size=mb,
                           train_epochs=1, dataloader=range(math.ceil(len(data) / mb)), _criterion=nn.CrossEntropyLoss(),
                           experience=SimpleNamespace(current_experience=exp, tensors=(data.images, data.labels)))


def move(model, method, seed: int = 0, size: float = 0.05) -> None:
    """Shift every trainable parameter by seeded noise, so the student differs from its teacher."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.trainable_parameters(model):
            p.add_(size * torch.randn(p.shape, generator=g))


def refresh(strategy):
    """Recompute the forward pass after the model moved."""
    strategy.mb_output = strategy.model(strategy.mb_x)
    return strategy


def with_twin(model, method, streams, exp):
    """Set the method up at experience `exp`, then move the model: returns (strategy, teacher twin)."""
    set_trainable(model, method)
    strategy = strategy_on(model, streams, exp)
    method.before_training_exp(strategy)
    twin = twin_of(model)
    move(model, method)
    return refresh(strategy), twin


def twin_of(model):
    """A deep copy of the model as it is now (the forward pass's graph dropped first)."""
    model.last_image_features = None
    model.invalidate_text_cache()
    return copy.deepcopy(model)


def scale_of(model):
    return model.clip.logit_scale.exp().detach()


# ---- the pinned tests, one per method ----------------------------------------------------------

def test_pinned_zeroshot(results):
    """No update at all: the held-out accuracies and recalls after every experience are those before any."""
    assert run_cli("run", "--method", "zeroshot", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", *SMALL) == 0
    [rec] = records(results).values()
    rows = [rec["raw"]["zeroshot"]["shapes"]] + [r for d in rec["raw"]["retrieval"].values() for r in d.values()]
    assert all(len(r) == 4 and all(x == r[0] for x in r) for r in rows)
    assert METHODS.get("zeroshot").trains is False and rec["metrics"]["zs_retention"] == 1.0


def test_pinned_finetune(streams):
    """One SGD step of the engine equals theta - lr * grad CE(exp(s) cos(image, class prompts), y)."""
    model = tiny_model(streams)
    data = LabelledImages(streams.train[0].images[:MB], streams.train[0].labels[:MB])
    twin = twin_of(model)
    train_experience(model, Finetune(), data, 0, 2, {"epochs": 1, "batch_size": MB, "lr": 0.1, "optimizer": "sgd",
                                                      "momentum": 0.0, "weight_decay": 0.0}, "cpu", progress=False)
    clip = twin.clip
    image = clip.encode_image(twin.preprocess(data.images))
    text = clip.encode_text(twin.prompt_tokens[:2])
    logits = clip.logit_scale.exp() * (image / image.norm(dim=-1, keepdim=True)) @ (text / text.norm(dim=-1, keepdim=True)).T
    loss = -(logits.log_softmax(1)[torch.arange(MB), data.labels]).mean()
    named = [(n, p) for n, p in clip.named_parameters() if n != "logit_scale"]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    after = dict(model.clip.named_parameters())
    for (n, p), g in zip(named, grads):
        expected = p.detach() - 0.1 * (g if g is not None else torch.zeros_like(p))
        assert torch.allclose(after[n], expected, atol=1e-6), n
    assert torch.equal(after["logit_scale"], clip.logit_scale)


def test_pinned_joint(streams):
    method = Joint()
    data = method.training_data(streams, 0)
    assert torch.equal(data.labels, torch.cat([t.labels for t in streams.train]))
    assert all(method.training_data(streams, k) is None for k in range(1, streams.n_experiences))


def test_pinned_lwf(streams):
    """alpha * KL(softmax(t / T) || softmax(s / T)), batch mean, over every class seen (CL-CLIP lwf.py)."""
    model = tiny_model(streams)
    method = LwF(LwF.Config(alpha=0.7, temperature=1.0))
    strategy, twin = with_twin(model, method, streams, 1)
    with torch.no_grad():
        teacher = scale_of(twin) * twin.encode_images(strategy.mb_x) @ twin.encode_tokens(twin.prompt_tokens[:4]).T
    student = scale_of(model) * model.encode_images(strategy.mb_x) @ model.encode_tokens(model.prompt_tokens[:4]).T
    assert method.loss(strategy).item() == pytest.approx(0.7 * kl_batchmean(student, teacher, 1.0).item(), rel=1e-5)


def test_pinned_vr_lwf(streams):
    """alpha * (KL over 100 fresh pseudo-texts, each model embedding its own, + KL over the seen classes
    from the second session on) (CL-CLIP vrd.py)."""
    model = tiny_model(streams)
    method = VRLwF(VRLwF.Config(alpha=0.5, n_pseudo=16, pseudo_length=8))
    strategy, twin = with_twin(model, method, streams, 1)
    torch.manual_seed(4)
    loss = method.loss(strategy)
    torch.manual_seed(4)
    pseudo = pseudo_sentences(model.tokenizer, 16, 8)
    x = strategy.mb_x
    with torch.no_grad():
        t_pseudo = scale_of(twin) * twin.encode_images(x) @ twin.encode_tokens(pseudo).T
        t_old = scale_of(twin) * twin.encode_images(x) @ twin.encode_tokens(twin.prompt_tokens[:4]).T
    s_pseudo = scale_of(model) * model.encode_images(x) @ model.encode_tokens(pseudo).T
    expected = 0.5 * (kl_batchmean(s_pseudo, t_pseudo, 1.0) + kl_batchmean(strategy.mb_output, t_old, 1.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pinned_lwf_zscl(streams):
    """ZSCL's LwF: a separate shuffled batch of the current images against the teacher's embeddings of the
    current classes' prompts, T = 2, both directions, each with its weight."""
    model = tiny_model(streams)
    method = LwFZSCL(LwFZSCL.Config(image_weight=0.3, text_weight=0.7))
    method.setup(model, streams)
    strategy, twin = with_twin(model, method, streams, 1)
    torch.manual_seed(9)
    loss = method.loss(strategy)
    torch.manual_seed(9)
    images = streams.train[1].images[torch.randperm(len(streams.train[1]))[:MB]]
    with torch.no_grad():
        t_img, text = twin.encode_images(images), twin.encode_tokens(twin.prompt_tokens[2:4])  # experience 1: classes 2, 3
    expected = both_ways(scale_of(model), t_img, model.encode_images(images), text, 2.0, 0.3, 0.7)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pinned_lwf_vr(streams):
    """ZSCL's LwF-VR: as its LwF with 1,000 pseudo-sentences of 10 tokens, drawn afresh per experience and
    embedded by the teacher; the text encoder gets no gradient."""
    model = tiny_model(streams)
    method = LwFVR(LwFVR.Config(n_pseudo=30))
    method.setup(model, streams)
    set_trainable(model, method)
    strategy = strategy_on(model, streams, 1)
    torch.manual_seed(2)
    method.before_training_exp(strategy)
    twin = twin_of(model)
    move(model, method)
    refresh(strategy)
    torch.manual_seed(2)
    pseudo = pseudo_sentences(model.tokenizer, 30, 10)
    torch.manual_seed(5)
    loss = method.loss(strategy)
    torch.manual_seed(5)
    images = streams.train[1].images[torch.randperm(len(streams.train[1]))[:MB]]
    with torch.no_grad():
        t_img, text = twin.encode_images(images), twin.encode_tokens(pseudo)
    expected = both_ways(scale_of(model), t_img, model.encode_images(images), text, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    model.zero_grad()
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.text_parameters())
    first = method.text.clone()
    torch.manual_seed(3)
    method.before_training_exp(strategy)
    assert not torch.allclose(first, method.text)  # redrawn for the next experience


def test_pinned_geodl(streams):
    """alpha * (gfk(image features) + gfk(class-prompt features)), gfk the authors' GFK.fit (numpy above).
    At experience 2 the tiny model (D = 64) has batches of 8 and 6 classes: subspaces of 6 and 4
    dimensions, whose null spaces (58 and 60 columns) are kept whole, so no basis choice is involved."""
    model = tiny_model(streams)
    method = GeoDL(GeoDL.Config(alpha=0.5))
    strategy, twin = with_twin(model, method, streams, 2)
    loss = method.loss(strategy)
    with torch.no_grad():
        t_img, t_txt = twin.encode_images(strategy.mb_x), twin.encode_tokens(twin.prompt_tokens[:6])
        s_img, s_txt = model.encode_images(strategy.mb_x), model.encode_tokens(model.prompt_tokens[:6])
    expected = 0.5 * (authors_gfk_loss(s_img.double().numpy(), t_img.double().numpy())
                      + authors_gfk_loss(s_txt.double().numpy(), t_txt.double().numpy()))
    assert expected > 0 and loss.item() == pytest.approx(expected, rel=1e-4)
    # when the null space is cut to 60 columns they are orthonormal and orthogonal to the principal subspace
    basis = centred_pca_basis(torch.randn(12, 100, dtype=torch.float64), 10)
    null = null_directions(basis, 60)
    assert null.shape == (100, 60)
    assert torch.allclose(null.T @ null, torch.eye(60, dtype=torch.float64), atol=1e-10)
    assert (basis.T @ null).abs().max() < 1e-10


def assert_merged(model, method, strategy, base, alpha: float) -> None:
    """Move the model ("training"), end the experience: every trained weight is alpha new + (1 - alpha) base."""
    move(model, method, seed=2)
    new = snapshot(model, method.trainable_parameters(model))
    method.after_training_exp(strategy)
    params = dict(model.named_parameters())
    assert base and all(torch.allclose(params[k], alpha * new[k] + (1 - alpha) * base[k], atol=1e-7) for k in base)


def test_pinned_imm(streams):
    """theta <- alpha theta_new + (1 - alpha) theta_old, old the model before the experience (CL-CLIP imm.py)."""
    model = tiny_model(streams)
    method = IMM(IMM.Config(alpha=0.3))
    set_trainable(model, method)
    method.teacher = snapshot(model, method.trainable_parameters(model))
    assert_merged(model, method, SimpleNamespace(model=model), method.teacher, 0.3)


def test_pinned_wise_ft(streams):
    """theta <- alpha theta_ft + (1 - alpha) theta_zeroshot (mlfoundations/wise-ft `wise_ft`), alpha 0.5."""
    assert WiSEFT.Config().alpha == 0.5
    model = tiny_model(streams)
    method = WiSEFT(WiSEFT.Config(alpha=0.3))
    method.setup(model, streams)
    assert_merged(model, method, SimpleNamespace(model=model), snapshot(model, method.trainable_parameters(model)), 0.3)


def test_pinned_wise_ft_zscl(streams):
    """theta <- 0.8 theta_ft + 0.2 theta_previous (ZSCL WiSE_finetune.sh, `--wise_ft_model n`)."""
    assert WiSEFTZSCL.Config().alpha == 0.8
    model = tiny_model(streams)
    method = WiSEFTZSCL()
    move(model, method, seed=1)  # a "previous task" that is not the zero-shot model
    strategy = strategy_on(model, streams, 1)
    set_trainable(model, method)
    method.before_training_exp(strategy)
    assert_merged(model, method, strategy, snapshot(model, method.trainable_parameters(model)), 0.8)


def test_pinned_wc_zscl(streams):
    """l2 * sum (theta - theta_start)^2 (ZSCL wc.sh, `l2_loss`)."""
    model = tiny_model(streams)
    method = WCZSCL(WCZSCL.Config(l2=1.5))
    strategy, twin = with_twin(model, method, streams, 0)
    start, now = dict(twin.named_parameters()), dict(model.named_parameters())
    expected = 1.5 * sum(((now[n] - start[n]) ** 2).sum() for n, p in now.items() if p.requires_grad)
    assert expected > 0 and method.loss(strategy).item() == pytest.approx(expected.item(), rel=1e-5)


def test_pinned_zscl(streams):
    """Distillation of reference images against the initial model's reference-text embeddings, both ways
    (weights 0.4 / 0.6), plus l2 * sum (theta - theta_start)^2; the ensembling interval rule."""
    model = tiny_model(streams)
    method = ZSCL(ZSCL.Config(image_weight=0.4, text_weight=0.6, l2=2.0))
    method.setup(model, streams)
    initial = twin_of(model)
    move(model, method, seed=1)  # the experience starts away from the initial model
    strategy, start = with_twin(model, method, streams, 1)
    torch.manual_seed(6)
    loss = method.loss(strategy)
    torch.manual_seed(6)
    ref = streams.reference
    pick = torch.randint(len(ref.images), (min(MB, len(ref.images)),))
    with torch.no_grad():
        text = initial.encode_tokens(model.tokenizer(list(ref.captions)))
        t_img = initial.encode_images(ref.images[pick])
    now, begin = dict(model.named_parameters()), dict(start.named_parameters())
    l2 = sum(((now[n] - begin[n]) ** 2).sum() for n, p in now.items() if p.requires_grad)
    expected = both_ways(scale_of(model), t_img, model.encode_images(ref.images[pick]), text, 2.0, 0.4, 0.6) + 2.0 * l2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # ten snapshots per session whatever its length (ZSCL MTIL: every 100 of 1000), or a fixed interval
    assert [ensemble_interval(s, 0) for s in (1000, 64, 14, 5)] == [100, 6, 1, 1]
    assert ensemble_interval(80, 10) == 10
    assert method.interval == ensemble_interval(len(strategy.dataloader), 0)


def test_pinned_agem(streams):
    """g_ref = grad of CLIP's contrastive loss on a memory batch; a conflicting g becomes
    g - (g . g_ref / g_ref . g_ref) g_ref; with `reference: current_batch`, the batch's own images and prompts."""
    for reference in ("memory", "current_batch"):
        model = tiny_model(streams)
        method = AGEM(AGEM.Config(reference=reference))
        method.setup(model, streams)
        set_trainable(model, method)
        strategy = strategy_on(model, streams, 0)
        torch.manual_seed(1)
        method.before_training_iteration(strategy)
        if reference == "memory":
            torch.manual_seed(1)
            parts, captions = method.memory_batch(MB)
            images = torch.cat(parts)
        else:
            images = strategy.mb_x
            captions = [streams.train_template.format(c=streams.class_names[int(y)]) for y in strategy.mb_y]
        params = [p for p in model.parameters() if p.requires_grad]
        img, txt = model.encode_images(images), model.encode_tokens(model.tokenizer(captions))
        logits = scale_of(model) * img @ txt.T
        target = torch.arange(len(logits))
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        g_ref = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                           for g, p in zip(torch.autograd.grad(contrastive, params, allow_unused=True), params)])
        assert torch.allclose(method.reference, g_ref, atol=1e-6)
        g = -g_ref + 0.1 * torch.randn(len(g_ref), generator=torch.Generator().manual_seed(0))  # conflicts
        offset = 0
        for p in params:
            p.grad = g[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        method.after_backward(strategy)
        projected = torch.cat([p.grad.reshape(-1) for p in params])
        expected = g - (g @ g_ref) / (g_ref @ g_ref) * g_ref
        assert (g @ g_ref) < 0 and torch.allclose(projected, expected, atol=1e-6)
    assert AGEM.Config().episodic_per_experience == 250


def test_pinned_rkr(streams):
    """y = (W x + b + U D x) * s, dropout 0 by default (CL-CLIP LoraInjectedLinear with dropout_p=0.0)."""
    assert RKR.Config().dropout == 0.0
    base = nn.Linear(6, 5)
    layer = RectifiedLinear(base, rank=2, dropout=RKR.Config().dropout)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.down.weight.copy_(torch.randn(2, 6, generator=g))
        layer.scale.copy_(torch.rand(5, generator=g) + 0.5)
    layer.train()
    x = torch.randn(4, 6, generator=g)
    expected = (x @ base.weight.T + base.bias + x @ layer.down.weight.T @ layer.up.weight.T) * layer.scale
    assert torch.allclose(layer(x), expected, atol=1e-6)
    model = tiny_model(streams)
    method = RKR()
    method.setup(model, streams)
    own = {id(p) for p in method.trainable_parameters(model)}
    wrapped = [m for m in model.modules() if isinstance(m, RectifiedLinear)]
    assert wrapped and own == {id(p) for m in wrapped for p in m.own_parameters()}
    assert all(torch.equal(m.down.weight, torch.zeros_like(m.down.weight)) for m in wrapped)  # starts as the original


def test_pinned_ewc(streams):
    """F = mean over mini-batches of (grad of the batch's mean loss)^2, model in eval mode (Avalanche's
    EWCPlugin); penalty (lambda / 2) sum F (theta - theta*)^2."""
    model = tiny_model(streams)
    method = EWC(EWC.Config(ewc_lambda=3.0))
    method.setup(model, streams)
    set_trainable(model, method)
    strategy = strategy_on(model, streams, 0, mb=5)  # 16 images: batches of 5, 5, 5, 1
    twin = twin_of(model)
    method.after_training_exp(strategy)
    images, labels = strategy.experience.tensors
    params = [(n, p) for n, p in twin.named_parameters() if p.requires_grad]
    twin.eval()
    fisher = {n: torch.zeros_like(p) for n, p in params}
    starts = range(0, len(labels), 5)
    for s in starts:
        loss = F.cross_entropy(twin(images[s:s + 5]), labels[s:s + 5])
        for (n, _), g in zip(params, torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)):
            if g is not None:
                fisher[n] += g ** 2 / len(starts)
    assert all(torch.allclose(method.fishers[0][n], fisher[n], atol=1e-9, rtol=1e-5) for n in fisher)
    move(model, method)
    now = dict(model.named_parameters())
    anchor = dict(twin.named_parameters())
    expected = 1.5 * sum((fisher[n] * (now[n] - anchor[n]) ** 2).sum() for n in fisher)
    assert method.loss(refresh(strategy)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_pinned_er(streams):
    """Each experience trains on its data plus the buffer, buffer_size // K samples per class seen."""
    method = ER(ER.Config(buffer_size=4))
    method.setup(None, streams)
    for exp in range(2):
        method.after_training_exp(SimpleNamespace(experience=SimpleNamespace(current_experience=exp)))
    data = method.training_data(streams, 2)
    assert len(data) == len(streams.train[2]) + 4
    extra = data.labels[len(streams.train[2]):]
    assert torch.bincount(extra, minlength=4).tolist() == [1, 1, 1, 1]


def test_pinned_icarl(streams):
    """distill_weight * T^2 CE(softmax(t[:, :n_old] / T), s[:, :n_old] / T) on the training batch."""
    model = tiny_model(streams)
    method = ICaRL(ICaRL.Config(distill_weight=1.3))
    method.setup(model, streams)
    strategy, twin = with_twin(model, method, streams, 1)
    with torch.no_grad():
        teacher = scale_of(twin) * twin.encode_images(strategy.mb_x) @ twin.encode_tokens(twin.prompt_tokens[:4]).T
    expected = 1.3 * soft_ce(teacher[:, :2], strategy.mb_output[:, :2], 2.0)
    assert method.loss(strategy).item() == pytest.approx(expected.item(), rel=1e-5)


def zscl_herding(features: np.ndarray, m: int) -> list:
    """ZSCL's `constructExampleSet` loop (np.delete on the remaining rows), returning original indices."""
    feats = features / np.linalg.norm(features, axis=-1, keepdims=True)
    mean = feats.mean(0)
    remaining, chosen, total = list(range(len(feats))), [], None
    for k in range(min(m, len(feats))):
        rows = feats[remaining]
        if k == 0:
            i = int(np.argmin(np.sum((mean - rows) ** 2, axis=1)))
            total = rows[i].copy()
        else:
            i = int(np.argmin(np.sum((mean - (1 / (k + 1)) * (rows + total)) ** 2, axis=1)))
            total += rows[i]
        chosen.append(remaining.pop(i))
    return chosen


def test_pinned_icarl_zscl(streams):
    """ZSCL's CIL iCaRL: before experience t the stored sets are cut to K // t and K - K // t of the new
    experience are herded with the model of that moment; the loss distils the memory, in order, against the
    teacher's embeddings of the current prompts, weight 5 both ways."""
    model = tiny_model(streams)
    method = ICaRLZSCL(ICaRLZSCL.Config(memory_size=10))
    method.setup(model, streams)
    set_trainable(model, method)
    sizes = []
    for exp in range(3):
        strategy = strategy_on(model, streams, exp)
        features = model.encode_images(streams.train[exp].images).detach().double().numpy()
        method.before_training_exp(strategy)
        m = len(method.sets[-1])
        assert torch.equal(method.sets[-1], streams.train[exp].images[zscl_herding(features, m)])
        sizes.append([len(s) for s in method.sets])
        if exp < 2:
            move(model, method, seed=exp)  # "training" between experiences
    assert sizes == [[10], [5, 5], [3, 3, 7]]
    twin = twin_of(model)  # the teacher: the model at the start of experience 2
    move(model, method, seed=7)
    refresh(strategy)
    loss = method.loss(strategy)
    memory = torch.cat(method.sets)[:MB]
    with torch.no_grad():
        t_img, text = twin.encode_images(memory), twin.encode_tokens(twin.prompt_tokens[4:6])
    expected = both_ways(scale_of(model), t_img, model.encode_images(memory), text, 2.0, 5.0, 5.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # MTIL variant: no memory (so no distillation) in the first task, whose set is its first K images, unherded
    mtil = ICaRLZSCL(ICaRLZSCL.Config(variant="mtil", memory_size=10, distill_weight=1.0))
    model = tiny_model(streams)
    mtil.setup(model, streams)
    set_trainable(model, mtil)
    strategy = strategy_on(model, streams, 0)
    mtil.before_training_exp(strategy)
    assert mtil.loss(strategy) is None
    mtil.after_training_exp(strategy)
    assert torch.equal(mtil.sets[0], streams.train[0].images[:10])


def test_every_method_is_pinned():
    """One `test_pinned_<name>` per registered method, in this file or another tests/test_method_*.py."""
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_method*.py"))
    missing = [n for n in METHODS.names() if not re.search(rf"^def test_pinned_{re.escape(n)}\(", sources, re.M)]
    assert not missing, f"methods without a pinned-formula test: {missing}"
