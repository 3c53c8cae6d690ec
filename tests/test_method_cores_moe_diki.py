"""Cores of MoE-Adapters (gating, mixture, expert freezing, DDAS) and DIKI (prefix attention, Gaussians,
vote), pinned against transcriptions of the reference code; and batch-wise task inference in evaluation."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipbench.engine import set_trainable, train_experience
from clipbench.errors import ClipbenchError
from clipbench.methods import ddas
from clipbench.methods.base import Method, Route
from clipbench.methods.diki import DIKI, PrefixAttention, choose, gaussian, log_likelihoods
from clipbench.methods.moe_adapters import MixtureOfAdapters, MoEAdapters, MoEAdaptersCIL, noisy_top_k_gating
from clipbench.models import load_model
from clipbench.evaluator import Evaluator
from clipbench.runner import seed_everything
from helpers import SMALL, records, run_cli
from test_method_cores import streams, tiny_model  # noqa: F401  (fixture and helper)

TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.0, "optimizer": "adamw", "ce_classes": "current"}


# ------------------------------------------------------------------ MoE-Adapters


def reference_gating(x, w_gate, w_noise, k, train, noise_epsilon=1e-2):
    """Transcription of MoE-Adapters4CL mtil/clip/model.py `noisy_top_k_gating` (gates only)."""
    clean_logits = x @ w_gate
    if train:
        noise_stddev = F.softplus(x @ w_noise) + noise_epsilon
        logits = clean_logits + torch.randn_like(clean_logits) * noise_stddev
    else:
        logits = clean_logits
    top_logits, top_indices = logits.topk(min(k + 1, w_gate.shape[1]), dim=1)
    top_k_gates = torch.softmax(top_logits[:, :k], dim=1)
    return torch.zeros_like(logits).scatter(1, top_indices[:, :k], top_k_gates)


@pytest.mark.parametrize("noisy", [False, True])
def test_noisy_top_2_gating_matches_the_code(noisy):
    g = torch.Generator().manual_seed(0)
    x, w_gate, w_noise = torch.randn(9, 6, generator=g), torch.randn(6, 22, generator=g), torch.randn(6, 22, generator=g)
    torch.manual_seed(1)
    ours = noisy_top_k_gating(x, w_gate, w_noise, 2, noisy)
    torch.manual_seed(1)
    theirs = reference_gating(x, w_gate, w_noise, 2, noisy)
    assert torch.equal(ours, theirs)
    assert ((ours > 0).sum(dim=1) == 2).all() and torch.allclose(ours.sum(dim=1), torch.ones(9))
    if not noisy:  # the two largest clean logits, softmaxed
        top = (x @ w_gate).topk(2, dim=1)
        assert torch.allclose(ours.gather(1, top.indices), torch.softmax(top.values, dim=1))


def _check_gated_sum(experts: int, routers: int) -> None:
    """A mixture's output is sum over the top-2 gates of gate x scale x up(relu(down(x))) (mtil/clip/model.py)."""
    torch.manual_seed(0)
    mixture = MixtureOfAdapters(width=8, experts=experts, routers=routers, bottleneck=4, scale=0.1, dropout=0.1,
                                top_k=2).eval()
    x = torch.randn(6, 3, 8)
    assert mixture(x) is None  # no task: the block as it was
    mixture.task = routers - 1
    assert torch.equal(mixture(x), torch.zeros_like(x))  # zero-initialised up-projections
    with torch.no_grad():
        for up in mixture.up:
            up.weight.normal_()
        mixture.routers[routers - 1].normal_()
    gates = (x[:, 0] @ mixture.routers[routers - 1]).topk(2, dim=1)
    expected = torch.zeros_like(x)
    for n in range(6):
        for gate, e in zip(torch.softmax(gates.values[n], 0), gates.indices[n]):
            expected[n] += gate * 0.1 * mixture.up[e](F.relu(mixture.down[e](x[n])))
    assert torch.allclose(mixture(x), expected, atol=1e-6)
    if routers > 1:
        mixture.task = 0  # another task's router (zero): a different mixture
        assert not torch.allclose(mixture(x), expected)


def test_pinned_moe_adapters():
    """The MTIL variant's mixture: many experts, one router per task."""
    _check_gated_sum(experts=5, routers=2)


