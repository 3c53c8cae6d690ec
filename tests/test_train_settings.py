"""Training settings: schedules against the references' formulas, label smoothing, own-experience
cross-entropy, clipping as CL-CLIP does it, augmentation, and what each real suite sets. How the
engine applies them on the tiny model: tests/test_engine.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipbench.augment import Augmenter, make_augmenter
from clipbench.engine import make_criterion, make_optimizer
from clipbench.plan import plan
from clipbench.runner import seed_everything
from clipbench.schedules import learning_rate
from clipbench.spec import DEFAULTS

TRAIN = {**DEFAULTS["train"], "epochs": 1, "batch_size": 8, "lr": 1e-3}


def _settings(**over):
    return {**TRAIN, **over}


# ---------------------------------------------------------------- schedules


def zscl_cosine_lr(base_lr, warmup_length, steps, step):
    """Transcribed from ZSCL (Thunderbeee/ZSCL b96e714, mtil/src/utils.py: `_warmup_lr`, `cosine_lr`)."""
    if step < warmup_length:
        return base_lr * (step + 1) / warmup_length
    e = step - warmup_length
    es = steps - warmup_length
    return 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr


def test_cosine_with_warmup_is_zscls_at_chosen_steps():
    train = _settings(lr=1e-5, schedule="cosine", warmup_steps=100)
    # hand-computed values of ZSCL's MTIL run (lr 1e-5, 100 warm-up steps, 1000 iterations)
    pinned = {0: 1e-7, 49: 5e-6, 99: 1e-5, 100: 1e-5, 550: 5e-6, 999: 0.5 * (1 + math.cos(math.pi * 899 / 900)) * 1e-5}
    for step, value in pinned.items():
        assert learning_rate(step, 1000, 16, train) == pytest.approx(value, rel=1e-12, abs=1e-20)
    for step in range(1000):
        assert learning_rate(step, 1000, 16, train) == pytest.approx(zscl_cosine_lr(1e-5, 100, 1000, step), rel=1e-12)
    # ZSCL's CIL: 30 warm-up steps, one epoch of batches
    cil = _settings(lr=7.1e-6, schedule="cosine", warmup_steps=30)
    for step in (0, 29, 30, 50, 78):
        assert learning_rate(step, 79, 79, cil) == pytest.approx(zscl_cosine_lr(7.1e-6, 30, 79, step), rel=1e-12)


def test_step_schedule_is_cl_clips_steplr():
    """CL-CLIP (877a69f, methods/ft.py): StepLR(step_size=10 * steps_per_epoch, gamma=0.1), stepped after
    every iteration; the rate of iteration k is the optimizer's rate before that step."""
    steps_per_epoch, epochs = 7, 15
    train = _settings(lr=1e-6, schedule="step", step_size=10, step_gamma=0.1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-6)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10 * steps_per_epoch, gamma=0.1)
    for step in range(epochs * steps_per_epoch):
        assert learning_rate(step, epochs * steps_per_epoch, steps_per_epoch, train) == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert learning_rate(69, 105, 7, train) == pytest.approx(1e-6)
    assert learning_rate(70, 105, 7, train) == pytest.approx(1e-7)


def test_constant_schedule_and_warmup_before_step():
    assert all(learning_rate(s, 50, 5, TRAIN) == TRAIN["lr"] for s in range(50))
    warm = _settings(lr=1.0, schedule="step", step_size=1, step_gamma=0.5, warmup_steps=4)
    assert [learning_rate(s, 12, 4, warm) for s in range(10)] == [0.25, 0.5, 0.75, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]


# ---------------------------------------------------------------- clipping


