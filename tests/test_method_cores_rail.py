"""RAIL's two regressors, its fusion with zero-shot CLIP, and Continual-CLIP's prompt, on hand-made tensors
and on tiny runs checked against a direct recomputation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipbench import runner
from clipbench.evaluate import class_embeddings, encode_images
from clipbench.methods import rail_dual
from clipbench.methods.continual_clip import ContinualCLIP, ContinualCLIPConfig
from clipbench.methods.rail_dual import RAILDual, krr_fit, krr_predict, rbf_kernel
from clipbench.methods.rail_fusion import fuse
from clipbench.methods.rail_primal import (RAILPrimal, RAILPrimalConfig, hidden_size, random_projection,
                                           recursive_ridge_update)
from clipbench.models import load_model
from clipbench.protocols.catalog import get_protocol
from helpers import SMALL, records, run_cli


def _closed_form_ridge(X: torch.Tensor, Y: torch.Tensor, lam: float):
    A = X.T.double() @ X.double() + lam * torch.eye(X.shape[1], dtype=torch.float64)
    R = torch.linalg.inv(A)
    return R, R @ X.T.double() @ Y.double()


def test_pinned_rail_primal():
    g = torch.Generator().manual_seed(0)
    H, lam = 40, 0.1
    R = torch.eye(H, dtype=torch.float64) / lam
    W = torch.zeros(H, 0, dtype=torch.float64)
    xs, ys = [], []
    # three experiences of uneven size, new classes each time, blocks of 16 (the last block short)
    for classes, n in (([0, 1], 50), ([2, 3, 4], 37), ([5], 70)):
        X = torch.relu(torch.randn(n, H, generator=g, dtype=torch.float64))
        y = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
        W = F.pad(W, (0, classes[-1] + 1 - W.shape[1]))
        Y = F.one_hot(y, classes[-1] + 1).double()
        for s in range(0, n, 16):
            recursive_ridge_update(R, W, X[s:s + 16], Y[s:s + 16])
        xs.append(X), ys.append(y)
    R_star, W_star = _closed_form_ridge(torch.cat(xs), F.one_hot(torch.cat(ys), 6), lam)
    assert torch.allclose(R, R_star, atol=1e-10) and torch.allclose(W, W_star, atol=1e-10)
    assert W_star.abs().max() > 0.05  # a real solution, not zeros


def test_rail_primal_learns_the_batch_ridge_solution_over_every_experience():
    """The method as the runner drives it (features in, one experience at a time) against the closed form."""
    g = torch.Generator().manual_seed(1)
    method = RAILPrimal(RAILPrimalConfig(hidden_dim=60, batch_size=32))
    method.setup(SimpleNamespace(prompt_tokens=torch.zeros(1)), SimpleNamespace(experience_classes=[[0, 1], [2, 3]]))
    torch.manual_seed(0)
    feats = [F.normalize(torch.randn(n, 8, generator=g), dim=-1) for n in (70, 45)]
    labels = [torch.randint(0, 2, (70,), generator=g), torch.randint(2, 4, (45,), generator=g)]
    for exp in range(2):
        method.fit_experience(SimpleNamespace(images=feats[exp], labels=labels[exp]), exp, lambda x: x)
    assert method.projection.shape == (8, 60) and method.W.shape == (60, 4) and method.n_seen == 4
    phi = torch.relu(torch.cat(feats) @ method.projection)
    _, W_star = _closed_form_ridge(phi, F.one_hot(torch.cat(labels), 4), 0.1)
    assert torch.allclose(method.W.double(), W_star, atol=2e-5)
    test = F.normalize(torch.randn(9, 8, generator=g), dim=-1)
    assert torch.allclose(method.predict(test).double(), torch.relu(test @ method.projection).double() @ W_star, atol=2e-5)


def test_primal_hidden_size_and_projection_follow_the_code():
    assert hidden_size(512) == 15000 and hidden_size(256) == 7500 and hidden_size(64) == 1875
    assert hidden_size(256, 15000) == 15000  # an explicit size wins
    P = random_projection(64, 500, torch.Generator().manual_seed(3))
    assert P.abs().max() <= 64 ** -0.5 and P.abs().max() > 0.9 * 64 ** -0.5  # nn.Linear's default bound, 1/sqrt(D)
    assert torch.equal(P, random_projection(64, 500, torch.Generator().manual_seed(3)))


def _code_kernel(x: np.ndarray, X: np.ndarray, gamma: float) -> np.ndarray:
    """The code's kernel: exp(-gamma * sum((X_j - x_i)^2)) from direct differences."""
    return np.exp(-gamma * ((X[None, :, :] - x[:, None, :]) ** 2).sum(-1))


