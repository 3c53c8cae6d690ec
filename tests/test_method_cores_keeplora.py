"""KeepLoRA's core: the down-projection, the subspace rule, the packed q/k/v slices, one task's cycle."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clipbench.engine import CLIPClassifier, set_trainable
from clipbench.errors import ClipbenchError
from clipbench.methods.keeplora import (KeepLoRA, KeepLoRAModule, attention_slots, down_projection, grow_subspace,
                                        weight_subspace_matrix)
from clipbench.models import load_model
from test_method_cores import streams, tiny_model  # noqa: F401  (fixture and helper)


# --- transcriptions of the reference (MaolinLuo/KeepLoRA a17f9c2, MTIL/), kept apart from the implementation

def code_update_prin_subspace(activation, layer, threshold):
    """`PrinSubspace._update_prin_subspace` for one layer (`layer` None: the list was empty)."""
    if layer is None:
        U, S, Vh = torch.linalg.svd(activation, full_matrices=False)
        sval_ratio = (S**2) / (S**2).sum()
        r = torch.sum(torch.cumsum(sval_ratio, dim=0) < threshold).item()
        return U[:, 0:max(r, 1)]
    U1, S1, Vh1 = torch.linalg.svd(activation, full_matrices=False)
    sval_total = (S1**2).sum()
    act_hat = activation - torch.matmul(torch.matmul(layer, layer.t()), activation)
    U, S, Vh = torch.linalg.svd(act_hat, full_matrices=False)
    sval_hat = (S**2).sum()
    sval_ratio = (S**2) / sval_total
    accumulated_sval = (sval_total - sval_hat) / sval_total
    r = 0
    for ii in range(sval_ratio.shape[0]):
        if accumulated_sval < threshold:
            accumulated_sval += sval_ratio[ii]
            r += 1
        else:
            break
    if r == 0:
        return layer
    Ui = torch.hstack((layer, U[:, 0:r]))
    return Ui[:, 0:Ui.shape[0]] if Ui.shape[1] > Ui.shape[0] else Ui


def code_in_proj_weight_process_q(in_proj_weight_grad, emb_dim, r_dim, q_prin_subspace):
    """`Trainer.in_proj_weight_process`, its q part (k and v are the next row slices)."""
    q_grad = in_proj_weight_grad[:emb_dim, :].T
    q_grad = q_grad - q_prin_subspace @ q_grad
    U, S, V = torch.svd_lowrank(q_grad.float(), q=4 * r_dim, niter=4)
    return U[:, :r_dim], V.T[:r_dim, :] * S[:r_dim].unsqueeze(1)


def _orthonormal(rows, cols, seed):
    return torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))[0]


def test_subspace_threshold_rule_matches_the_code():
    g = torch.Generator().manual_seed(0)
    first = torch.randn(20, 50, generator=g) * torch.logspace(0, -2, 20).unsqueeze(1)
    second = torch.randn(20, 40, generator=g)
    for threshold in (0.2, 0.85, 0.99):
        mine, code = grow_subspace(None, first, threshold), code_update_prin_subspace(first, None, threshold)
        assert mine.shape == code.shape
        torch.testing.assert_close(mine, code)
        grown, code_grown = grow_subspace(mine, second, threshold), code_update_prin_subspace(second, code, threshold)
        assert grown.shape == code_grown.shape and grown.shape[1] > mine.shape[1]
        torch.testing.assert_close(grown, code_grown)
        assert torch.equal(grown[:, :mine.shape[1]], mine)  # earlier directions kept as they were


def test_subspace_threshold_counts_and_edge_cases():
    # singular values 4, 2, 1, 1: energy ratios 16/22, 4/22, 1/22, 1/22, cumulated .727 .909 .955 1; the code
    # keeps the directions whose cumulated ratio is still below the threshold (at least one), so 0.85 keeps
    # one direction (0.727 of the energy), not the two that would reach 0.85
    activation = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0]))
    assert [grow_subspace(None, activation, t).shape[1] for t in (0.2, 0.85, 0.95, 0.99)] == [1, 1, 2, 3]
    # a task whose features already lie in the subspace adds nothing (the code's "Skip Updating")
    basis = _orthonormal(10, 3, 1)
    inside = basis @ torch.randn(3, 30, generator=torch.Generator().manual_seed(2))
    assert grow_subspace(basis, inside, 0.99) is basis
    # never more columns than rows
    full = grow_subspace(_orthonormal(6, 5, 3), torch.randn(6, 30, generator=torch.Generator().manual_seed(4)), 0.9999)
    assert full.shape == (6, 6)


def test_pinned_keeplora():
    d, r = 48, 8
    grad = torch.randn(3 * d, d, generator=torch.Generator().manual_seed(0))
    basis = _orthonormal(d, 10, 1)
    torch.manual_seed(7)
    A, B = down_projection(grad[:d].T, basis, r)
    torch.manual_seed(7)
    code_A, code_B = code_in_proj_weight_process_q(grad, d, r, basis @ basis.T)
    assert torch.equal(A, code_A) and torch.equal(B, code_B)
    assert A.shape == (d, r) and B.shape == (r, d)
    assert (basis.T @ A).abs().max() < 1e-5  # A lies outside the protected subspace
    torch.testing.assert_close(A.T @ A, torch.eye(r), atol=1e-5, rtol=0)
    # A B is the residual gradient's best rank-r approximation (up to the randomized SVD's accuracy)
    residual = grad[:d].T - basis @ (basis.T @ grad[:d].T)
    U, S, Vh = torch.linalg.svd(residual)
    best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
    assert (A @ B - best).norm() < 0.05 * best.norm()


def test_weight_subspace_is_the_stored_weight_when_square_and_the_input_space_otherwise():
    square, wide = torch.randn(8, 8), torch.randn(4, 10)
    assert weight_subspace_matrix(square) is square
    assert weight_subspace_matrix(wide).shape == (10, 4)


def _mha(d=8, heads=2, seed=0):
    torch.manual_seed(seed)
    return nn.MultiheadAttention(d, heads, batch_first=True)  # as open_clip's ResidualAttentionBlock builds it


def _attend(attn, x, mask=None):
    return attn(x, x, x, need_weights=False, attn_mask=mask)[0]  # as ResidualAttentionBlock.attention calls it


@pytest.mark.parametrize("key", ["q", "k", "v", "o"])
def test_packed_in_proj_slices_and_out_proj_are_adapted_exactly(key):
    d, r, s = 8, 2, 0.5
    base = _mha()
    wrapped = KeepLoRAModule(copy.deepcopy(base), attention_slots(base), r, s)
    x = torch.randn(3, 5, d, generator=torch.Generator().manual_seed(1))
    mask = torch.triu(torch.full((5, 5), float("-inf")), 1)  # the text tower's causal mask
    assert torch.equal(_attend(wrapped, x, mask), _attend(base, x, mask))  # inactive: the module itself
    g = torch.Generator().manual_seed(2)
    update = wrapped.lora[key]
    update.A.copy_(torch.randn(d, r, generator=g))
    with torch.no_grad():
        update.B.copy_(torch.randn(r, d, generator=g))
    wrapped.active = True
    expected = copy.deepcopy(base)
    rows = {"q": slice(0, d), "k": slice(d, 2 * d), "v": slice(2 * d, 3 * d)}
    with torch.no_grad():  # the code's x @ A @ B * scaling added to that projection's output
        target = expected.out_proj.weight if key == "o" else expected.in_proj_weight[rows.get(key, slice(0))]
        target += s * (update.A @ update.B).T
    adapted = _attend(wrapped, x, mask)
    torch.testing.assert_close(adapted, _attend(expected, x, mask))
    # merging (then resetting A and B) leaves the outputs unchanged
    wrapped.fold(1.0)
    wrapped.reset()
    wrapped.active = False
    torch.testing.assert_close(_attend(wrapped, x, mask), adapted)


def test_recorded_features_are_what_each_projection_multiplies():
    base = _mha()
    wrapped = KeepLoRAModule(base, attention_slots(base), 2, 0.5)
    from clipbench.methods.keeplora import FeatureMean

    wrapped.features = {k: FeatureMean() for k in "qkvo"}
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))
    out = _attend(wrapped, x)
    tokens = 15
    # one batch: the running mean is the batch's features, transposed, over its token count
    torch.testing.assert_close(wrapped.features["q"].matrix * tokens, x.reshape(-1, 8).T)
    before_out = (wrapped.features["o"].matrix * tokens).T.reshape(3, 5, 8)
    torch.testing.assert_close(nn.functional.linear(before_out, base.out_proj.weight, base.out_proj.bias), out)


def _strategy(model, data, batch=8):
    return SimpleNamespace(model=model, experience=SimpleNamespace(tensors=(data.images, data.labels)),
                           train_mb_size=batch, device="cpu", _criterion=nn.CrossEntropyLoss())


def _gradient_directions(update):
    """The columns of A that carry the residual gradient: those whose singular value (the norm of B's row
    at the task's start) is not float noise. With fewer residual directions than the rank (a few class
    prompts), the code's randomized SVD fills the remaining columns with arbitrary unit vectors."""
    strength = update.B.norm(dim=1)
    return update.A[:, strength > 1e-3 * strength.max()]


