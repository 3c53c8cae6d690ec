"""The CLIP class-incremental methods (SimpleCIL, PROOF, RAPF): each core against an independent
re-statement of the authors' function, written here from reading their code, on identical inputs."""

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipbench.methods.simplecil import SimpleCIL, SimpleCILConfig


class FakeCLIP(nn.Module):
    """A frozen 'image encoder': a fixed linear map of the flattened uint8 image, unnormalised."""

    def __init__(self, pixels: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(pixels, dim, generator=g), requires_grad=False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.proj + 3.0  # an offset: the mean of raw features differs from that of normalised ones


class FakeModel(nn.Module):
    def __init__(self, pixels: int, dim: int):
        super().__init__()
        self.clip = FakeCLIP(pixels, dim)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255.0


def _images(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)


# ----------------------------------------------------------------------------------------------- SimpleCIL


def _c3box_simplecil_logits(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, total: int) -> np.ndarray:
    """C3Box `SimpleVitNet.update_fc` (new rows zero) + `Learner.replace_fc` (row = mean of the raw
    `encode_image` embeddings of the class) + `CosineLinear.forward` (no sigma), in numpy."""
    weight = np.zeros((total, train_x.shape[1]))
    for class_index in np.unique(train_y):
        weight[class_index] = train_x[train_y == class_index].mean(0)
    x = test_x / np.linalg.norm(test_x, axis=1, keepdims=True).clip(1e-12)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True).clip(1e-12)
    return x @ w.T


def test_pinned_simplecil():
    g = torch.Generator().manual_seed(0)
    model = FakeModel(48, 6)
    method = SimpleCIL(SimpleCILConfig(batch_size=7))  # batches do not change the features
    method.setup(model, SimpleNamespace())
    text = F.normalize(torch.randn(5, 6, generator=g), dim=-1)  # 5 classes in the stream, 4 learned
    xs, ys = [], []
    for exp, classes in enumerate(([0, 1], [2, 3])):
        images = _images(30, g)
        labels = torch.tensor(classes)[torch.randint(2, (30,), generator=g)]
        method.fit_experience(SimpleNamespace(images=images, labels=labels), exp, encode=None)
        xs.append(model.clip.encode_image(model.preprocess(images))), ys.append(labels)
    test = _images(11, g)
    test_raw = model.clip.encode_image(model.preprocess(test))
    scores = method.scores(F.normalize(test_raw, dim=-1), text)  # the evaluator's normalised features
    ref = _c3box_simplecil_logits(torch.cat(xs).numpy(), torch.cat(ys).numpy(), test_raw.numpy(), 4)
    assert scores.shape == (11, 5)
    assert np.allclose(scores[:, :4].numpy(), ref, atol=1e-5)
    # a class not learned yet keeps CLIP's zero-shot row (cosine to its text embedding)
    assert torch.allclose(scores[:, 4], F.normalize(test_raw, dim=-1) @ text[4], atol=1e-6)
    # the raw mean, not the mean of normalised features (they differ here)
    raw_mean = F.normalize(xs[0][ys[0] == 0].mean(0), dim=-1)
    assert torch.allclose(F.normalize(method.prototypes[0], dim=-1), raw_mean, atol=1e-6)
    assert not torch.allclose(raw_mean, F.normalize(F.normalize(xs[0][ys[0] == 0], dim=-1).mean(0), dim=-1), atol=1e-4)
    # before anything is learned, CLIP's cosine scoring (None)
    fresh = SimpleCIL()
    fresh.setup(model, SimpleNamespace())
    assert fresh.scores(F.normalize(test_raw, dim=-1), text) is None


# ----------------------------------------------------------------------------------------------------- RAPF

from clipbench.engine import CLIPClassifier  # noqa: E402
from clipbench.methods.rapf import RAPF, RAPFConfig, cholesky_factor, hard_pairs, mix_matrix, sample  # noqa: E402
from clipbench.models import load_model  # noqa: E402


def _rapf_mix_matrix(weight_old: torch.Tensor, weight_new: torch.Tensor, mix_b: float) -> torch.Tensor:
    """`ClassIncrementalCLIP.mix_matrix`, line by line (`V_old` is what torch.linalg.svd returns third: V^T)."""
    U_old, S_old, V_old = torch.linalg.svd(weight_old)
    P_new = U_old.T @ weight_new
    dist = (P_new - torch.diag(S_old) @ V_old).abs()
    mask = dist / dist.max()
    mask += mix_b
    mask = torch.clamp(mask, max=1)
    right = P_new * mask + torch.diag(S_old) @ V_old * (1 - mask)
    return U_old @ right