def test_pinned_moe_adapters_cil():
    """The class-incremental variant's mixture: 2 experts, one router for every task."""
    _check_gated_sum(experts=2, routers=1)


def _tiny_encodings(streams):
    """The tiny model, four test images, three prompts, and their encodings before any method touches it."""
    model = tiny_model(streams)
    images = model.preprocess(streams.test[0].images[:4])
    tokens = model.prompt_tokens[:3]
    with torch.no_grad():
        before = model.clip.encode_image(images), model.clip.encode_text(tokens)
    return model, images, tokens, before


def test_zero_adapters_leave_the_tiny_clip_unchanged_and_trained_ones_do_not(streams):
    model, images, tokens, before = _tiny_encodings(streams)
    method = MoEAdaptersCIL()
    method.setup(model, streams)
    assert len(method.mixtures) == 4  # 2 image blocks and 2 text blocks
    method.set_task(0)
    with torch.no_grad():
        assert torch.equal(model.clip.encode_image(images), before[0])
        assert torch.equal(model.clip.encode_text(tokens), before[1])
        for mixture in method.mixtures:
            mixture.up[0].bias.fill_(0.01)
        assert not torch.allclose(model.clip.encode_image(images), before[0])


def test_most_used_experts_are_frozen_after_each_task_and_stay_put(streams):
    model = tiny_model(streams)
    method = MoEAdapters(MoEAdapters.Config(ddas_iterations=2, ddas_reference_iterations=2))
    method.setup(model, streams)
    set_trainable(model, method)
    method.before_training_exp(None)
    for mixture in method.mixtures:  # usage as if counted during task 0
        mixture.usage.zero_()
        mixture.usage[[7, 12, 3, 0]] = torch.tensor([9.0, 5.0, 5.0, 1.0])  # 7, then 3 and 12 tied: the lower
    method.after_training_exp(None)
    assert method.frozen == {i: {3, 7} for i in range(4)}
    trainable = {id(p) for p in method.trainable_parameters(model)}
    for mixture in method.mixtures:
        assert id(mixture.down[3].weight) not in trainable and id(mixture.up[7].bias) not in trainable
        assert id(mixture.down[12].weight) in trainable
        assert id(mixture.routers[1]) in trainable and id(mixture.routers[0]) not in trainable
    frozen_before = method.mixtures[0].down[7].weight.clone()
    open_before = [m.weight.clone() for m in method.mixtures[0].down]
    with torch.no_grad():
        for mixture in method.mixtures:
            for up in mixture.up:
                up.weight.normal_(std=0.1)  # gradients reach the down-projections
    train_experience(model, method, streams.train[1], 1, 4, TRAIN, "cpu", False, experience_classes=streams.experience_classes)
    assert torch.equal(method.mixtures[0].down[7].weight, frozen_before)
    assert any(not torch.equal(m.weight, b) for m, b in zip(method.mixtures[0].down, open_before))
    assert len(method.ddas.tasks) == 2 and method.mixtures[0].task is None  # DDAS routes the tests


def test_ddas_selection_threshold_reference_and_ties():
    assert ddas.select([0.05, 0.02, 0.03], has_reference=True, threshold=0.0655) == 0  # task 0 (index 1)
    assert ddas.select([0.01, 0.02, 0.03], has_reference=True, threshold=0.0655) is None  # the reference fits best
    assert ddas.select([0.09, 0.07, 0.08], has_reference=True, threshold=0.0655) is None  # above the threshold
    assert ddas.select([0.03, 0.02, 0.02], has_reference=False, threshold=0.0655) == 1  # a tie: the earlier
    assert ddas.select([], has_reference=False, threshold=0.0655) is None


