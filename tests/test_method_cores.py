"""Each method's core on hand-made tensors: the formulas, directions and endpoints."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipbench.engine import CLIPClassifier, set_trainable, train_experience
from clipbench.methods.agem import project_gradient
from clipbench.methods.geodl import gfk_distillation, gfk_kernel, null_directions
from clipbench.methods.imm import IMM
from clipbench.methods.lwf import LwF
from clipbench.methods.rkr import RKR, RectifiedLinear
from clipbench.methods.toolkit import lwf_kl, pseudo_sentences, snapshot, soft_cross_entropy, token_space
from clipbench.methods.vr_lwf import VRLwF
from clipbench.models import load_model
from clipbench.protocols.catalog import get_protocol
from clipbench.runner import seed_everything

TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.0, "optimizer": "adamw"}


@pytest.fixture(scope="module")
def streams():
    params = dict(get_protocol("tiny_shapes").params, train_per_class=8, test_per_class=4, heldout_per_class=4,
                  retrieval_images=8, reference_pairs=8)
    return get_protocol("tiny_shapes").build(None, 0, params)


def tiny_model(streams):
    seed_everything(0, "model")
    loaded = load_model("clipbench-tiny", None)
    return CLIPClassifier(loaded, streams.class_names, streams.train_template)


def perturbed_teacher(model, method):
    """A teacher state that differs from the model, and a deep copy of the model holding it."""
    set_trainable(model, method)
    teacher = {k: v + 0.05 * torch.randn_like(v) for k, v in snapshot(model, method.trainable_parameters(model)).items()}
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for k, v in teacher.items():
            params[k].copy_(v)
    return teacher, twin


def test_lwf_kl_equals_its_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    for T in (1.0, 2.0):
        p, q = F.softmax(s / T, 1).numpy(), F.softmax(t / T, 1).numpy()
        expected = (q * (np.log(q) - np.log(p))).sum() / 5
        assert lwf_kl(s, t, T).item() == pytest.approx(expected, rel=1e-5)


def test_soft_cross_entropy_equals_its_formula():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    T = 2.0
    q, logp = F.softmax(t / T, 1), F.log_softmax(s / T, 1)
    assert soft_cross_entropy(t, s, T).item() == pytest.approx((-(q * logp).sum(1).mean() * T * T).item(), rel=1e-6)


def test_pseudo_sentences_layout(streams):
    model = tiny_model(streams)
    space = token_space(model.tokenizer)
    tokens = pseudo_sentences(model.tokenizer, 50, 8, torch.Generator().manual_seed(0))
    assert tokens.shape == (50, space["context"])
    assert (tokens[:, 0] == space["start"]).all() and (tokens[:, 9] == space["end"]).all()
    assert (tokens[:, 10:] == space["pad"]).all()
    inner = tokens[:, 1:9]
    assert torch.isin(inner, space["ordinary"]).all() and len(inner.unique()) > 100


def _strategy(model, x, y, experience=0):
    model.num_active = 2
    out = model(x)
    return SimpleNamespace(model=model, mb_x=x, mb_y=y, mb_output=out, device="cpu",
                           experience=SimpleNamespace(current_experience=experience))


def first_batch(streams, model):
    """Six images of experience 0 and the strategy a method's `loss` sees for them."""
    x, y = streams.train[0].images[:6], streams.train[0].labels[:6]
    return x, _strategy(model, x, y)


def with_teacher_on_two_classes(model, method):
    """Give `method` a perturbed teacher and its class embeddings over 2 classes; return the teacher's twin model."""
    teacher, twin = perturbed_teacher(model, method)
    method.teacher = teacher
    model.num_active = 2
    method.teacher_classes = twin.encode_tokens(twin.prompt_tokens[:2]).detach()
    return twin


def test_lwf_term_uses_teacher_logits_over_seen_classes(streams):
    model = tiny_model(streams)
    method = LwF(LwF.Config(alpha=0.7))
    twin = with_teacher_on_two_classes(model, method)
    x, strategy = first_batch(streams, model)
    with torch.no_grad():
        twin.num_active = 2
        expected_t = twin(x)
    expected = 0.7 * lwf_kl(strategy.mb_output, expected_t, 1.0)
    assert method.loss(strategy).item() == pytest.approx(expected.item(), rel=1e-5)


def test_vr_lwf_replayed_term_formula_and_both_encoders_learn(streams):
    model = tiny_model(streams)
    method = VRLwF(VRLwF.Config(alpha=0.5, n_pseudo=16, pseudo_length=8))
    teacher, twin = perturbed_teacher(model, method)
    method.teacher, method.first_experience = teacher, True
    x, strategy = first_batch(streams, model)
    torch.manual_seed(123)
    loss = method.loss(strategy)
    torch.manual_seed(123)
    pseudo = pseudo_sentences(model.tokenizer, 16, 8)
    with torch.no_grad():
        t_logits = twin.logits(twin.encode_images(x), twin.encode_tokens(pseudo))  # teacher embeds its own text
    s_logits = model.logits(model.encode_images(x), model.encode_tokens(pseudo))
    assert loss.item() == pytest.approx(0.5 * lwf_kl(s_logits, t_logits, 1.0).item(), rel=1e-5)
    model.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_parameters())


