"""Cores of the successors' methods on hand-made tensors (EWC, ER, iCaRL herding, WiSE-FT, ZSCL, joint)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clipbench.engine import set_trainable
from clipbench.methods.er import balance
from clipbench.methods.ewc import ewc_penalty
from clipbench.methods.icarl import herding
from clipbench.methods.joint import Joint
from clipbench.methods.toolkit import snapshot
from clipbench.methods.wise_ft import WiSEFT
from clipbench.methods.zscl import ZSCL
from clipbench.streams import LabelledImages
from test_method_cores import streams, tiny_model  # noqa: F401  (fixture and helper)


def test_ewc_penalty_zero_at_anchor_and_quadratic():
    anchor = {"w": torch.tensor([1.0, -2.0, 0.5])}
    fisher = {"w": torch.tensor([0.5, 2.0, 1.0])}
    assert ewc_penalty({"w": anchor["w"].clone()}, [anchor], [fisher]).item() == 0.0
    step = torch.tensor([1.0, 1.0, 1.0])
    p1 = ewc_penalty({"w": anchor["w"] + 0.1 * step}, [anchor], [fisher]).item()
    p2 = ewc_penalty({"w": anchor["w"] + 0.2 * step}, [anchor], [fisher]).item()
    assert p1 == pytest.approx(3.5 * 0.01) and p2 == pytest.approx(4 * p1)


def _labelled(labels):
    labels = torch.tensor(labels)
    return LabelledImages(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8), labels)


def test_replay_buffer_stays_class_balanced_as_classes_arrive():
    buffer = None
    for k, classes in enumerate(([0, 1], [2, 3], [4, 5]), start=1):
        new = _labelled([c for c in classes for _ in range(50)])
        buffer = balance(buffer, new, 60)
        counts = torch.bincount(buffer.labels).tolist()
        seen = 2 * k
        assert counts == [60 // seen] * seen
        assert len(buffer) <= 60


def test_replay_buffer_keeps_old_samples_it_already_had():
    first = LabelledImages(torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 2, 2).contiguous(),
                           torch.tensor([0] * 20 + [1] * 20))
    buffer = balance(None, first, 20)
    second = balance(buffer, _labelled([2] * 30), 20)
    old = second.images[second.labels == 0][:, 0, 0, 0]
    assert set(old.tolist()) <= set(buffer.images[buffer.labels == 0][:, 0, 0, 0].tolist())


def test_herding_mean_is_closest_to_class_mean():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 16, generator=g) + torch.randn(16, generator=g)
    norm = F.normalize(feats, dim=-1)
    mu = norm.mean(0)
    picked = herding(feats, 10)
    assert len(set(picked.tolist())) == 10
    # the first exemplar is the sample nearest the class mean
    assert picked[0].item() == int(((norm - mu) ** 2).sum(-1).argmin())
    # and the herded set's mean beats random sets of the same size
    herded = (norm[picked].mean(0) - mu).norm()
    randoms = [(norm[torch.randperm(200, generator=g)[:10]].mean(0) - mu).norm() for _ in range(200)]
    assert herded < min(randoms)


def test_wise_ft_endpoints(streams):
    for alpha in (0.0, 1.0):
        model = tiny_model(streams)
        method = WiSEFT(WiSEFT.Config(alpha=alpha))
        method.setup(model, streams)
        zeroshot = {k: v.clone() for k, v in method.zeroshot.items()}
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k in zeroshot:
                params[k].add_(1.0)
        finetuned = snapshot(model, method.trainable_parameters(model))
        method.after_training_exp(SimpleNamespace(model=model))
        target = zeroshot if alpha == 0.0 else finetuned
        assert all(torch.allclose(params[k], target[k]) for k in target)


def test_zscl_running_average_is_mean_of_snapshots(streams):
    model = tiny_model(streams)
    method = ZSCL(ZSCL.Config(we_every=2))
    method.setup(model, streams)
    set_trainable(model, method)
    strategy = SimpleNamespace(model=model, device="cpu", train_epochs=1, dataloader=range(7))
    method.before_training_exp(strategy)
    params = dict(model.named_parameters())
    snapshots = [snapshot(model, method.trainable_parameters(model))]  # the start counts as one
    for step in range(7):
        with torch.no_grad():
            for k in method.start:
                params[k].add_(0.1 * (step + 1))
        if step % 2 == 0:
            snapshots.append(snapshot(model, method.trainable_parameters(model)))
        method.after_training_iteration(strategy)
    method.after_training_exp(strategy)
    for k in method.start:
        expected = torch.stack([s[k] for s in snapshots]).mean(0)
        assert torch.allclose(params[k], expected, atol=1e-6)


def test_zscl_distillation_is_zero_for_the_untouched_model(streams):
    model = tiny_model(streams)
    method = ZSCL(ZSCL.Config(l2=0.0))
    method.setup(model, streams)
    set_trainable(model, method)
    strategy = SimpleNamespace(model=model, device="cpu", train_mb_size=8, train_epochs=1, dataloader=range(7))
    method.before_training_exp(strategy)
    torch.manual_seed(0)
    untouched = method.loss(strategy).item()
    with torch.no_grad():
        model.clip.visual.proj.add_(0.5 * torch.randn_like(model.clip.visual.proj))
    torch.manual_seed(0)
    moved = method.loss(strategy).item()
    # soft-CE distillation at its minimum equals the teacher's entropy term; moving the student raises it
    assert moved > untouched


def test_joint_trains_once_on_everything(streams):
    method = Joint()
    data = method.training_data(streams, 0)
    assert len(data) == sum(len(t) for t in streams.train)
    assert set(data.labels.tolist()) == set(range(len(streams.class_names)))
    assert method.training_data(streams, 1) is None