def test_one_task_cycle_on_the_tiny_vit(streams):
    model = tiny_model(streams)
    method = KeepLoRA(KeepLoRA.Config())
    method.setup(model, streams)
    keys = [k for k, _, _ in method.slots(model)]
    # q, k, v, o of both layers of both towers, the pretrained weights' subspace protected from the start
    assert len(keys) == 16 and set(keys) == set(method.bases)
    assert sum(k.startswith("clip.visual.") for k in keys) == 8
    trained = set_trainable(model, method)
    assert trained == 16 * 16 * 64 and all(not isinstance(m.A, nn.Parameter) for m in model.modules()
                                           if hasattr(m, "A"))
    x = streams.test[0].images[:6]
    before = model(x).detach()
    method.before_training_exp(_strategy(model, streams.train[0]))
    torch.testing.assert_close(model(x).detach(), before, atol=1e-5, rtol=1e-5)  # unchanged at the task's start
    for key, module, slot in method.slots(model):
        update = module.lora[slot.key]
        assert update.B.abs().sum() > 0  # B starts at S_r V_r^T (the code), not at zero
        assert (method.bases[key].T @ _gradient_directions(update)).abs().max() < 1e-3, key  # random: about 0.3

    with torch.no_grad():  # "training": B moves
        for p in method.trainable_parameters(model):
            p.add_(0.05 * torch.randn_like(p))
    trained_out = model(x).detach()
    assert not torch.allclose(trained_out, before, atol=1e-4)
    old_bases = dict(method.bases)
    torch.manual_seed(5)
    method.after_training_exp(_strategy(model, streams.train[0]))
    torch.testing.assert_close(model(x).detach(), trained_out, atol=1e-5, rtol=1e-5)  # merging keeps the outputs
    assert all(not m.active and m.lora["q"].B.abs().sum() == 0 for m in method.wrappers(model))
    for key in keys:  # the task's features grow every subspace, earlier directions kept
        assert method.bases[key].shape[1] >= old_bases[key].shape[1]
        assert torch.equal(method.bases[key][:, :old_bases[key].shape[1]], old_bases[key])
    torch.manual_seed(5)  # the same batches as after_training_exp drew
    features = method._task_features(_strategy(model, streams.train[0]))

    method.before_training_exp(_strategy(model, streams.train[1]))
    for key, module, slot in method.slots(model):
        A = _gradient_directions(module.lora[slot.key])
        assert (method.bases[key].T @ A).abs().max() < 1e-3, key
        # the first task's inputs reach the new update with at most 1 - 0.99 of their energy
        energy = (A.T @ features[key]).norm() ** 2 / features[key].norm() ** 2
        assert energy <= 0.01 + 1e-4, key