def test_vr_lwf_adds_old_class_lwf_after_first_experience(streams):
    model = tiny_model(streams)
    method = VRLwF(VRLwF.Config(n_pseudo=8))
    twin = with_teacher_on_two_classes(model, method)
    x, strategy = first_batch(streams, model)
    method.first_experience = True
    torch.manual_seed(5)
    first = method.loss(strategy).item()
    method.first_experience = False
    torch.manual_seed(5)
    later = method.loss(strategy).item()
    with torch.no_grad():
        twin.num_active = 2
        old = lwf_kl(strategy.mb_output, twin(x), 1.0).item()
    assert later == pytest.approx(first + 0.5 * old, rel=1e-5)


def test_imm_fusion_endpoints(streams):
    for alpha in (1.0, 0.0):
        model = tiny_model(streams)
        method = IMM(IMM.Config(alpha=alpha))
        set_trainable(model, method)
        old = snapshot(model, method.trainable_parameters(model))
        method.teacher = old
        new = {k: v + 1.0 for k, v in old.items()}
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in new.items():
                params[k].copy_(v)
        method.after_training_exp(SimpleNamespace(model=model))
        target = new if alpha == 1.0 else old
        assert all(torch.allclose(params[k], target[k]) for k in target)


def test_agem_projection_never_conflicts_with_memory():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        grad, ref = torch.randn(100, generator=g), torch.randn(100, generator=g)
        out = project_gradient(grad, ref)
        assert torch.dot(out, ref) >= -1e-5
        if torch.dot(grad, ref) >= 0:
            assert torch.equal(out, grad)


def test_rkr_trains_only_its_own_parameters(streams):
    model = tiny_model(streams)
    method = RKR(RKR.Config(part="whole"))
    method.setup(model, streams)
    wrapped = [m for m in model.modules() if isinstance(m, RectifiedLinear)]
    assert wrapped
    own = {id(p) for m in wrapped for p in m.own_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_experience(model, method, streams.train[0], 0, 2, TRAIN, "cpu", progress=False)
    for n, p in model.named_parameters():
        if id(p) not in own:
            assert torch.equal(before[n], p), f"{n} is not RKR's and must not move"
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if id(p) in own)


def test_gfk_kernel_is_the_geodesic_flow_kernel_when_the_null_space_is_whole():
    """With every null-space direction kept, the authors' approximate GSVD is exact: the kernel equals
    the integral over t of Phi(t) Phi(t)^T along the geodesic from span(p1) to span(p2) (Gong et al., 2012)."""
    g = torch.Generator().manual_seed(0)
    p1 = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64))[0]
    p2 = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64))[0]
    kernel = gfk_kernel(torch.cat([p1, null_directions(p1, 60)], dim=1), p2, 3)
    u, cos, vh = torch.linalg.svd(p1.T @ p2)
    theta = torch.arccos(cos.clamp(-1, 1))
    a, b = p1 @ u, p2 @ vh.T
    e = (b - a * cos) / torch.sin(theta)
    ts = torch.linspace(0, 1, 4001, dtype=torch.float64)
    phis = [a * torch.cos(t * theta) + e * torch.sin(t * theta) for t in ts]
    numeric = torch.trapezoid(torch.stack([phi @ phi.T for phi in phis]), ts, dim=0)
    assert torch.allclose(kernel, numeric, atol=1e-6)
    assert torch.allclose(phis[-1] @ phis[-1].T, p2 @ p2.T, atol=1e-9)  # the geodesic ends on span(p2)


def test_gfk_distillation_zero_for_identical_features_positive_otherwise_and_none_below_three_rows():
    x = torch.randn(16, 12)
    assert gfk_distillation(x, x).item() == pytest.approx(0.0, abs=1e-7)
    assert gfk_distillation(x, x + 0.3 * torch.randn(16, 12)).item() > 1e-4
    assert gfk_distillation(x[:2], torch.randn(2, 12)).item() == 0.0


def test_agem_memory_grows_by_experience_and_mixes_image_sizes(streams):
    from clipbench.methods.agem import AGEM

    model = tiny_model(streams)
    method = AGEM(AGEM.Config(episodic_per_experience=5))
    method.setup(model, streams)
    n_ref = len(streams.reference.captions)
    method.after_training_exp(SimpleNamespace(experience=SimpleNamespace(current_experience=0)))
    assert [len(c) for _, c in method.banks] == [n_ref, 5]
    assert all(c.startswith("a photo of something") for c in method.banks[1][1])
    method.banks[1] = (torch.nn.functional.interpolate(method.banks[1][0].float(), size=20).to(torch.uint8),
                       method.banks[1][1])  # another image size, as real memories mix sources
    images, captions = method.memory_batch(n_ref + 5)
    assert sum(len(part) for part in images) == len(captions) == n_ref + 5
    assert {tuple(part.shape[-2:]) for part in images} <= {(32, 32), (20, 20)}
    features = torch.cat([model.encode_images(part) for part in images])  # as before_training_iteration does
    assert features.shape[0] == n_ref + 5 and torch.isfinite(features).all()