def test_ddas_chooses_the_task_whose_autoencoder_reconstructs_the_batch():
    torch.manual_seed(0)
    selector = object.__new__(ddas.DDAS)  # without an extractor: features are given directly
    selector.features, selector.threshold, selector.reference = (lambda f: f), 0.0655, None
    centres = torch.rand(2, 64)
    clusters = [torch.sigmoid(6 * (c - 0.5) + 0.3 * torch.randn(200, 64)) for c in centres]
    selector.tasks = [ddas.train_autoencoder(c, iterations=300) for c in clusters]
    assert selector.choose(clusters[0][:32]) == 0 and selector.choose(clusters[1][:32]) == 1
    assert selector.choose(torch.rand(32, 64).round()) is None  # far from both: zero-shot
    # the decision is on the batch mean: the batch loss is the mean of the images' losses
    mixed = torch.cat([clusters[0][:20], clusters[1][:12]])
    per_image = [ddas.batch_loss(selector.tasks[0], mixed[i:i + 1]) for i in range(32)]
    assert ddas.batch_loss(selector.tasks[0], mixed) == pytest.approx(sum(per_image) / 32, rel=1e-5)
    selector.threshold = 1.0  # a mixed batch reconstructs worse than either set: compare the mean alone
    assert selector.choose(mixed) == 0 and selector.choose(mixed.flip(0)[:20]) == 1
    selector.reference = ddas.train_autoencoder(torch.cat(clusters), iterations=300)
    assert selector.choose(clusters[0][:32]) in (0, None)  # the reference competes first


def test_ddas_autoencoder_is_the_codes_transcription():
    ae = ddas.new_autoencoder(10, torch.Generator().manual_seed(0))
    enc, dec = nn.Linear(10, 100), nn.Linear(100, 10)
    with torch.no_grad():
        enc.weight.copy_(ae["w1"]), enc.bias.copy_(ae["b1"]), dec.weight.copy_(ae["w2"]), dec.bias.copy_(ae["b2"])
    f = torch.rand(4, 10)
    reference = nn.Sequential(enc, nn.ReLU(), dec, nn.Sigmoid())  # Autoencoder: encoder then decoder
    assert torch.allclose(ddas.reconstruct(ae, f), reference(f))
    assert ae["w1"].abs().max() <= 1 / math.sqrt(10) and ae["w2"].abs().max() <= 1 / math.sqrt(100)


def test_ddas_extractors(monkeypatch, tmp_path):
    extractor = ddas.build_extractor("efficientnet_lite0")
    with torch.no_grad():
        assert extractor(torch.zeros(2, 3, 32, 32)).shape == (2, 1280)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ClipbenchError, match="alexnet-owt-7be5be79.pth"):
        ddas.build_extractor("alexnet")
    with pytest.raises(ClipbenchError, match="ddas_extractor"):
        MoEAdapters.Config(ddas_extractor="vgg")


# ------------------------------------------------------------------ DIKI


def reference_prefix_attention(y, attn, prefix, weight):
    """Transcription of DIKI clip/attention.py `multi_head_attention_forward` (batch-first here):
    out_proj(sdpa(q, k, v) + weight * sdpa(q, prefix_k, prefix_v))."""
    n, length, width = y.shape
    heads, d = attn.num_heads, width // attn.num_heads
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(t.shape[0], -1, heads, d).transpose(1, 2)  # noqa: E731
    main = F.scaled_dot_product_attention(split(q), split(k), split(v))
    pk, pv = prefix[0][None].expand(n, -1, -1), prefix[1][None].expand(n, -1, -1)
    extra = F.scaled_dot_product_attention(split(q), split(pk), split(pv)) * weight.view(n, 1, 1, 1)
    out = (main + extra).transpose(1, 2).reshape(n, length, width)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def test_pinned_diki():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    module = PrefixAttention(width=8, heads=2, tasks=3, length=4)
    with torch.no_grad():
        module.prefixes[2][1].normal_()  # trained values
    y, weight = torch.randn(5, 7, 8), torch.rand(5)
    module.task, module.weight = 2, weight
    ours = attn(y, y, y, need_weights=False)[0] + module(y, attn)
    assert torch.allclose(ours, reference_prefix_attention(y, attn, module.prefixes[2], weight), atol=1e-6)
    module.task = 1  # untrained values: nothing added
    assert torch.equal(module(y, attn), torch.zeros_like(y))
    assert module.prefixes[1][0].abs().max() <= 1 and module.prefixes[1][0].std() > 0.3  # keys U(-1, 1)


