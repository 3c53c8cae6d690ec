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


def test_pinned_mg_clip():
    """MG-CLIP's inference fusion, the double softmax included (main.py)."""
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


# ------------------------------------------------------------------ CLAP4CLIP


def reference_init_new_heads(individual):
    """continual_clip_variational.py `init_new_heads.get_new_task_embed`: mean (or var) over templates,
    layer = E^T E, divided by layer.shape[0]."""
    out = []
    for var in (False, True):
        embeds = individual.var(1) if var else individual.mean(1)
        layer = embeds.t() @ embeds
        out.append(layer / layer.shape[0])
    return out


def reference_attention_mask(task_sizes, n_query):
    """`CLIP.get_attention_mask` with expandable_tokens False."""
    mask = torch.zeros((n_query, n_query), dtype=torch.bool)
    start, end = 0, 0
    for size in task_sizes:
        start = end
        end += size
        for cls in range(start, end):
            mask[cls][:start] = True
            mask[cls][end:] = True
    return mask


def test_clap4clip_adapter_init_sigma_kl_and_mask_match_the_code():
    from torch.distributions import Normal, kl_divergence

    from clipbench.methods.clap4clip import kl_term, sigma_transform, task_embedding_init, task_mask

    torch.manual_seed(0)
    individual = F.normalize(torch.randn(7, 5, 512), dim=-1)  # [classes, templates, D]
    mu_w, sigma_w = task_embedding_init(individual)
    ref_mu, ref_sigma = reference_init_new_heads(individual)
    assert torch.allclose(mu_w, ref_mu, atol=1e-7) and torch.allclose(sigma_w, ref_sigma, atol=1e-9)
    assert torch.allclose(mu_w, individual.mean(1).T @ individual.mean(1) / 512)  # (E^T E) / 512
    x = torch.randn(4, 9) * 5
    assert torch.allclose(sigma_transform(x), F.softplus(x) * 0.999 + 0.001)
    assert (sigma_transform(torch.full((3,), -50.0)) >= 0.001).all()
    mu, sigma = torch.randn(6, 8), sigma_transform(torch.randn(6, 8))
    ref_kl = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(mu))).mean(0).sum() * 0.001
    assert torch.allclose(kl_term(mu, sigma), ref_kl)
    closed = (0.5 * (sigma**2 + mu**2 - 1) - sigma.log()).mean(0).sum() * 0.001  # KL to N(0, 1) in closed form
    assert torch.allclose(kl_term(mu, sigma), closed, atol=1e-6)
    assert torch.equal(task_mask([3, 2, 4]), reference_attention_mask([3, 2, 4], 9))


def test_clap4clip_lasp_matches_the_codes_per_template_form():
    from clipbench.methods.clap4clip import lasp_loss

    torch.manual_seed(0)
    prior = F.normalize(torch.randn(4, 6, 16), dim=-1)  # frozen_text_features_individual of one task
    rsamples = torch.randn(20, 4, 16)
    sims = torch.stack([prior @ rsamples[r].t() for r in range(rsamples.shape[0])], 0)
    sims = sims.mean(2).mean(0)
    reference = F.cross_entropy(sims, torch.arange(sims.size(0))) * 15
    assert torch.allclose(lasp_loss(prior.mean(1), rsamples, 15.0), reference, atol=1e-5)


def test_pinned_clap4clip():
    """CLIP.forward (training, use_vga, expandable_adapter, variational, lasp) re-stated with the same modules
    and random draws: logits per task cat'ed, KL and LASP for the current task only."""
    from torch.distributions import Normal, kl_divergence

    from clipbench.methods.clap4clip import VariationalHead, sample_cross_entropy, sigma_transform

    torch.manual_seed(0)
    head = VariationalHead(16, 3)
    head.eval()  # dropout off, so both passes see the same VGA output
    images = F.normalize(torch.randn(5, 16), dim=-1)
    individual = F.normalize(torch.randn(5, 3, 16), dim=-1)
    text = F.normalize(individual.mean(1), dim=-1)
    sizes, scale, samples = [2, 3], 100.0, 4
    torch.manual_seed(1)
    logits, extra = head(images, text, sizes, samples, scale, [1], individual.mean(1), 15.0, 0.001)
    torch.manual_seed(1)
    mask = reference_attention_mask(sizes, 5)
    vga_all = head.vga(text.clone().unsqueeze(0), images.unsqueeze(0), tgt_mask=mask).squeeze(0)
    ref_logits, losses, start, end = [], [], 0, 0
    for i, size in enumerate(sizes):
        start = end
        end += size
        tf = text[start:end] + vga_all[start:end]
        q = Normal(head.mu[i](tf), sigma_transform(head.sigma[i](tf)))
        rs = q.rsample([samples])
        tf_ = tf.unsqueeze(0).expand(samples, -1, -1) + rs
        if i == 1:
            prior = individual[start:end]
            sims = torch.stack([prior @ rs[r].t() for r in range(samples)], 0).mean(2).mean(0)
            losses.append(F.cross_entropy(sims, torch.arange(sims.size(0))) * 15)
            p = Normal(torch.zeros_like(tf), torch.ones_like(tf))
            losses.append(kl_divergence(q, p).mean(0).sum() * 0.001)
        ref_logits.append(scale * images @ tf_.permute(0, 2, 1))
    ref_logits = torch.cat(ref_logits, -1)
    assert torch.allclose(logits, ref_logits, atol=1e-4) and torch.allclose(extra, sum(losses), atol=1e-5)
    y = torch.tensor([0, 4, 2, 1, 3])
    targets = y.unsqueeze(0).expand(samples, -1).contiguous().view(-1)
    assert torch.allclose(sample_cross_entropy(logits, y), F.cross_entropy(ref_logits.view(-1, 5), targets), atol=1e-5)