def test_pinned_rail_dual(monkeypatch):
    g = torch.Generator().manual_seed(2)
    X = F.normalize(torch.randn(60, 6, generator=g, dtype=torch.float64), dim=-1)
    Y = F.one_hot(torch.randint(0, 5, (60,), generator=g), 5)
    test = F.normalize(torch.randn(23, 6, generator=g, dtype=torch.float64), dim=-1)
    gamma, lam = 0.1, 1e-3
    Xn, Yn, tn = X.numpy(), Y.double().numpy(), test.numpy()
    assert np.allclose(rbf_kernel(test, X, gamma).numpy(), _code_kernel(tn, Xn, gamma), atol=1e-13)
    alpha_direct = np.linalg.inv(_code_kernel(Xn, Xn, gamma) + lam * np.eye(60)) @ Yn
    expected = _code_kernel(tn, Xn, gamma) @ alpha_direct
    monkeypatch.setattr(rail_dual, "PREDICT_ROWS", 7)  # several blocks of test rows, the last one short
    got = krr_predict(test, X, krr_fit(X, Y, gamma, lam), gamma)
    assert np.allclose(got.numpy(), expected, atol=1e-7, rtol=1e-7)
    assert np.abs(expected).max() > 0.5


def test_rail_dual_solves_again_over_every_stored_feature():
    g = torch.Generator().manual_seed(4)
    method = RAILDual()
    method.setup(SimpleNamespace(prompt_tokens=torch.zeros(1)), SimpleNamespace(experience_classes=[[0, 1, 2], [3]]))
    feats = [F.normalize(torch.randn(n, 5, generator=g), dim=-1) for n in (30, 12)]
    labels = [torch.randint(0, 3, (30,), generator=g), torch.full((12,), 3)]
    for exp in range(2):
        method.fit_experience(SimpleNamespace(images=feats[exp], labels=labels[exp]), exp, lambda x: x)
    X = torch.cat(feats).double().numpy()
    # the code's targets: earlier one-hots padded with zeros for the new classes, i.e. one-hot over all seen
    Y = F.one_hot(torch.cat(labels), 4).double().numpy()
    alpha = np.linalg.inv(_code_kernel(X, X, 0.1) + 1e-3 * np.eye(len(X))) @ Y
    test = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    assert np.allclose(method.predict(test).numpy(), _code_kernel(test.double().numpy(), X, 0.1) @ alpha, atol=1e-6)
    assert method.features.shape == (42, 5) and method.alpha.shape == (42, 4)