def test_zero_prefix_values_give_the_original_blocks(streams):
    model, images, tokens, before = _tiny_encodings(streams)
    method = DIKI()
    method.setup(model, streams)
    assert len(method.prefixes) == 4  # the tiny model has 2 blocks per encoder (depth 8 takes all)
    method.set_route(0, torch.full((4,), 0.7), torch.tensor(0.7))
    with torch.no_grad():
        assert torch.allclose(model.clip.encode_image(images), before[0], atol=1e-6)
        assert torch.allclose(model.clip.encode_text(tokens), before[1], atol=1e-6)
        method.prefixes[0].prefixes[0][1].normal_()
        assert not torch.allclose(model.clip.encode_image(images), before[0], atol=1e-4)


def test_gaussian_likelihood_picks_the_task_and_weights_as_the_code():
    g = torch.Generator().manual_seed(0)
    tasks = [torch.randn(300, 6, generator=g) * 0.1 + shift for shift in (0.0, 1.0, -1.0)]
    gaussians = [gaussian(t) for t in tasks]
    mean, cov = gaussians[1]["mean"], gaussians[1]["cov"]
    assert torch.allclose(cov, torch.cov(tasks[1].double().T) + 1e-7 * torch.eye(6))
    f = torch.cat([tasks[1][:5] + 0.01, tasks[2][:2]])
    logp = log_likelihoods(f, gaussians)
    d = f.double() - mean
    explicit = -0.5 * (6 * math.log(2 * math.pi) + torch.logdet(cov) + (d @ torch.linalg.inv(cov) * d).sum(1))
    assert torch.allclose(logp[:, 1], explicit)
    from torch.distributions import MultivariateNormal  # the code's MultivariateNormal(mean, covar).log_prob

    assert torch.allclose(logp[:, 2], MultivariateNormal(gaussians[2]["mean"], gaussians[2]["cov"]).log_prob(f.double()))
    index, weight, task = choose(logp)
    assert index.tolist() == [1] * 5 + [2] * 2 and task == 1  # the batch's majority
    assert torch.allclose(weight.double(), torch.sigmoid(logp.max(dim=1).values / 512 - 1))
    assert choose(logp[5:6])[2] == 2  # a batch of one: its own task
    assert choose(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))[2] == 1  # a tie: the lower task id


# ------------------------------------------------------------------ batch-wise task inference in evaluation


class _Recording:
    """A stand-in batch-wise method: routes nothing, records every batch it was asked about."""

    infers_task_per_batch = True
    # batch size 1 through the base class's defaults: one `route_batch` per image
    route_each, merge_routes, texts_under_routes = Method.route_each, Method.merge_routes, Method.texts_under_routes

    def __init__(self):
        self.batches = []

    def route_batch(self, loaded, images):
        self.batches.append(images.clone())
        return Route(key=len(self.batches) % 2, enter=lambda: None, exit=lambda: None)

    def class_features(self, loaded, text_classes):
        return text_classes

    def prompt_templates(self, templates):
        return templates


def test_batch_wise_evaluation_stays_within_each_set_and_matches_the_plain_path(streams):
    seed_everything(0, "model")
    loaded = load_model("clipbench-tiny", None)
    spec = SimpleNamespace(eval={"batch_size": 5}, precision="fp32")
    plain = Evaluator(streams, loaded, spec, "cpu", False).evaluate(2, version=1)
    method = _Recording()
    row = Evaluator(streams, loaded, spec, "cpu", False, method).evaluate(2, version=1)
    sets = [t.images for t in streams.test] + [z.data.images for z in streams.zeroshot_sets.values()] + \
        [c.images for c in streams.retrieval_sets.values()]
    total, seen, phase = sum(len(s) for s in sets), 0, 0
    while seen < total:  # the batches at the evaluation batch size come first
        seen += len(method.batches[phase])
        phase += 1
    at_b, at_1 = method.batches[:phase], method.batches[phase:]
    assert seen == total and len(at_1) == total and all(len(b) == 1 for b in at_1)
    for batch in at_b:  # each batch within one set
        assert len(batch) <= 5 and any(any(torch.equal(batch, s[i:i + len(batch)]) for i in range(len(s))) for s in sets)
    for measured in (row, row.batch1):  # a route that changes nothing: the plain figures
        assert measured.acc == pytest.approx(plain.acc) and measured.zeroshot == pytest.approx(plain.zeroshot)
        assert measured.retrieval == plain.retrieval  # recalls: fractions of 8 images