def test_paper_suite_clip_is_cl_clips_clip_of_loss_scaled_gradients():
    """CL-CLIP clips at 1.0 the gradient of the GradScaler-scaled loss (initial scale 2^16) and the
    optimizer step unscales it afterwards: the same as clipping the true gradient at 2^-16."""
    [spec] = plan("paper", ["finetune"], ["paper_coco_mst"], strict_weights=False)
    torch.manual_seed(0)
    grads = [torch.randn(5, 3), torch.randn(7)]
    scale = 2.0 ** 16
    reference = [g.clone() * scale for g in grads]
    params = [torch.nn.Parameter(torch.empty_like(g)) for g in grads]
    for p, g in zip(params, reference):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    reference = [p.grad / scale for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, spec.train["grad_clip"])
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- cross-entropy


def test_label_smoothing_loss_is_the_smoothed_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0]])
    labels = torch.tensor([0, 2])
    eps = 0.2
    logp = F.log_softmax(logits, dim=1)
    expected = ((1 - eps) * -logp[torch.arange(2), labels] + eps * -logp.mean(1)).mean()
    assert make_criterion("seen", eps)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # current: the smoothing spreads over the sample's own experience's classes only (ZSCL's softmax
    # over the step's class names), never over masked logits
    got = make_criterion("current", eps, [(0, 2), (2, 4)])(logits, labels)
    own = [F.log_softmax(logits[0, 0:2], 0), F.log_softmax(logits[1, 2:4], 0)]
    by_hand = sum((1 - eps) * -lp[y] + eps * -lp.mean() for lp, y in zip(own, [0, 0])) / 2
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_current_classes_equal_cl_clips_mask_and_score_replay_over_its_own_task():
    torch.manual_seed(0)
    logits = torch.randn(6, 6) * 5
    ranges = [(0, 2), (2, 4), (4, 6)]
    current = torch.tensor([4, 5, 4, 5, 5, 4])
    # CL-CLIP (methods/ft.py): logits of other sessions' classes filled with -1e4, then cross-entropy
    mask = torch.zeros(6, dtype=torch.bool)
    mask[4:6] = True
    reference = F.cross_entropy(logits.masked_fill(~mask, -1e4), current)
    torch.testing.assert_close(make_criterion("current", 0.0, ranges)(logits, current), reference)
    # replayed samples (labels 0 and 3) are scored over their own experience's classes
    mixed = torch.tensor([4, 0, 5, 3, 5, 4])
    got = make_criterion("current", 0.0, ranges)(logits, mixed)
    per_sample = [F.cross_entropy(logits[i:i + 1, lo:hi], mixed[i:i + 1] - lo)
                  for i, (lo, hi) in enumerate([(4, 6), (0, 2), (4, 6), (2, 4), (4, 6), (4, 6)])]
    torch.testing.assert_close(got, torch.stack(per_sample).mean())
    assert F.cross_entropy(logits.masked_fill(~mask, -1e4), mixed).item() > 1000  # what the mask did to them


# ---------------------------------------------------------------- augmentation


@pytest.mark.parametrize("recipe", ["clclip", "zscl"])
def test_augmentation_is_deterministic_per_seed_and_leaves_the_global_generator(recipe):
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    outputs = []
    for seed in (0, 0, 1):
        seed_everything(seed, 0)
        augment = make_augmenter(recipe)
        state = torch.get_rng_state()
        outputs.append([augment(images), augment(images)])
        assert torch.equal(torch.get_rng_state(), state)  # the data order is not moved by augmenting
    (a1, a2), (b1, b2), (c1, _) = outputs
    assert a1.dtype == torch.uint8 and a1.shape == images.shape
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same seed, same images
    assert not torch.equal(a1, a2)  # a fresh draw per batch
    assert not torch.equal(a1, c1)  # another seed, other draws
    assert not torch.equal(a1, images)