def test_rapf_parameter_fusion_matches_mix_matrix():
    g = torch.Generator().manual_seed(0)
    w_old, w_new = torch.randn(16, 16, generator=g, dtype=torch.float64), torch.randn(16, 16, generator=g, dtype=torch.float64)
    for bias in (0.0, 0.6, 0.9):
        assert torch.allclose(mix_matrix(w_old, w_new, bias), _rapf_mix_matrix(w_old, w_new, bias), atol=1e-10)
    fused = mix_matrix(w_old, w_new, 0.6)
    assert not torch.allclose(fused, w_new, atol=1e-3) and not torch.allclose(fused, w_old, atol=1e-3)
    assert torch.allclose(mix_matrix(w_old, w_new, 1.0), w_new, atol=1e-10)  # mask 1 everywhere: the new weights
    assert torch.allclose(mix_matrix(w_old, w_old, 0.6), w_old, atol=1e-10)  # nothing learned: nothing changes


def test_rapf_pseudo_features_follow_the_class_statistics():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g) + 5.0
    mean, cov = feats.mean(0), torch.cov(feats.T) + 1e-4 * torch.eye(6)
    torch.manual_seed(3)
    mine = sample(mean, cholesky_factor(cov, shrink=False), 20000)
    torch.manual_seed(3)  # the code's `sample`: randn(size, D) @ cholesky(cov)^T + mean, same generator
    vec = torch.randn(20000, 6)
    ref = vec @ torch.linalg.cholesky(cov).t() + mean
    assert torch.allclose(mine, ref, atol=1e-4)
    assert torch.allclose(mine.mean(0), mean, atol=0.05 * cov.diagonal().sqrt().max())
    assert torch.allclose(torch.cov(mine.T), cov, atol=0.05 * cov.abs().max())


def _rapf_hard_pairs(features: torch.Tensor, n_new: int, first_new: int, threshold: float) -> torch.Tensor:
    """`ClassIncrementalCLIP.adaptation` for task_id > 0: cdist of each old class to the new ones, stacked."""
    dist_list = []
    for class_name_feature in features[:-n_new]:
        dist_list.append(torch.cdist(features[-n_new:], class_name_feature.unsqueeze(0)).squeeze())
    indices = torch.nonzero(torch.stack(dist_list) < threshold)
    indices[:, 1] = indices[:, 1] + first_new
    return indices


def _rapf_tiny_setup(threshold: float):
    loaded = load_model("clipbench-tiny", None)
    names = ["red circle", "blue square", "red square", "green star", "blue star", "green circle"]
    model = CLIPClassifier(loaded, names, "a photo of a {c}.")
    streams = SimpleNamespace(class_names=names, experience_classes=[[0, 1, 2], [3, 4, 5]])
    method = RAPF(RAPFConfig(beta=0.3, pseudo_classes_per_batch=2, threshold=threshold))
    method.setup(model, streams)
    return model, method