def test_clap4clip_memory_is_the_first_m_per_class_and_finetunes(streams, tmp_path):
    from clipbench.methods.clap4clip import first_per_class

    images, labels = torch.arange(12).view(12, 1, 1, 1).to(torch.uint8), torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, 2, 0, 1, 2])
    kept = first_per_class(images, labels, [0, 1, 2], 2)
    assert [kept[c].flatten().tolist() for c in (0, 1, 2)] == [[0, 2], [1, 3], [6, 7]]
    assert run_cli("run", "--method", "clap4clip", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", tmp_path,
                   "--quiet", "--set", *SMALL, "methods.clap4clip.memory_size=6", "methods.clap4clip.forward_times=3") == 0
    [rec] = records(tmp_path).values()
    assert rec["status"] == "complete" and rec["costs"]["extra_memory_mb"] > 0


# ------------------------------------------------------------------ AttriCLIP


def reference_cosine_loss(q, k):
    """classifier/utils.py `cosine_loss` (q: image features [B, 1, D], k: chosen keys [B, k, D])."""
    q = q.repeat(1, k.shape[1], 1)
    k = k / k.norm(dim=-1, keepdim=True)
    return 1 - ((q * k) / (k.shape[0] * k.shape[1])).sum()


def test_pinned_attriclip():
    """AttriCLIP's key choice and its two extra loss terms (vcop_4.py CLIP.forward, utils.py cosine_loss)."""
    from clipbench.methods.attriclip import key_loss, orthogonality_loss, select_keys

    torch.manual_seed(0)
    f = F.normalize(torch.randn(6, 12), dim=-1)
    keys = torch.randn(10, 12) * 0.5
    chosen = select_keys(f, keys, 3)
    _, indices = (f @ keys.t()).topk(k=min(3, 10), dim=1, largest=True)
    assert torch.equal(chosen, indices)
    cosine_choice = (f @ F.normalize(keys, dim=-1).T).topk(3, dim=1).indices
    assert not torch.equal(chosen, cosine_choice)  # a dot product with raw keys, as the code, not a cosine
    assert torch.allclose(key_loss(f, keys[chosen]), reference_cosine_loss(f.unsqueeze(1), keys[chosen]), atol=1e-6)
    nc = F.normalize(torch.randn(10, 12), dim=-1)
    dis = nc @ nc.permute(1, 0)
    assert torch.allclose(orthogonality_loss(nc), dis[~torch.eye(10, dtype=torch.bool)].abs().mean())


def test_attriclip_prompts_replace_the_placeholders_in_the_text_encoder(streams):
    from clipbench.methods.attriclip import AttriCLIP, encode_with_context

    model = tiny_model(streams)
    method = AttriCLIP()
    method.setup(model, streams)
    clip = model.clip
    assert method.n_ctx * 3 + 2 <= 16 and method.n_ctx >= 1  # cut to the tiny model's 16-token context
    torch.manual_seed(0)
    tokens = method.class_tokens[:4]
    length = method.n_ctx * 3
    ctx = torch.randn(4, length, clip.token_embedding.embedding_dim)
    ours = encode_with_context(clip, tokens, ctx)
    # vcop_4.py: prompts = cat([prefix (start token), ctx, suffix]) -> TextEncoder (positional, transformer,
    # ln_final, the end token's row @ text_projection)
    embedding = clip.token_embedding(tokens)
    x = torch.cat([embedding[:, :1], ctx, embedding[:, 1 + length:]], dim=1)
    x = x + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    theirs = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ clip.text_projection
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, clip.encode_text(tokens), atol=1e-3)  # the placeholders were replaced
    # only_prefix: each prompt alone at positions 1..n_ctx, the other placeholders left as the 'x' token
    bank = model.attriclip
    nc = method.prompt_only_features()
    nc_tokens = method.only_prompt_tokens.repeat(len(bank.prompts), 1)
    emb = clip.token_embedding(nc_tokens)
    x = torch.cat([emb[:, :1], bank.prompts, emb[:, 1 + method.n_ctx:]], dim=1) + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    assert torch.allclose(nc, x[torch.arange(len(x)), nc_tokens.argmax(dim=-1)] @ clip.text_projection, atol=1e-5)


def test_attriclip_images_with_equal_choices_share_their_text(streams):
    from clipbench.methods.attriclip import AttriCLIP

    model = tiny_model(streams)
    method = AttriCLIP()
    method.setup(model, streams)
    choices = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3]])
    classes = torch.tensor([0, 1])
    text, inverse = method.class_text(choices, classes)
    assert text.shape[:2] == (2, 2) and inverse[0] == inverse[2] != inverse[1]
    alone, _ = method.class_text(choices[1:2], classes)
    assert torch.allclose(text[inverse[1]], alone[0], atol=1e-6)
    method.trained = 1
    f = F.normalize(torch.randn(5, 64), dim=-1)
    scores = method.scores(f, torch.zeros(6, 64))
    assert scores.shape == (5, 6) and torch.isfinite(scores).all()
