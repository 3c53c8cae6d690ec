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


def test_simplecil_prototype_classifier_matches_c3box():
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


def test_rapf_hard_pairs_and_batch_loss_match_the_code():
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