def test_pinned_rapf():
    """One batch of task 1: the method's extra terms plus the engine's cross-entropy equal the code's loss
    (main.py's batch body with `forward`), value and adapter gradient, under the same random draws."""
    torch.manual_seed(0)
    model, method = _rapf_tiny_setup(threshold=0.0)
    text = model.encode_tokens(model.prompt_tokens).detach()
    threshold = float(torch.cdist(text[:3], text[3:]).median())  # some pairs hard, some not
    method.config.threshold = threshold
    ref_pairs = _rapf_hard_pairs(text, 3, 3, threshold)
    assert 0 < len(ref_pairs) < 9 and torch.equal(hard_pairs(text, 3, [3, 4, 5], threshold), ref_pairs)

    d = text.shape[1]
    g = torch.Generator().manual_seed(2)
    for c in range(3):  # statistics of the old classes, as analyze_mean_cov leaves them
        x = torch.randn(40, d, generator=g) * 2 + torch.randn(d, generator=g)
        method.stats[c] = (x.mean(0), torch.cov(x.T) + 1e-4 * torch.eye(d))
    model.num_active = 6
    exp = SimpleNamespace(current_experience=1)
    strategy = SimpleNamespace(model=model, experience=exp, device="cpu", _criterion=F.cross_entropy)
    method.before_training_exp(strategy)
    real = torch.randn(5, d, generator=g)
    targets = torch.tensor([3, 4, 5, 3, 4])

    torch.manual_seed(7)
    method.before_training_epoch(strategy)
    for _ in range(2):  # the second batch of the epoch: classes taken in turn from the shuffled list
        method.adapter.zero_grad()
        logits = model.logits(F.normalize(method.adapter(real), dim=-1), method.text)
        strategy.mb_output, strategy.mb_y = logits, targets
        total = F.cross_entropy(logits, targets) + method.loss(strategy)
    total.backward()
    mine_grad = method.adapter.weight.grad.clone()

    # the code: random_class_order_list shuffled at the epoch, two classes per batch, 10 beta samples each,
    # then 20 beta samples per hard pair; everything through one adapter forward
    torch.manual_seed(7)
    order = torch.randperm(3).tolist()
    for _ in range(2):  # the first batch's draws, of the same shapes (batch_id 0: order[0], order[1])
        torch.randn(3, d)
    for _ in ref_pairs:
        torch.randn(6, d)
    batch_id = 1
    picks = [order[batch_id * 2 % 3], order[(batch_id * 2 + 1) % 3]]
    sg = torch.cat([torch.randn(3, d) @ torch.linalg.cholesky(method.stats[i][1]).t() + method.stats[i][0] for i in picks])
    sg_t = torch.tensor(picks).repeat_interleave(3)
    edge = torch.cat([torch.randn(6, d) @ torch.linalg.cholesky(method.stats[int(p[0])][1]).t() + method.stats[int(p[0])][0]
                      for p in ref_pairs])
    p_t, n_t = ref_pairs[:, 0].repeat_interleave(6), ref_pairs[:, 1].repeat_interleave(6)
    method.adapter.zero_grad()
    feats = method.adapter(torch.cat([real, sg, edge]))
    feats = feats / feats.norm(dim=1, keepdim=True)
    edge_f, img_f = feats[-len(edge):], feats[:-len(edge)]
    logit_scale = model.clip.logit_scale.exp()
    loss_c = F.cross_entropy(logit_scale * img_f @ text.t(), torch.cat([targets, sg_t]))
    loss_h = torch.relu(-(edge_f * text[p_t]).sum(-1) + (edge_f * text[n_t]).sum(-1) + 0.1).mean()
    ref_total = loss_c + loss_h
    ref_total.backward()
    assert torch.allclose(total, ref_total, atol=1e-4)
    assert torch.allclose(mine_grad, method.adapter.weight.grad, atol=1e-4, rtol=1e-3)
    assert loss_h > 0 and mine_grad.abs().max() > 0


# ---------------------------------------------------------------------------------------------------- PROOF

from clipbench.methods.icarl import herding  # noqa: E402
from clipbench.methods.proof import PROOF, PROOFConfig  # noqa: E402
from clipbench.streams import LabelledImages  # noqa: E402


def _proof_attention(att, q, k, v, n_head=1):
    """`convs/projections.py` `MultiHeadAttention.forward` + `ScaledDotProductAttention.forward` (eval mode:
    dropout off), line by line, on the module's weights."""
    d_k = d_v = q.shape[-1] // n_head
    sz_b, len_q, _ = q.size()
    residual = q
    q = att.w_qs(q).view(sz_b, len_q, n_head, d_k).permute(2, 0, 1, 3).contiguous().view(-1, len_q, d_k)
    k = att.w_ks(k).view(sz_b, k.shape[1], n_head, d_k).permute(2, 0, 1, 3).contiguous().view(-1, k.shape[1], d_k)
    v = att.w_vs(v).view(sz_b, v.shape[1], n_head, d_v).permute(2, 0, 1, 3).contiguous().view(-1, v.shape[1], d_v)
    attn = torch.bmm(q, k.transpose(1, 2)) / np.power(d_k, 0.5)
    attn = torch.softmax(attn, dim=2)
    output = torch.bmm(attn, v)
    output = output.view(n_head, sz_b, len_q, d_v).permute(1, 2, 0, 3).contiguous().view(sz_b, len_q, -1)
    return att.layer_norm(att.fc(output) + residual)


def _proof_forward_transformer(head, image_features, text_features, prototypes_raw, tasks):
    """`Proof_Net.forward_transformer(..., transformer=True)` with `encode_prototpyes(normalize=True)`."""
    proto = torch.stack([head.projs_img[i](prototypes_raw) for i in range(tasks)], dim=1).sum(dim=1)
    prototype_features = proto / proto.norm(dim=-1, keepdim=True)
    context_prompts = torch.cat([head.context_prompts[i] for i in range(tasks)], dim=0)
    len_texts, len_protos = text_features.shape[0], prototype_features.shape[0]
    bs, dim = image_features.shape
    image_features = image_features.view(bs, -1, dim)
    text_features = text_features.expand(bs, len_texts, dim)
    prototype_features = prototype_features.expand(bs, len_protos, dim)
    context_prompts = context_prompts.expand(bs, context_prompts.shape[0], dim)
    features = torch.cat([image_features, text_features, prototype_features, context_prompts], dim=1)
    features = _proof_attention(head.sel_attn, features, features, features)
    image_features = features[:, 0, :]
    text_features = torch.mean(features[:, 1:len_texts + 1, :], dim=0)
    prototype_features = torch.mean(features[:, len_texts + 1:len_texts + 1 + len_protos, :], dim=0)
    return image_features, text_features, prototype_features