def test_part_image_adapts_the_image_tower_only_and_bad_settings_fail(streams):
    model = tiny_model(streams)
    method = KeepLoRA(KeepLoRA.Config(part="image"))
    method.setup(model, streams)
    assert {k.split(":")[0].startswith("clip.visual.") for k, _, _ in method.slots(model)} == {True}
    with pytest.raises(ClipbenchError, match="rank 65 exceeds"):
        KeepLoRA(KeepLoRA.Config(rank=65)).setup(tiny_model(streams), streams)
    with pytest.raises(ClipbenchError, match="text_feature_threshold"):
        KeepLoRA.Config(text_feature_threshold=1.5)


def test_on_the_mini_model_the_two_projections_are_adapted(streams):
    loaded = load_model("clipbench-mini", "bundled:mini/projections-v2.pt")
    model = CLIPClassifier(loaded, streams.class_names, streams.train_template)
    method = KeepLoRA(KeepLoRA.Config())
    method.setup(model, streams)
    slots = {k: module.weight(slot).shape for k, module, slot in method.slots(model)}
    assert slots == {"clip.visual.head.proj:w": (256, 1280), "clip.text.proj:w": (256, 384)}
    # the protected subspaces live in each projection's input space
    assert method.bases["clip.visual.head.proj:w"].shape[0] == 1280 and method.bases["clip.text.proj:w"].shape[0] == 384
    assert set_trainable(model, method) == 16 * 256 * 2


def test_a_and_b_come_from_plain_cross_entropy_whatever_the_recipe(streams):
    """KeepLoRA's `estimate_gradient` uses F.cross_entropy: under a smoothed training loss (the engine's
    `_criterion`), the gradient that builds A and B is still the plain one (`plain_criterion`)."""
    model = tiny_model(streams)
    method = KeepLoRA(KeepLoRA.Config())
    method.setup(model, streams)
    set_trainable(model, method)
    smoothed = dict(vars(_strategy(model, streams.train[0])), _criterion=nn.CrossEntropyLoss(label_smoothing=0.2),
                    plain_criterion=nn.CrossEntropyLoss())
    got = method._mean_gradients(SimpleNamespace(**smoothed))
    want = method._mean_gradients(_strategy(model, streams.train[0]))  # plain cross-entropy as _criterion
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-5) for k in got)
    with_ls = method._mean_gradients(SimpleNamespace(**dict(smoothed, plain_criterion=smoothed["_criterion"])))
    assert max((with_ls[k] - want[k]).abs().max() for k in want) > 1e-3  # smoothing would change them
