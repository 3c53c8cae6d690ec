"""Cores of MG-CLIP, CLAP4CLIP and AttriCLIP, pinned against re-statements of the authors' functions
(written here from reading linlany/MindtheGap@f40bfce, srvCodes/clap4clip@7ff95c2, bhrqw/AttriCLIP@031076a),
on identical inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipbench.methods.mg_clip import (KVLoRA, LinearLoRA, agent_cosine, drifted, epochs_from_drift, fuse,
                                       negative_logit_mean)
from helpers import SMALL, records, run_cli
from test_method_cores import streams, tiny_model  # noqa: F401  (fixture and helper)

# ------------------------------------------------------------------ MG-CLIP


def reference_kv_lora_attention(x, mha, kA, kB, vA, vB, scaling):
    """loralib `multi_head_attention_forward` with only_kv (sequence-first x [L, N, E]): q, k, v from the
    separate weights, k += (x A_k^T) B_k^T s, v likewise; scaled dot-product per head; out projection."""
    L, N, E = x.shape
    h = mha.num_heads
    d = E // h
    Wq, Wk, Wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q = F.linear(x, Wq, bq)
    k = F.linear(x, Wk, bk)
    v = F.linear(x, Wv, bv)
    k = k + F.linear(F.linear(x, kA), kB) * scaling
    v = v + F.linear(F.linear(x, vA), vB) * scaling
    q = q * float(d) ** -0.5
    q = q.contiguous().view(L, N * h, d).transpose(0, 1)
    k = k.contiguous().view(-1, N * h, d).transpose(0, 1)
    v = v.contiguous().view(-1, N * h, d).transpose(0, 1)
    weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(L, N, E)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)


def test_kv_lora_forward_equals_the_codes_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2)
    nn.init.normal_(mha.in_proj_bias)
    lora = KVLoRA(mha, rank=4, alpha=1.0)
    with torch.no_grad():  # B starts at zero (the model unchanged); give it values to test the update
        lora.k_B.normal_()
        lora.v_B.normal_()
    x = torch.randn(5, 3, 16)
    ours = lora(x, x, x, need_weights=False)[0]
    theirs = reference_kv_lora_attention(x, mha, lora.k_A, lora.k_B, lora.v_A, lora.v_B, 1.0 / 4)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, mha(x, x, x, need_weights=False)[0], atol=1e-3)  # the update matters
    # at initialisation the wrapped attention is the original: B = 0
    fresh = KVLoRA(mha, rank=4, alpha=1.0)
    assert torch.allclose(fresh(x, x, x, need_weights=False)[0], mha(x, x, x, need_weights=False)[0], atol=1e-6)
    # q is never adapted: its rows of the packed weight are the original ones
    assert torch.equal(lora.weight()[:16], mha.in_proj_weight[:16])


def test_linear_lora_is_the_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(6, 5, bias=False)
    lora = LinearLoRA(base, rank=2, alpha=1.0)
    with torch.no_grad():
        lora.B.normal_()
    x = torch.randn(4, 6)
    assert torch.allclose(lora(x), x @ base.weight.T + 0.5 * (x @ lora.A.T) @ lora.B.T, atol=1e-6)


def reference_fusion(text_logits, image_features, agent_weight, a=1, b=4):
    """main.py at inference: outputs = model(test=True) = softmax(logits); vision_outputs =
    VisionClassifier(image_feature); combined = (a softmax(outputs) + b softmax(vision_outputs)) / (a + b)."""
    outputs = text_logits.softmax(dim=-1)
    x = F.normalize(image_features, p=2, dim=-1)
    w = F.normalize(agent_weight, p=2, dim=-1)
    vision_outputs = F.linear(x, w)
    return (a * F.softmax(outputs, dim=1) + b * F.softmax(vision_outputs, dim=1)) / (a + b)


def test_inference_fusion_applies_the_text_softmax_twice():
    torch.manual_seed(0)
    logits, feats, agent = torch.randn(7, 5) * 20, torch.randn(7, 8), torch.randn(5, 8)
    ours = fuse(logits, agent_cosine(feats, agent))
    assert torch.allclose(ours, reference_fusion(logits, feats, agent), atol=1e-7)
    single = (logits.softmax(1) + 4 * agent_cosine(feats, agent).softmax(1)) / 5
    assert not torch.allclose(ours, single, atol=1e-3)  # the quirk changes the numbers


def test_drift_rule_as_epoch_py():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    manual = []
    for row, y in zip(logits, labels):  # epoch.py: (outputs * mask).sum / mask.sum, then the batch mean
        manual.append(sum(float(row[c]) for c in range(4) if c != y) / 3)
    assert math.isclose(float(negative_logit_mean(logits, labels)), sum(manual) / 6, rel_tol=1e-6)
    assert drifted(20.0, 17.9) and not drifted(20.0, 18.1) and drifted(20.0, 22.1)
    assert not drifted(-20.0, -30.0)  # the code divides by the signed record: a negative one never trips
    assert [epochs_from_drift(i) for i in range(4)] == [1, 1, 2, 3]


def test_mg_clip_probe_restores_the_lora_and_stops_after_the_found_epochs(streams):
    from types import SimpleNamespace

    from clipbench.engine import make_criterion, make_optimizer, set_trainable
    from clipbench.methods.mg_clip import MGCLIP

    model = tiny_model(streams)
    method = MGCLIP(MGCLIP.Config(probe_epochs=4, drift=-1e9))  # the rule trips after epoch 0, whatever the sign
    method.setup(model, streams)
    set_trainable(model, method)
    params = method.trainable_parameters(model)
    before = [p.detach().clone() for p in params]
    data = streams.train[0]
    model.num_active = streams.experience_classes[0][-1] + 1
    stops = []
    strategy = SimpleNamespace(model=model, device="cpu", train_mb_size=8, batches=None,
                               experience=SimpleNamespace(tensors=(data.images, data.labels), current_experience=0),
                               optimizer=make_optimizer(params, {"optimizer": "adam", "lr": 0.05}),
                               _criterion=make_criterion("current"), stop_training=lambda: stops.append(1))
    method.before_training_exp(strategy)
    assert method.epochs == 1 and method.probed  # drift after the first epoch: one epoch (epoch.py)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # the probe's training is undone
    method.after_training_epoch(strategy)
    assert stops == [1]
    method.epochs = None
    method.before_training_exp(strategy)  # probed once only
    assert method.epochs is None


def test_mg_clip_trains_only_the_kv_lora_and_scores_seen_classes(streams):
    from clipbench.methods.mg_clip import MGCLIP

    model = tiny_model(streams)
    method = MGCLIP()
    method.setup(model, streams)
    names = {n for n, p in model.named_parameters() if any(p is q for q in method.trainable_parameters(model))}
    assert names and all(n.rsplit(".", 1)[1] in ("k_A", "k_B", "v_A", "v_B") for n in names)
    towers = {n.startswith("clip.visual.") for n in names}
    assert towers == {True, False}  # both encoders
    assert method.scores(torch.randn(3, 64), torch.randn(6, 64)) is None  # before learning: CLIP's scores
    method.n_seen = 2
    out = method.scores(F.normalize(torch.randn(3, 64), dim=-1), F.normalize(torch.randn(6, 64), dim=-1))
    assert out.shape == (3, 6) and (out[:, 2:] == -1).all() and torch.allclose(out[:, :2].sum(1), torch.ones(3))