def _proof_setup():
    loaded = load_model("clipbench-tiny", None)
    names = ["red circle", "blue square", "red square", "green star"]
    model = CLIPClassifier(loaded, names, "a photo of a {c}.")
    g = torch.Generator().manual_seed(4)
    size = loaded.image_size
    train = []
    for classes in ([0, 1], [2, 3]):
        labels = torch.tensor(classes).repeat_interleave(6)
        train.append(LabelledImages(torch.randint(0, 256, (12, 3, *size), generator=g, dtype=torch.uint8), labels))
    streams = SimpleNamespace(class_names=names, experience_classes=[[0, 1], [2, 3]], n_experiences=2, train=train,
                              class_templates=[["a photo of a {c}.", "a drawing of a {c}."]] * 4)
    method = PROOF(PROOFConfig(memory_size=10, test_batch=5))
    method.setup(model, streams)
    return model, method, streams


def _start(method, model, exp):
    model.num_active = 2 * (exp + 1)
    strategy = SimpleNamespace(model=model, experience=SimpleNamespace(current_experience=exp), device="cpu")
    method.before_training_exp(strategy)
    return strategy


def test_pinned_proof():
    """Task 1 (two projections, two sets of prompts, prototypes of four classes): the engine's cross-entropy
    on the method's forward plus its loss term equal `_train_proj`'s total loss, value and gradients."""
    torch.manual_seed(0)
    model, method, streams = _proof_setup()
    head = method.head
    _start(method, model, 0)
    strategy = SimpleNamespace(model=model, experience=SimpleNamespace(current_experience=0), device="cpu")
    method.after_training_exp(strategy)  # task 0 done (untrained): exemplars kept
    assert method.exemplar_count() == 2 * 5 and method.learned == 1
    strategy = _start(method, model, 1)
    head.eval()  # dropout off, to compare
    images, y = streams.train[1].images[:7], streams.train[1].labels[:7]
    logits = model(images)
    strategy.mb_y = y
    mine = F.cross_entropy(logits, y) + method.loss(strategy)
    mine.backward()
    mine_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    # the code: encode_image / encode_text sum the projections of the raw features, then normalise
    clip = model.clip
    raw_img = clip.encode_image(model.preprocess(images))
    raw_text = clip.encode_text(model.prompt_tokens[:4])
    img = torch.stack([head.projs_img[i](raw_img) for i in range(2)], dim=1).sum(dim=1)
    img_feas = img / img.norm(dim=-1, keepdim=True)
    txt = torch.stack([head.projs_text[i](raw_text) for i in range(2)], dim=1).sum(dim=1)
    text_feas = txt / txt.norm(dim=-1, keepdim=True)
    protos = torch.stack([F.normalize(clip.encode_image(model.preprocess(streams.train[e].images)), dim=-1)
                          [streams.train[e].labels == c].mean(0) for e, c in ((0, 0), (0, 1), (1, 2), (1, 3))])
    image_features, text_features, proto_feas = _proof_forward_transformer(head, img_feas, text_feas, protos, 2)
    logits_ref = image_features @ text_features.T
    clip_text_feas = text_feas[y]  # templates.format(label) through the same encode_text
    scale = clip.logit_scale.exp()
    labels = torch.arange(len(y))
    clip_loss = (F.cross_entropy(scale * img_feas @ clip_text_feas.T, labels)
                 + F.cross_entropy(scale * clip_text_feas @ img_feas.T, labels)) / 2
    total = F.cross_entropy(logits_ref, y) + clip_loss + F.cross_entropy(image_features @ proto_feas.T, y)
    total.backward()
    assert torch.allclose(logits, logits_ref, atol=1e-5)
    assert torch.allclose(mine, total, atol=1e-5)
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(mine_grads) <= set(ref_grads) and "clip.logit_scale" in mine_grads
    for n, g in mine_grads.items():
        assert torch.allclose(g, ref_grads[n], atol=1e-5, rtol=1e-4), n


