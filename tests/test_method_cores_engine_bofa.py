"""ENGINE's and BOFA's cores against independent re-statements of the authors' functions, on identical inputs.

Each `ref_*` below is written from reading the authors' code (loops and all), not from clipbench's:
ENGINE: LAMDA-CL/ICCV25-ENGINE at 8803d66 (`utils/inc_net.py` class `Engine`: `Image_encode`,
`update_stat`, `rerank`; `utils/toolkit.py` `ClipLoss`; `models/engine.py` `_get_text_des`);
BOFA: LAMDA-CL/C3Box at 1378ab2 (`backbone/linears.py` `OLF`, `models/bofa.py` `search_lambda_for_prompt`,
`_eval_cnn`).
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError
from clipbench.methods import bofa, descriptions, engine
from clipbench.methods.gda import SharedCovarianceGDA
from helpers import SMALL, records, run_cli
from test_method_cores import streams, tiny_model  # noqa: F401  (fixture and helper)


# ---- ENGINE ---------------------------------------------------------------------------------------------

def ref_image_encode(adapters, x):
    res = []
    for i in range(len(adapters)):
        res.append(adapters[i](x))
    return torch.sum(torch.stack(res), dim=0)


def test_engine_adapters_sum_every_task_and_start_as_identity():
    torch.manual_seed(0)
    s = engine.AdapterSum(8, 4)
    x = torch.randn(5, 8)
    assert torch.equal(s(x), x)  # before the first task: the plain CLIP feature
    s.active = 3
    assert torch.allclose(s(x), ref_image_encode(list(s.adapters)[:3], x), atol=0, rtol=0)
    assert not torch.allclose(s(x), ref_image_encode(list(s.adapters)[:2], x))


def ref_clip_loss(image_features, text_features, logit_scale):
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(logits_per_image.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def test_engine_clip_loss_uses_the_raw_logit_scale():
    torch.manual_seed(1)
    img, txt = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    raw = torch.tensor(4.6052)  # log(100): a pretrained CLIP's logit_scale parameter
    ours = engine.clip_loss(img, txt, raw)
    assert torch.allclose(ours, ref_clip_loss(img, txt, raw))
    assert not torch.allclose(ours, ref_clip_loss(img, txt, raw.exp()))  # the quirk changes the number


def _fake_encoder(dim=12):
    """A deterministic 'text encoder': each distinct string -> a fixed random raw vector."""
    cache = {}

    def encode(texts):
        out = []
        for t in texts:
            if t not in cache:
                g = torch.Generator().manual_seed(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % (2 ** 31))
                cache[t] = torch.randn(dim, generator=g) * 3
            out.append(cache[t])
        return torch.stack(out)
    return encode


def ref_rerank(des_dict, outputs, image_features_raw, class_to_label, encode, topk, u_iter, draws=3):
    top5_predict = outputs.topk(topk, 1, True, True)[1]
    top5_predict_labels = [[class_to_label[int(label)] for label in pred] for pred in top5_predict]
    logi = 0
    for _ in range(draws):
        texts = []
        for batch in range(image_features_raw.shape[0]):
            for main_label in top5_predict_labels[batch]:
                for second_label in top5_predict_labels[batch]:
                    if main_label == second_label:
                        continue
                    options = des_dict[main_label][second_label]
                    choice = options[int(next(u_iter) * len(options))]  # random.choice, driven by the same numbers
                    texts.append(main_label + ' with ' + choice.lower())
        texts = encode(texts)
        texts = texts.reshape(image_features_raw.shape[0], topk, topk - 1, -1)
        texts = torch.mean(texts, dim=2)
        texts = texts / texts.norm(dim=-1, keepdim=True)
        logits = [image_features_raw[i] @ texts[i].T for i in range(image_features_raw.shape[0])]
        logits = torch.stack(logits)
        logi += logits
    logits = logi / draws
    new_logits = torch.zeros_like(outputs)
    for i in range(image_features_raw.shape[0]):
        new_logits[i, top5_predict[i]] = logits[i]
    return new_logits


def _descriptor_doc(names):
    # lists of different lengths per pair, mixed case (the code lower-cases each descriptor)
    return {a: {b: [f"Trait {j} Of {a} Versus {b}" for j in range(1 + (i + k) % 3)] for k, b in enumerate(names)}
            for i, a in enumerate(names)}


def test_engine_rerank_matches_the_code():
    names = ["apple", "aquarium fish", "bear", "bus", "cloud", "lamp", "rose"]
    doc = _descriptor_doc(names)
    encode = _fake_encoder()
    table = descriptions.for_classes(doc, names, "t")
    built = engine.DescriptorTable.build(names, table, descriptions.pooled_by_class(table, doc), encode)
    torch.manual_seed(2)
    n, k = 9, 5
    outputs = torch.randn(n, len(names))
    raw = F.normalize(torch.randn(n, 12), dim=-1)
    u = torch.rand(3, n, k, k - 1)
    ours = engine.rerank_logits(outputs, raw, built, k, u)
    ref = ref_rerank(doc, outputs, raw, names, encode, k, iter(u.flatten().tolist()))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (ours != 0).sum(dim=1).eq(k).all()  # only the top-k classes are re-scored


def ref_get_text_des(des_dict):
    new_des_dict = {}
    for key, value in des_dict.items():
        new_key_value = []
        for _, v in value.items():
            new_key_value.extend(v)
        new_des_dict[key] = new_key_value
    return new_des_dict


def test_engine_description_pools_and_name_matching(tmp_path):
    names = ["aquarium_fish", "bear", "bus"]  # the authors' keys say "aquarium fish"
    doc = _descriptor_doc(["aquarium fish", "bear", "bus", "cloud"])  # extra classes are allowed
    table = descriptions.for_classes(doc, names, "t")
    pools = descriptions.pooled_by_class(table, doc)
    assert pools["aquarium_fish"] == ref_get_text_des(doc)["aquarium fish"]
    assert table["bear"]["aquarium_fish"] == doc["bear"]["aquarium fish"]
    del doc["bus"]["bear"]
    with pytest.raises(ClipbenchError, match="'bus' against 'bear'"):
        descriptions.for_classes(doc, names, "t")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"bus": ["not a dict"]}))
    with pytest.raises(ClipbenchError, match="JSON object"):
        descriptions.load(str(path), "t")


def ref_update_stat(state, vecs, labels, known_classes, total_classes):
    """`Engine.update_stat` on already normalised features (cuda calls dropped)."""
    mu = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(known_classes, total_classes)], dim=0)
    center_vecs = torch.cat([vecs[labels == i] - mu[i - known_classes] for i in range(known_classes, total_classes)], dim=0)
    cov_inv = center_vecs.shape[1] * torch.linalg.pinv(
        (center_vecs.shape[0] - 1) * center_vecs.T.cov() + center_vecs.T.cov().trace() * torch.eye(center_vecs.shape[1]))
    if "mu" not in state:
        state["mu"], state["cov_inv"] = mu, cov_inv
    else:
        old_mean = state["mu"].T.mean(dim=1).unsqueeze(1)
        new_mean = mu.T.mean(dim=1).unsqueeze(1)
        state["cov_inv"] = ((known_classes / total_classes) * state["cov_inv"]
                            + (total_classes - known_classes) / total_classes * cov_inv
                            + ((known_classes / total_classes) * (total_classes - known_classes) / total_classes ** 2)
                            * (old_mean - new_mean) @ (old_mean - new_mean).T)
        state["mu"] = torch.cat([state["mu"], mu])
    ps = torch.ones(state["mu"].shape[0]) * 1. / state["mu"].shape[0]
    state["W"] = torch.einsum('nd, dc -> cn', state["mu"], state["cov_inv"])
    state["b"] = ps.log() - torch.einsum('nd, dc, nc -> n', state["mu"], state["cov_inv"], state["mu"]) / 2


def test_gda_matches_update_stat_over_two_tasks():
    torch.manual_seed(3)
    gda, ref = SharedCovarianceGDA(), {}
    for known, total in ((0, 3), (3, 5)):
        labels = torch.arange(known, total).repeat_interleave(7)
        x = F.normalize(torch.randn(len(labels), 6) + labels[:, None].float(), dim=-1)
        gda.update(x, labels, known, total)
        ref_update_stat(ref, x, labels, known, total)
    assert torch.allclose(gda.W, ref["W"], atol=1e-4) and torch.allclose(gda.b, ref["b"], atol=1e-4)
    x = F.normalize(torch.randn(4, 6), dim=-1)
    assert torch.allclose(gda.logits(x), x @ ref["W"] + ref["b"], atol=1e-4)


def test_engine_is_not_applicable_without_a_description_file():
    class Spec:
        method_config = {"descriptions": ""}

    assert "methods.engine.descriptions" in engine.Engine.not_applicable(Spec())
    Spec.method_config = {"descriptions": "x.json"}
    assert engine.Engine.not_applicable(Spec()) is None


# ---- BOFA -----------------------------------------------------------------------------------------------

def ref_update_old_features(features, in_features):
    k = features.shape[0]
    cov = (1 / (k - 1)) * (features.T @ features)
    return cov + 1e-4 * torch.eye(in_features)


def ref_prepare_for_stage2(cov_matrices, rank, W_task, W0):
    avg_cov = torch.mean(torch.stack(cov_matrices[:-1], dim=0), dim=0)
    _, eigenvectors = torch.linalg.eigh(avg_cov)
    A = eigenvectors[:, :rank].clone()
    return A, (W_task - W0) @ A


def test_bofa_safe_subspace_and_stage2_init_match_olf():
    torch.manual_seed(4)
    d_in, d_out, rank = 10, 6, 4
    # earlier tasks live in the first 5 input directions; the near-null rest is the safe subspace
    tasks = [torch.cat([torch.randn(30, 5), 1e-3 * torch.randn(30, 5)], dim=1) for _ in range(2)]
    tasks.append(torch.randn(30, d_in))  # the current task (its covariance is not used)
    covs = [bofa.task_covariance(x) for x in tasks]
    for x, c in zip(tasks, covs):
        assert torch.allclose(c, ref_update_old_features(x, d_in))
    W0, W_task = torch.randn(d_out, d_in), torch.randn(d_out, d_in)
    A = bofa.safe_subspace(covs[:-1], rank)
    ref_A, ref_B = ref_prepare_for_stage2(covs, rank, W_task, W0)
    assert torch.allclose(A, ref_A) and torch.allclose((W_task - W0) @ A, ref_B)
    W_new = W0 + ref_B @ A.T
    old = tasks[0]
    assert ((old @ (W_new - W0).T).norm() / (old @ (W_task - W0).T).norm()) < 0.01  # old inputs hardly move


def test_bofa_merge_is_the_mean_of_stored_projections():
    torch.manual_seed(5)
    W_list = [torch.randn(3, 4) for _ in range(3)]
    assert torch.allclose(bofa.merged_projection(W_list), (sum(W_list)) / len(W_list))


def ref_search_lambda(all_feats, all_labels, image_proto, text_proto, num_grid=21):
    image_proto = image_proto / image_proto.norm(dim=-1, keepdim=True)
    text_proto = text_proto / text_proto.norm(dim=-1, keepdim=True)
    best_acc, best_lam = -1.0, 0.0
    for lam in torch.linspace(0, 1, steps=num_grid):
        new_proto = (1 - lam) * image_proto + lam * text_proto
        acc = ((all_feats @ new_proto.T).argmax(dim=1) == all_labels).float().mean().item()
        if acc > best_acc:
            best_acc, best_lam = acc, lam.item()
    return best_lam


def test_bofa_lambda_search_weighs_text_and_training_weighs_image():
    torch.manual_seed(6)
    labels = torch.arange(4).repeat_interleave(10)
    text = torch.randn(4, 8)
    image = text + 1.5 * torch.randn(4, 8)
    feats = F.normalize(text[labels] + 0.8 * torch.randn(40, 8), dim=-1)  # features near the text prototypes
    lam = bofa.search_lambda(feats, labels, image, text)
    assert lam == ref_search_lambda(feats, labels, image, text) and lam > 0.5  # the text side wins the search
    used = bofa.hybrid_prototypes(lam, image, text)
    # ... and the found value then weighs the image prototype (the code's quirk, kept)
    assert torch.allclose(used, lam * F.normalize(image, dim=-1) + (1 - lam) * F.normalize(text, dim=-1))


def test_bofa_end_of_run_projection_is_the_mean_of_task_projections(tmp_path, monkeypatch):
    from clipbench.store import ResultStore

    results = tmp_path / "r"
    monkeypatch.setattr(ResultStore, "clear_progress", lambda self, spec: None)  # keep the final checkpoint
    monkeypatch.setattr("clipbench.runner.checkpoint_due", lambda completed, total: True)  # ... and save it
    assert run_cli("run", "--method", "bofa", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", *SMALL, "train.epochs=3") == 0
    [rec] = records(results).values()
    assert rec["status"] == "complete"
    state = torch.load(next(results.glob("runs/**/checkpoint.pt")), weights_only=False)["model"]
    key = next(k for k in state if k.endswith("bridge_head.W_list"))
    W_list, W_fusion = state[key], state[key.replace("W_list", "W_fusion")]
    W0 = state[key.replace("W_list", "W0")]
    assert torch.allclose(W_fusion, W_list.mean(dim=0), atol=1e-6)
    assert not torch.allclose(W_list[1], W0)  # stage 2 moved the later tasks' projections off W0


# ---- one step's loss, pinned (test_method_fidelity.py asks one per method) --------------------------------

def _strategy(model, streams, exp, mb=8):
    data = streams.train[exp]
    model.num_active = streams.experience_classes[exp][-1] + 1
    return SimpleNamespace(model=model, mb_x=data.images[:mb], mb_y=data.labels[:mb], device="cpu", train_mb_size=mb,
                           train_epochs=1, dataloader=range(math.ceil(len(data) / mb)), _criterion=None,
                           experience=SimpleNamespace(current_experience=exp, tensors=(data.images, data.labels)))


def _ce_rows(logits):
    """CE with target i for row i, written out: mean_i (logsumexp_j l_ij - l_ii)."""
    return (torch.logsumexp(logits, 1) - logits.diagonal()).mean()


def _ce(logits, y):
    return (torch.logsumexp(logits, 1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


def _pooled_by_identity(visual, x):
    """The tiny ViT's pre-projection feature, by running open_clip's own forward with an identity projection."""
    proj = visual.proj
    visual.proj = nn.Parameter(torch.eye(proj.shape[0]))
    try:
        return type(visual).forward(visual, x)
    finally:
        visual.proj = proj


def test_pinned_engine(streams, tmp_path):
    from clipbench.engine import set_trainable
    from clipbench.model_input import to_model_input

    names = list(streams.class_names)
    path = tmp_path / "des.json"
    path.write_text(json.dumps(_descriptor_doc(names)))
    model = tiny_model(streams)
    method = engine.Engine(engine.EngineConfig(descriptions=str(path)))
    method.setup(model, streams)
    s0 = _strategy(model, streams, 0)
    set_trainable(model, method)
    method.before_training_exp(s0)
    method.after_training_exp(s0)
    set_trainable(model, method)
    s1 = _strategy(model, streams, 1)
    method.before_training_exp(s1)
    method.before_training_epoch(s1)
    model(s1.mb_x)  # the engine's forward pass: last_image_features
    torch.manual_seed(7)
    loss = method.loss(s1)

    clip, loaded = model.clip, model.model_input.__self__
    adapters_i = [(a.weight.detach(), a.bias.detach()) for a in method.image_adapters.adapters[:2]]
    adapters_t = [(a.weight.detach(), a.bias.detach()) for a in method.text_adapters.adapters[:2]]
    summed = lambda x, ads: sum(x @ w.T + b for w, b in ads)  # noqa: E731
    method.image_adapters.active = method.text_adapters.active = 0  # the frozen CLIP
    with torch.no_grad():
        raw = lambda imgs: clip.encode_image(to_model_input(imgs, loaded.image_size, loaded.mean, loaded.std))  # noqa: E731
        protos = torch.stack([raw(streams.train[0].images)[streams.train[0].labels == c].mean(0) for c in (0, 1)])
        frozen_text = lambda strings: clip.encode_text(model.tokenizer(strings))  # noqa: E731
        img = F.normalize(summed(raw(s1.mb_x), adapters_i), dim=-1)
    torch.manual_seed(7)
    pseudo = F.normalize(summed(protos + torch.randn_like(protos) * 0.25, adapters_i), dim=-1)
    feats = torch.cat([img, pseudo])
    labels = torch.cat([s1.mb_y, torch.tensor([0, 1])])
    with torch.no_grad():
        text = F.normalize(summed(clip.encode_text(model.prompt_tokens[labels]), adapters_t), dim=-1)
        x = to_model_input(s1.mb_x, loaded.image_size, loaded.mean, loaded.std)
        aug = F.normalize(clip.encode_image(torch.clamp(x + torch.randn_like(x) * 0.25, 0, 1)), dim=-1)
        u = torch.rand(len(labels))
        pools = ref_get_text_des(_descriptor_doc(names))
        picks = [pools[names[int(c)]][int(v * len(pools[names[int(c)]]))] for c, v in zip(labels, u)]
        ref = F.normalize(frozen_text([f"{names[int(c)]} with {p.lower()}" for c, p in zip(labels, picks)]), dim=-1)
        s = clip.logit_scale  # raw: the quirk
        expected = ((_ce_rows(s * feats @ text.T) + _ce_rows(s * text @ feats.T)) / 2
                    + 2.0 * _ce_rows(text @ ref.T) + 0.5 * _ce_rows(img @ aug.T))
    assert torch.allclose(method.prototypes[:2], protos, atol=1e-5)
    assert torch.allclose(loss.detach(), expected, atol=1e-4), (float(loss), float(expected))


def test_pinned_bofa(streams):
    from clipbench.engine import set_trainable

    model = tiny_model(streams)
    method = bofa.Bofa(bofa.BofaConfig())
    method.setup(model, streams)
    visual = model.clip.visual
    W0 = visual.proj.detach().T.clone()
    set_trainable(model, method)
    s0 = _strategy(model, streams, 0)
    s0.optimizer = torch.optim.SGD(method.trainable_parameters(model), lr=0.05, weight_decay=0.05)
    method.before_training_exp(s0)
    with torch.no_grad():
        W_task = method.olf.W_task.detach().clone()
        W_task += 0.05 * torch.randn_like(W_task)
        method.olf.W_task.copy_(W_task)
    model.train()
    model(s0.mb_x)
    loss = method.loss(s0)

    from clipbench.model_input import to_model_input

    loaded = model.model_input.__self__
    with torch.no_grad():
        pooled = lambda imgs: _pooled_by_identity(visual, to_model_input(imgs, loaded.image_size, loaded.mean, loaded.std))  # noqa: E731
        data = streams.train[0]
        p_all = pooled(data.images)
        mu = torch.stack([p_all[data.labels == c].mean(0) for c in (0, 1)])
        text = model.clip.encode_text(model.prompt_tokens[:2])
        lam = ref_search_lambda(F.normalize(p_all @ W0.T, dim=-1), data.labels, mu @ W0.T, text)
        P = lam * F.normalize(mu @ W0.T, dim=-1) + (1 - lam) * F.normalize(text, dim=-1)
        state = {}
        ref_update_stat(state, F.normalize(p_all, dim=-1), data.labels, 0, 2)
        p = pooled(s0.mb_x)
        feats = F.normalize(p @ W_task.T, dim=-1)
        head = F.normalize(p, dim=-1) @ state["W"] + state["b"]
        expected = _ce(model.clip.logit_scale * feats @ P.T, s0.mb_y) + _ce(head, s0.mb_y)
    assert method.lam == lam
    assert torch.allclose(loss.detach(), expected, atol=1e-4), (float(loss), float(expected))
    assert [g["lr"] for g in s0.optimizer.param_groups] == [0.05, 1e-3, 1e-3]  # get_param_group
