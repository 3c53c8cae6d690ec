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