def test_fusion_follows_the_zero_shot_top1_seen_or_unseen():
    # 4 classes, the first 2 seen. Image 0: zero-shot top-1 is class 0 (seen), the regressor prefers class 1.
    # Image 1: zero-shot top-1 is class 3 (unseen): plain zero-shot, whatever the regressor says.
    logits = torch.tensor([[2.0, 1.5, 0.0, -1.0], [0.5, 0.0, 0.2, 1.0]])
    reg = torch.tensor([[0.1, 0.9], [1.0, 0.0]])
    p = F.softmax(logits.double(), dim=1)
    out = fuse(logits, reg, 0.8)
    assert torch.allclose(out[0], 0.2 * p[0] + 0.8 * torch.tensor([0.1, 0.9, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(out[1], p[1])
    assert out[0].argmax() == 1 and p[0].argmax() == 0  # the regressor moved the prediction among seen classes
    assert out[0, 3] == pytest.approx(0.2 * p[0, 3].item())  # unseen classes keep a fifth of their probability
    assert torch.equal(fuse(logits, None, 0.8), p)  # nothing learned yet: zero-shot softmax


def test_fusion_scores_never_underflow_into_ties():
    # at scale 100 these classes sit 150 logits below the top-1: 0 in float32, distinct in float64
    logits = 100 * torch.tensor([[0.9, -0.6, -0.55, -0.7]])
    assert (F.softmax(logits, dim=1)[0, 1:] == 0).all()
    out = fuse(logits, torch.tensor([[0.3]]), 0.8)
    assert out[0, 1:].argmax() + 1 == logits[0, 1:].argmax() + 1 == 2


def test_rail_state_round_trips(tmp_path):
    g = torch.Generator().manual_seed(5)
    streams = SimpleNamespace(experience_classes=[[0, 1]])
    model = SimpleNamespace(prompt_tokens=torch.zeros(1))
    feats, labels = F.normalize(torch.randn(20, 4, generator=g), dim=-1), torch.randint(0, 2, (20,), generator=g)
    test = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    for cls, config in ((RAILPrimal, RAILPrimalConfig(hidden_dim=30)), (RAILDual, None)):
        a, b = cls(config), cls(config)
        a.setup(model, streams), b.setup(model, streams)
        a.fit_experience(SimpleNamespace(images=feats, labels=labels), 0, lambda x: x)
        torch.save(a.state_dict(), tmp_path / "m.pt")
        b.load_state_dict(torch.load(tmp_path / "m.pt"))
        assert b.n_seen == 2 and torch.equal(a.predict(test), b.predict(test))
        assert "regressor" in a.inference_extras()


def test_pinned_continual_clip():
    assert ContinualCLIP().prompt_templates(["a photo of a {c}.", "art of a {c}."]) == ["a bad photo of a {c}."]
    good = ContinualCLIP(ContinualCLIPConfig(template="a good photo of a {c}."))
    assert good.prompt_templates(["x {c}"]) == ["a good photo of a {c}."]
    assert ContinualCLIP().inference_extras() == "" and not ContinualCLIP.trains


@pytest.mark.parametrize("setting", ["methods.continual_clip.template=a photo", "methods.rail_dual.fusion_weight=1.5",
                                     "methods.rail_primal.hidden_dim=-1"])
def test_bad_settings_fail_in_one_line_before_running(setting, results, capsys):
    method = setting.split(".")[1]
    assert run_cli("run", "--method", method, "--suite", "tiny", "--results", results, "--set", setting) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not results.exists()


def _tiny_features(protocol: str, template: str):
    """Streams, test features and single-template class features of the tiny suite's model, rebuilt as a run builds them."""
    p = get_protocol(protocol)
    params = dict(p.params, **{s.split("=")[0].split(".")[-1]: int(s.split("=")[1]) for s in SMALL if protocol + "." in s})
    streams = p.build(None, 0, params)
    runner.seed_everything(0, "model")
    loaded = load_model("clipbench-tiny", None)
    test = [encode_images(loaded, t.images, 128) for t in streams.test]
    train = [encode_images(loaded, t.images, 128) for t in streams.train]
    return streams, test, train, class_embeddings(loaded, streams.class_names, [template], 128)


def test_continual_clip_run_scores_every_row_with_its_prompt(results):
    assert run_cli("run", "--method", "continual_clip", "zeroshot", "--protocol", "tiny_shapes", "--suite", "tiny",
                   "--results", results, "--quiet", "--set", *SMALL) == 0
    recs = {r["spec"]["method"]: r for r in records(results).values()}
    streams, test, _, classes = _tiny_features("tiny_shapes", "a bad photo of a {c}.")
    expected = []
    for row in range(streams.n_experiences + 1):
        expected.append([])
        for j in range(streams.n_experiences):
            lo, hi = streams.scored_classes(row, j)
            pred = (test[j] @ classes[lo:hi].T).argmax(1) + lo
            expected[-1].append(float((pred == streams.test[j].labels).double().mean()))
    assert recs["continual_clip"]["raw"]["acc_matrix"] == expected
    assert recs["continual_clip"]["raw"]["acc_matrix"] != recs["zeroshot"]["raw"]["acc_matrix"]  # the prompt matters here
    assert len(list((results / "cache").glob("row0-*.json"))) == 2  # its own row 0, keyed by its template


def test_rail_dual_task_incremental_run_equals_a_direct_recomputation(results):
    """Fusion over every class name, seen test by the top-1 over all of them, then the top-1 within the task."""
    assert run_cli("run", "--method", "rail_dual", "--protocol", "tiny_shapes_til", "--suite", "tiny",
                   "--results", results, "--quiet") == 0
    [rec] = records(results).values()
    streams, test, train, classes = _tiny_features("tiny_shapes_til", "a photo of a {c}.")
    unfused = 0
    for row in range(1, streams.n_experiences + 1):  # after experiences 0..row-1
        X = torch.cat(train[:row]).double().numpy()
        n_seen = streams.experience_classes[row - 1][-1] + 1
        Y = F.one_hot(torch.cat([t.labels for t in streams.train[:row]]), n_seen).double().numpy()
        alpha = np.linalg.solve(_code_kernel(X, X, 0.1) + 1e-3 * np.eye(len(X)), Y)
        expected = []
        for j, feats in enumerate(test):
            p = F.softmax(100 * feats.double() @ classes.double().T, dim=1).numpy()
            reg = np.pad(_code_kernel(feats.double().numpy(), X, 0.1) @ alpha, ((0, 0), (0, p.shape[1] - n_seen)))
            seen = p.argmax(1) < n_seen
            unfused += int((~seen).sum())
            fused = np.where(seen[:, None], 0.2 * p + 0.8 * reg, p)
            lo, hi = streams.scored_classes(row, j)
            expected.append(float(((fused[:, lo:hi].argmax(1) + lo) == streams.test[j].labels.numpy()).mean()))
        assert rec["raw"]["acc_matrix"][row] == pytest.approx(expected, abs=1e-12)
    assert unfused > 0  # some images kept plain zero-shot scores: both branches were exercised
    assert rec["costs"]["trainable_params"] == 0 and rec["costs"]["extra_memory_mb"] > 0


@pytest.mark.parametrize("method", ["rail_primal", "rail_dual"])
def test_rail_run_resumed_after_a_crash_equals_an_uninterrupted_one(method, tmp_path, monkeypatch):
    """What the regressor keeps is checkpointed after each experience: a crash at experience 2, then a
    rerun from the checkpoint, gives the numbers of a run that never stopped."""
    from clipbench.methods.base import METHODS
    from helpers import strip_volatile

    cls = METHODS.get(method)
    args = ["run", "--method", method, "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet", "--set", *SMALL]
    fit = cls.fit_experience

    def crash_at_two(self, data, exp, encode):
        if exp == 2:
            raise RuntimeError("injected crash")
        return fit(self, data, exp, encode)

    def counted(self, data, exp, encode):
        fitted.append(exp)
        return fit(self, data, exp, encode)

    fitted = []
    monkeypatch.setattr(cls, "fit_experience", crash_at_two)
    assert run_cli(*args, "--results", tmp_path / "crashed") == 1
    monkeypatch.setattr(cls, "fit_experience", counted)
    assert run_cli(*args, "--results", tmp_path / "crashed") == 0
    assert fitted == [2]  # resumed from the checkpoint of experiences 0 and 1
    assert run_cli(*args, "--results", tmp_path / "clean") == 0
    [resumed], [reference] = records(tmp_path / "crashed").values(), records(tmp_path / "clean").values()
    assert resumed["status"] == "complete" and strip_volatile(resumed) == strip_volatile(reference)