def test_batch_wise_methods_record_both_batch_sizes(results):
    assert run_cli("run", "--method", "diki", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", *SMALL, "train.lr=1.0") == 0
    [rec] = records(results).values()
    assert len(rec["raw"]["acc_matrix"]) == len(rec["raw"]["batch1"]["acc_matrix"]) == 4
    assert rec["raw"]["batch1"]["acc_matrix"][0] == rec["raw"]["acc_matrix"][0]  # before training: one model
    for metric in ("last", "zs_retention", "zs_retention.shapes", "i2t_r1"):
        assert f"{metric}@bs1" in rec["metrics"] and metric in rec["metrics"]
    assert rec["metric_versions"]["last@bs1"] == rec["metric_versions"]["last"]


@pytest.mark.parametrize("name", ["diki", "moe_adapters"])
def test_batch_one_in_batches_equals_one_image_at_a_time(streams, name):
    """`Evaluator._routed_row_each` (every image's own route, images of one route group encoded together, texts
    per route in shared batches) gives the numbers of a true batch-size-1 evaluation (`_routed_row(row, 1)`,
    one image per forward pass), after two experiences, when routes differ between images."""
    from clipbench.methods.base import METHODS

    cls = METHODS.get(name)
    seed_everything(0, "model")
    loaded = load_model("clipbench-tiny", None)
    from clipbench.engine import CLIPClassifier

    model = CLIPClassifier(loaded, streams.class_names, streams.train_template)
    method = cls(cls.Config(**({"ddas_iterations": 5, "ddas_reference_iterations": 5} if name == "moe_adapters" else {})))
    method.setup(model, streams)
    set_trainable(model, method)
    train = dict(TRAIN, lr=1.0 if name == "diki" else 1e-3, optimizer="sgd" if name == "diki" else "adamw")
    for exp in range(2):
        seed_everything(0, exp)
        classes = streams.experience_classes[exp]
        train_experience(model, method, streams.train[exp], exp, classes[-1] + 1, train, "cpu", False,
                         experience_classes=streams.experience_classes)
    spec = SimpleNamespace(eval={"batch_size": 6}, precision="fp32")
    evaluator = Evaluator(streams, loaded, spec, "cpu", False, method)
    routes = method.route_each(loaded, streams.test[0].images)
    exact = evaluator._routed_row(2, 1)
    fast = evaluator._routed_row_each(2)
    assert fast.acc == exact.acc and fast.zeroshot == exact.zeroshot and fast.retrieval == exact.retrieval
    assert len(routes) == len(streams.test[0].images)
    assert len({r.key for r in routes}) > 1  # images take different routes (DIKI: their own weights; DDAS: tasks)


def test_while_a_task_trains_only_its_class_prompts_are_encoded(streams):
    """MoE-Adapters' finetune.py encodes only the current dataset's names: the text experts' usage counts only
    them (the other classes' logits are -1e4 while it trains), and evaluation sees every class again."""
    model = tiny_model(streams)
    method = MoEAdapters(MoEAdapters.Config(ddas_iterations=2, ddas_reference_iterations=2))
    method.setup(model, streams)
    set_trainable(model, method)
    method.before_training_exp(None)
    method.after_training_exp(None)  # task 0 learned
    method.before_training_exp(None)  # task 1 trains
    lo, hi = streams.experience_classes[1][0], streams.experience_classes[1][-1] + 1
    assert model.text_rows == (lo, hi)
    model.num_active = hi
    text = [m for m, s in zip(method.mixtures, method.sites) if s.tower == "text"]
    for mixture in method.mixtures:
        mixture.usage.zero_()
    model.train()
    logits = model(streams.train[1].images[:4])
    assert logits.shape == (4, hi) and (logits[:, :lo] == -1e4).all() and (logits[:, lo:hi] > -1e4).all()
    assert all(m.usage.sum() == (hi - lo) * m.top_k for m in text)  # one count per prompt and chosen expert
    method.after_training_exp(None)
    assert model.text_rows is None and model(streams.test[0].images[:2]).shape == (2, hi)
