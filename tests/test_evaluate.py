"""Evaluation primitives: retrieval against brute force, zero-shot against an independent computation."""

import torch
import torch.nn.functional as F

from clipbench.evaluate import accuracy, retrieval_recall


def brute_force_recall(img, txt, caption_image, ks=(1, 5, 10)):
    sim = (img @ txt.T).tolist()
    n, m = len(img), len(txt)
    out = {}
    for k in ks:
        hits = 0
        for i in range(n):
            mine = [c for c in range(m) if caption_image[c] == i]
            best = max(sim[i][c] for c in mine)
            better_wrong = sum(1 for c in range(m) if caption_image[c] != i and sim[i][c] >= best)
            hits += better_wrong < k
        out[f"i2t_r{k}"] = hits / n
        hits = 0
        for c in range(m):
            own = sim[caption_image[c]][c]
            better_wrong = sum(1 for i in range(n) if i != caption_image[c] and sim[i][c] >= own)
            hits += better_wrong < k
        out[f"t2i_r{k}"] = hits / m
    return out


def test_recall_equals_brute_force_with_several_captions_and_ties():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(30, 8, generator=g), dim=-1)
    caption_image = torch.tensor([i for i in range(30) for _ in range(1 + i % 3)])
    txt = F.normalize(img[caption_image] + 0.9 * torch.randn(len(caption_image), 8, generator=g), dim=-1)
    txt[5] = txt[4]  # exact ties between captions
    img[7] = img[6]  # and between images
    # a small chunk size exercises the chunked paths
    assert retrieval_recall(img, txt, caption_image, chunk=7) == brute_force_recall(img, txt, caption_image)


def test_ties_count_against_the_model():
    img = torch.ones(4, 3) / 3**0.5
    txt = torch.ones(4, 3) / 3**0.5
    out = retrieval_recall(img, txt, torch.arange(4), ks=(1, 4))
    assert out["i2t_r1"] == 0.0 and out["t2i_r1"] == 0.0
    assert out["i2t_r4"] == 1.0


def test_perfect_embeddings_give_full_recall():
    img = torch.eye(5)
    caption_image = torch.tensor([0, 0, 1, 2, 3, 4])
    out = retrieval_recall(img, img[caption_image], caption_image)
    assert out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0


def test_accuracy_scores_only_the_given_class_range():
    feats = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 3])
    classes = torch.eye(4)
    assert accuracy(feats, labels, classes) == 1.0
    # scoring only classes 2..3: samples of classes 0 and 1 cannot be right
    assert accuracy(feats, labels, classes, 2, 4) == 0.5