def test_proof_trains_what_the_code_unfreezes():
    model, method, _ = _proof_setup()
    method.learned = 1  # training task 1: freeze_projection_weight_new and update_context_prompt
    trained = {id(p) for p in method.trainable_parameters(model)}
    head = method.head
    assert all(id(p) in trained for p in head.projs_img[1].parameters())
    assert not any(id(p) in trained for p in head.projs_img[0].parameters())
    assert all(id(p) in trained for m in head.projs_text for p in m.parameters())  # every text projection
    assert id(head.context_prompts[1]) in trained and id(head.context_prompts[0]) not in trained
    assert all(id(p) in trained for p in head.sel_attn.parameters()) and id(model.clip.logit_scale) in trained
    method.config.train_old_text_projections, method.config.train_logit_scale = False, False
    trained = {id(p) for p in method.trainable_parameters(model)}
    assert not any(id(p) in trained for p in head.projs_text[0].parameters()) and id(model.clip.logit_scale) not in trained


def test_proof_test_scores_match_eval_cnn():
    torch.manual_seed(1)
    model, method, streams = _proof_setup()
    for exp in range(2):
        _start(method, model, exp)
        method.after_training_exp(SimpleNamespace(model=model, experience=SimpleNamespace(current_experience=exp), device="cpu"))
    model.eval()
    clip, head = model.clip, method.head
    images = torch.cat([streams.train[0].images[:4], streams.train[1].images[:7]])
    raw = clip.encode_image(model.preprocess(images)).detach()
    text_ens = method.class_features(None, torch.zeros(4, raw.shape[1]))
    scores = method.scores(raw, text_ens)

    # the code's `_eval_cnn`: per class, the template embeddings through encode_text, normalised, averaged,
    # renormalised; per test batch (5 here), unnormalised projected images
    with torch.no_grad():
        text_features = []
        for name, templates in zip(streams.class_names, streams.class_templates):
            tokens = model.tokenizer([t.format(c=name) for t in templates])
            emb = torch.stack([head.projs_text[i](clip.encode_text(tokens)) for i in range(2)], dim=1).sum(dim=1)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            emb = emb.mean(dim=0)
            text_features.append(emb / emb.norm(dim=-1, keepdim=True))
        text_features = torch.stack(text_features)
        assert torch.allclose(text_ens, text_features, atol=1e-5)
        protos = head.img_prototypes[:4]
        outs = []
        for s in range(0, len(raw), 5):
            image_features = torch.stack([head.projs_img[i](raw[s:s + 5]) for i in range(2)], dim=1).sum(dim=1)
            f_img, f_text, f_proto = _proof_forward_transformer(head, image_features, text_features, protos, 2)
            outs.append(image_features @ text_features.T + f_img @ f_text.T + f_img @ f_proto.T)
        ref = torch.cat(outs)
    assert torch.allclose(scores, ref, atol=1e-4)
    # the fused terms are batch means: another batch size scores differently
    method.config.test_batch = 11
    assert not torch.allclose(method.scores(raw, text_ens), ref, atol=1e-4)


def _pycil_herding(vectors: np.ndarray, m: int) -> list:
    """`models/base.py` `_construct_exemplar`'s selection, on row indices instead of the data."""
    vectors = (vectors.T / (np.linalg.norm(vectors.T, axis=0) + 1e-8)).T
    class_mean = np.mean(vectors, axis=0)
    index = list(range(len(vectors)))
    selected, exemplar_vectors = [], []
    for k in range(1, m + 1):
        S = np.sum(exemplar_vectors, axis=0)
        mu_p = (vectors + S) / k
        i = np.argmin(np.sqrt(np.sum((class_mean - mu_p) ** 2, axis=1)))
        selected.append(index[i])
        exemplar_vectors.append(np.array(vectors[i]))
        vectors = np.delete(vectors, i, axis=0)
        del index[i]
    return selected


def test_proof_exemplars_are_pycil_herding_with_a_shrinking_share():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(40, 8, generator=g, dtype=torch.float64) + 1.0
    assert herding(feats, 12).tolist() == _pycil_herding(feats.numpy(), 12)
    torch.manual_seed(2)
    model, method, streams = _proof_setup()
    for exp in range(2):
        _start(method, model, exp)
        method.after_training_exp(SimpleNamespace(model=model, experience=SimpleNamespace(current_experience=exp), device="cpu"))
        seen = 2 * (exp + 1)
        assert {len(v) for v in method.exemplars.values()} == {min(6, 10 // seen)}
    # the reduced class keeps the head of its herding order; the new ones are herded on raw features
    raw = F.normalize(model.clip.encode_image(model.preprocess(streams.train[1].images)), dim=-1).detach()
    rows = streams.train[1].labels == 3
    picks = _pycil_herding(raw[rows].double().numpy(), 2)
    assert torch.equal(method.exemplars[3], streams.train[1].images[rows][picks])