def test_clclip_recipe_is_scale_crop_flip():
    """A horizontal ramp through CL-CLIP's recipe (resize x 256/224, random crop back, flip with p = 0.5):
    its slope shrinks by 224/256, its sign flips for about half the images, each image has its own crop."""
    ramp = torch.arange(224, dtype=torch.float32).mul(255 / 223).round().to(torch.uint8)
    images = ramp.view(1, 1, 1, 224).expand(32, 3, 224, 224).contiguous()
    out = Augmenter("clclip", seed=3)(images).float()
    slopes = (out[:, 0, 112, 203] - out[:, 0, 112, 20]) / 183
    assert slopes.abs() == pytest.approx(torch.full((32,), 255 / 223 * 224 / 256), rel=0.02)
    assert 0 < (slopes < 0).sum().item() < 32  # some flipped, some not
    assert len({o[0, 112, 20].item() for o in out}) > 4  # crops differ within the batch


# ---------------------------------------------------------------- optimizer and suites


def test_adam_is_available():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert type(make_optimizer(p, _settings(optimizer="adam"))) is torch.optim.Adam
    assert type(make_optimizer(p, _settings(optimizer="adamw"))) is torch.optim.AdamW


def _train(suite, protocol):
    [spec] = plan(suite, ["finetune"], [protocol], strict_weights=False)
    return spec.train


def test_real_suites_set_their_references_training():
    ost, mst = _train("paper", "paper_coco_ost"), _train("paper", "paper_coco_mst")
    assert (ost["optimizer"], ost["lr"], ost["epochs"], ost["batch_size"]) == ("adam", 1e-6, 15, 100)
    assert (ost["schedule"], ost["step_size"], ost["step_gamma"]) == ("step", 10, 0.1)
    assert mst["schedule"] == "constant"  # CL-CLIP never steps its scheduler in multi-session training
    assert ost["augment"] == mst["augment"] == "clclip" and ost["ce_classes"] == "current"
    mtil = _train("mtil", "mtil_order1")
    assert (mtil["iterations"], mtil["schedule"], mtil["warmup_steps"], mtil["label_smoothing"]) == (1000, "cosine", 100, 0.2)
    assert (mtil["augment"], mtil["ce_classes"], mtil["grad_clip"]) == ("zscl", "current", 0.0)
    cil = _train("cil_cifar100", "cifar100_10steps")
    assert (cil["lr"], cil["epochs"], cil["iterations"], cil["warmup_steps"]) == (7.1e-6, 1, 0, 30)
    assert (cil["schedule"], cil["label_smoothing"], cil["ce_classes"]) == ("cosine", 0.2, "current")


@pytest.mark.parametrize("suite, protocol", [("mini", "mini_fashion_ost"), ("tiny", "tiny_shapes")])
def test_offline_suites_keep_plain_training(suite, protocol):
    train = _train(suite, protocol)
    assert {k: train[k] for k in ("schedule", "warmup_steps", "label_smoothing", "grad_clip", "augment", "iterations",
                                  "ce_classes", "optimizer")} == {
        "schedule": "constant", "warmup_steps": 0, "label_smoothing": 0.0, "grad_clip": 0.0, "augment": "none",
        "iterations": 0, "ce_classes": "seen", "optimizer": "adamw"}


@pytest.mark.parametrize("recipe", ["clclip", "zscl"])
def test_batch_augmentation_equals_the_reference_transform_image_by_image(recipe):
    """The augmenter works on whole batches (clclip resizes the batch at once); every image still gets the
    pixels and the random draw the reference's per-sample transform gives it, batch after batch."""
    from torchvision.transforms import v2

    from clipbench.augment import Augmenter

    bicubic = v2.InterpolationMode.BICUBIC
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    reference = (v2.Compose([v2.Resize(round(40 * 256 / 224), interpolation=bicubic, antialias=True),
                             v2.RandomCrop((40, 40)), v2.RandomHorizontalFlip(p=0.5)]) if recipe == "clclip"
                 else v2.RandomResizedCrop((40, 40), scale=(0.9, 1.0), interpolation=bicubic, antialias=True))
    augmenter, generator = Augmenter(recipe, 11), torch.Generator().manual_seed(11)
    for _ in range(3):
        seed = int(torch.randint(2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            expected = torch.stack([reference(image) for image in images])
        assert torch.equal(augmenter(images), expected)
