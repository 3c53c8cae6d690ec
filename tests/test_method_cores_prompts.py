"""Cores of the prompt methods (C3Box's L2P, DualPrompt, CODA-Prompt), CLG-CBM, AREA and GIFT against independent
re-statements of the authors' functions, on identical inputs; and their n/a without their artifact files.

Each `ref_*` is written from reading the authors' code, not clipbench's:
C3Box: LAMDA-CL/C3Box at 1378ab2 (`backbone/prompt.py` `Prompt.forward`, `EPrompt.forward`, `CodaPrompt.gram_schmidt`,
`CodaPrompt.forward`; `backbone/dualprompt_model.py` `Attention.forward`; `backbone/l2p_model.py` `forward_features`);
CLG-CBM: FisherCats/CLG-CBM at cdd26ce (`models/clgcbm.py`); AREA: LAMDA-CL/ICML2026-AREA at 1490acc
(`models/area.py`, `utils/inc_net.py::Area.forward`); GIFT: Luo-Jiaming/GIFT_CL at 7511963
(`src/models/finetune_gift.py`, `src/models/helpers.py`).
"""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError
from clipbench.methods import area, clg_cbm, coda_prompt, dualprompt, gift, prompting
from clipbench.methods.base import METHODS
from helpers import SMALL, records, run_cli


# ---- C3Box prompt selection (L2P / DualPrompt) --------------------------------------------------------------

def ref_l2_normalize(x, dim=None, epsilon=1e-12):
    square_sum = torch.sum(x ** 2, dim=dim, keepdim=True)
    x_inv_norm = torch.rsqrt(torch.maximum(square_sum, torch.tensor(epsilon)))
    return x * x_inv_norm


def ref_prompt_forward(prompt, prompt_key, cls_features, top_k, pool_size, batchwise, prompt_mask=None):
    prompt_norm = ref_l2_normalize(prompt_key, dim=1)
    x_embed_norm = ref_l2_normalize(cls_features, dim=1)
    similarity = torch.matmul(x_embed_norm, prompt_norm.t())
    if prompt_mask is None:
        _, idx = torch.topk(similarity, k=top_k, dim=1)
        if batchwise:
            prompt_id, id_counts = torch.unique(idx, return_counts=True, sorted=True)
            if prompt_id.shape[0] < pool_size:
                prompt_id = torch.cat([prompt_id, torch.full((pool_size - prompt_id.shape[0],), torch.min(idx.flatten()))])
                id_counts = torch.cat([id_counts, torch.full((pool_size - id_counts.shape[0],), 0)])
            _, major_idx = torch.topk(id_counts, k=top_k)
            major_prompt_id = prompt_id[major_idx]
            idx = major_prompt_id.expand(cls_features.shape[0], -1)
    else:
        idx = prompt_mask
    batched_prompt_raw = prompt[idx]
    b, k, length, c = batched_prompt_raw.shape
    batched_key_norm = prompt_norm[idx]
    sim = batched_key_norm * x_embed_norm.unsqueeze(1)
    reduce_sim = torch.sum(sim) / cls_features.shape[0]
    return idx, batched_prompt_raw.reshape(b, k * length, c), reduce_sim


@pytest.mark.parametrize("batchwise", [True, False])
def test_l2p_selection_and_pull_match_c3box(batchwise):
    torch.manual_seed(0)
    prompt = torch.empty(10, 5, 16).uniform_(-1, 1)
    keys = torch.empty(10, 12).uniform_(-1, 1)
    query = torch.randn(7, 12)
    idx, reduce_sim = prompting.select_prompts(query, keys, 5, batchwise)
    ref_idx, ref_prompts, ref_sim = ref_prompt_forward(prompt, keys, query, 5, 10, batchwise)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(prompt[idx].reshape(7, 25, 16), ref_prompts)
    assert torch.allclose(reduce_sim, ref_sim, atol=1e-6)
    if batchwise:
        assert (idx == idx[0]).all()  # one choice for the batch


def test_l2p_task_mask_forced_in_training_then_query():
    assert prompting.task_mask(0, 5, 10, 3, "cpu").tolist() == [[0, 1, 2, 3, 4]] * 3
    assert prompting.task_mask(1, 5, 10, 2, "cpu").tolist() == [[5, 6, 7, 8, 9]] * 2
    assert prompting.task_mask(2, 5, 10, 2, "cpu") is None  # past the pool: the query chooses
    query, keys = torch.randn(3, 4), torch.randn(10, 4)
    mask = prompting.task_mask(1, 5, 10, 3, "cpu")
    idx, sim = prompting.select_prompts(query, keys, 5, True, mask)
    _, _, ref_sim = ref_prompt_forward(torch.zeros(10, 1, 1), keys, query, 5, 10, True, mask)
    assert torch.equal(idx, mask) and torch.allclose(sim, ref_sim)


# ---- prefix attention (DualPrompt / CODA) and the prompted ViT ----------------------------------------------

def ref_attention_with_prefix(x, in_proj_w, in_proj_b, out_w, out_b, num_heads, prompt):
    """dualprompt_model.py Attention.forward; prompt [B, 2, Lp, H, d]."""
    B, N, C = x.shape
    qkv = (x @ in_proj_w.T + in_proj_b).reshape(B, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if prompt is not None:
        prompt = prompt.permute(1, 0, 3, 2, 4).contiguous()
        k = torch.cat([prompt[0], k], dim=2)
        v = torch.cat([prompt[1], v], dim=2)
    attn = (q @ k.transpose(-2, -1)) * (C // num_heads) ** -0.5
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return x @ out_w.T + out_b


def test_prefix_attention_matches_c3box_attention():
    torch.manual_seed(1)
    attn = nn.MultiheadAttention(16, 4, batch_first=True)
    nn.init.normal_(attn.in_proj_bias)
    y = torch.randn(3, 6, 16)
    prompt = torch.randn(3, 2, 5, 4, 4)  # [B, key/value, Lp, H, d]
    ours = prompting.prefix_attention(y, attn, (prompt[:, 0].flatten(-2), prompt[:, 1].flatten(-2)))
    ref = ref_attention_with_prefix(y, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
                                    attn.out_proj.bias, 4, prompt)
    assert torch.allclose(ours, ref, atol=1e-5)
    plain = attn(y, y, y, need_weights=False)[0]
    assert torch.allclose(prompting.prefix_attention(y, attn, None), plain, atol=1e-5)


def small_vit():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(2)
    v = VisionTransformer(image_size=16, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=2.0, output_dim=8)
    return v.eval()


def test_tower_encode_without_prompts_is_the_tower():
    v = small_vit()
    x = torch.randn(2, 3, 16, 16)
    tower = prompting.Tower(v, "test")
    with torch.no_grad():
        assert torch.allclose(tower.encode(x), v(x), atol=1e-5)


def test_l2p_inserts_prompts_after_the_class_token_after_the_positional_embedding():
    v = small_vit()
    x = torch.randn(2, 3, 16, 16)
    insert = torch.randn(2, 4, 32)
    with torch.no_grad():
        t = v.conv1(x).reshape(2, 32, -1).permute(0, 2, 1)
        t = torch.cat([v.class_embedding + torch.zeros(2, 1, 32), t], dim=1) + v.positional_embedding
        t = torch.cat([t[:, 0:1], insert, t[:, 1:]], dim=1)  # l2p_model.py forward_features
        t = v.transformer(v.ln_pre(t))
        ref = v.ln_post(t)[:, 0] @ v.proj
        assert torch.allclose(prompting.Tower(v, "test").encode(x, insert=insert), ref, atol=1e-5)


def ref_e_prompt_batched(prompt, idx):
    """EPrompt.forward (prefix branch): prompt[:, :, idx] reshaped without permute."""
    batched_prompt_raw = prompt[:, :, idx]
    num_layers, dual, batch_size, top_k, length, num_heads, heads_embed_dim = batched_prompt_raw.shape
    return batched_prompt_raw.reshape(num_layers, batch_size, dual, top_k * length, num_heads, heads_embed_dim)


def test_dualprompt_e_prefix_layout_quirk_kept_and_fixable():
    torch.manual_seed(3)
    prompt = torch.randn(3, 2, 10, 5, 2, 4)
    idx = torch.tensor([[4]] * 4)
    ours = dualprompt.e_prefixes(prompt, idx, fix_layout=False)
    assert torch.equal(ours, ref_e_prompt_batched(prompt, idx))
    # the quirk: with a batch of 4 equal ids, images 0-1 get the key prompt as keys and values
    assert torch.equal(ours[:, 0, 1], prompt[:, 0, 4]) and torch.equal(ours[:, 3, 0], prompt[:, 1, 4])
    fixed = dualprompt.e_prefixes(prompt, idx, fix_layout=True)
    assert torch.equal(fixed[:, 3, 0], prompt[:, 0, 4]) and torch.equal(fixed[:, 3, 1], prompt[:, 1, 4])


# ---- CODA-Prompt --------------------------------------------------------------------------------------------

def ref_gram_schmidt(vv, task_count, e_pool_size, n_tasks):
    def projection(u, v):
        denominator = (u * u).sum()
        if denominator < 1e-8:
            return None
        return (v * u).sum() / denominator * u

    is_3d = len(vv.shape) == 3
    if is_3d:
        shape_2d = copy.deepcopy(vv.shape)
        vv = vv.view(vv.shape[0], -1)
    vv = vv.T
    uu = torch.zeros_like(vv)
    pt = int(e_pool_size / n_tasks)
    s = int(task_count * pt)
    f = int((task_count + 1) * pt)
    if s > 0:
        uu[:, 0:s] = vv[:, 0:s].clone()
    for k in range(s, f):
        redo = True
        while redo:
            redo = False
            vk = torch.randn_like(vv[:, k])
            uk = 0
            for j in range(0, k):
                if not redo:
                    uj = uu[:, j].clone()
                    proj = projection(uj, vk)
                    if proj is None:
                        redo = True
                    else:
                        uk = uk + proj
            if not redo:
                uu[:, k] = vk - uk
    for k in range(s, f):
        uk = uu[:, k].clone()
        uu[:, k] = uk / (uk.norm())
    uu = uu.T
    if is_3d:
        uu = uu.view(shape_2d)
    return uu


@pytest.mark.parametrize("task", [0, 2])
def test_coda_gram_schmidt_matches_c3box(task):
    start = torch.rand(20, 3, 6)
    for earlier in range(task):  # the earlier tasks' components, as process_task_count leaves them
        start = coda_prompt.gram_schmidt(start, earlier * 4, (earlier + 1) * 4)
    torch.manual_seed(4)
    ours = coda_prompt.gram_schmidt(start.clone(), task * 4, (task + 1) * 4)
    torch.manual_seed(4)
    ref = ref_gram_schmidt(start.clone(), task, 20, 5)
    assert torch.allclose(ours, ref, atol=1e-6)
    flat = ours.reshape(20, -1)
    upto = flat[:(task + 1) * 4]
    assert torch.allclose(upto @ upto.T, torch.eye(len(upto)), atol=1e-5)
    assert (flat[(task + 1) * 4:] == 0).all()  # later components: zero, as the code leaves them


def ref_coda_forward(x_querry, K, A, p, e_p_length):
    a_querry = torch.einsum('bd,kd->bkd', x_querry, A)
    n_K = nn.functional.normalize(K, dim=1)
    q = nn.functional.normalize(a_querry, dim=2)
    aq_k = torch.einsum('bkd,kd->bk', q, n_K)
    P_ = torch.einsum('bk,kld->bld', aq_k, p)
    i = int(e_p_length / 2)
    return P_[:, :i, :], P_[:, i:, :]


def test_coda_prefix_matches_c3box():
    torch.manual_seed(5)
    q, K, A, p = torch.randn(3, 12), torch.randn(20, 12), torch.randn(20, 12), torch.randn(20, 8, 16)
    ek, ev = coda_prompt.coda_prefix(q, K, A, p)
    rk, rv = ref_coda_forward(q, K, A, p, 8)
    assert torch.allclose(ek, rk, atol=1e-5) and torch.allclose(ev, rv, atol=1e-5)


# ---- the prompt methods run on the tiny suite -----------------------------------------------------------------

@pytest.mark.parametrize("name,extra", [("l2p", []), ("dualprompt", ["methods.dualprompt.fix_prefix_layout=true",
                                                                     "methods.dualprompt.train_g_prompt=true"]),
                                        ("coda_prompt", ["methods.coda_prompt.replay=false"])])
def test_prompt_methods_complete_and_keep_exemplars(name, extra, results):
    assert run_cli("run", "--method", name, "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", *SMALL, *extra) == 0
    [rec] = records(results).values()
    assert rec["status"] == "complete", rec.get("error")
    kept = rec["costs"]["exemplars"]
    # tiny_shapes: 6 classes, 8 images each; C3Box keeps 20 per class (all 8 here), CODA without replay none
    assert kept == (0 if name == "coda_prompt" else 48)


# ---- CLG-CBM ----------------------------------------------------------------------------------------------------

def ref_similiarity_loss(inputs, bottleneck, csv):
    img_feats = inputs.float()
    target_feats = img_feats @ bottleneck.T
    target_feats, csv = target_feats ** 3, csv ** 3
    target_feats = target_feats / torch.norm(target_feats, p=2, dim=0, keepdim=True)
    csv = csv / torch.norm(csv, p=2, dim=0, keepdim=True)
    similarities = torch.sum(csv * target_feats, dim=0)
    return -similarities.mean()


def ref_sparse_linear_loss(unity, total_classes):
    weight_mat = torch.cat([unity[i].weight for i in range(len(unity))]).view(total_classes, -1)
    lam, alpha = 0.001, 0.99
    return lam * alpha * weight_mat.norm(p=1) + 0.5 * lam * (1 - alpha) * (weight_mat ** 2).sum()


def ref_mahalanobis_stage0(x, mu, sigma_inv):
    x = x - mu.unsqueeze(0)
    return torch.diag(x @ sigma_inv @ x.T).mean()


def ref_select(centers, attribute_embeddings, num_attributes):
    selected_idxes = []
    for center in centers:
        center = center / torch.tensor(center).norm().numpy()
        distances = np.sum((attribute_embeddings.numpy() - center.reshape(1, -1)) ** 2, axis=1)
        sorted_idxes = np.argsort(distances)
        for elem in sorted_idxes:
            if elem not in selected_idxes:
                selected_idxes.append(elem)
                break
    return [int(i) for i in selected_idxes[:num_attributes]]


def test_clg_cbm_losses_and_selection_match_the_code():
    torch.manual_seed(6)
    x, bottleneck, csv = torch.randn(9, 16), F.normalize(torch.randn(7, 16), dim=-1), torch.randn(9, 7)
    assert torch.allclose(clg_cbm.similarity_loss(x, bottleneck, csv), ref_similiarity_loss(x, bottleneck, csv), atol=1e-6)
    unity = [nn.Linear(7, 2, bias=False), nn.Linear(7, 3, bias=False)]
    assert torch.allclose(clg_cbm.sparse_linear_loss([u.weight for u in unity]), ref_sparse_linear_loss(unity, 5))
    emb = F.normalize(torch.randn(30, 16), dim=-1)
    mu, sigma_inv = emb.mean(0), torch.linalg.pinv(torch.cov(emb.T))
    w = torch.randn(30, 16)
    assert torch.allclose(clg_cbm.mahalanobis_mean(w, mu, sigma_inv), ref_mahalanobis_stage0(w, mu, sigma_inv), rtol=1e-5)
    mean_distance = float(torch.stack([ref_mahalanobis_stage0(e[None], mu, sigma_inv) for e in emb]).mean())
    ref_reg = torch.abs((ref_mahalanobis_stage0(w / w.norm(dim=-1, keepdim=True), mu, sigma_inv) - mean_distance)
                        / mean_distance ** 5)
    assert torch.allclose(clg_cbm.search_regulariser(w, mu, sigma_inv, mean_distance, 5), ref_reg, rtol=1e-5)
    assert clg_cbm.select_concepts(w, emb, 10) == ref_select(w.numpy(), emb, 10)


def test_clg_cbm_explainer_expansion_keeps_old_weights():
    torch.manual_seed(7)
    old = nn.Linear(16, 4, bias=False)
    new = clg_cbm.expand_linear(old, 16, 9, rows=True)
    assert torch.equal(new.weight[:4], old.weight) and new.weight.shape == (9, 16)
    head = nn.Linear(4, 3, bias=False)
    wide = clg_cbm.expand_linear(head, 9, 3, rows=False)
    assert torch.equal(wide.weight[:, :4], head.weight) and wide.weight.shape == (3, 9)


# ---- AREA -------------------------------------------------------------------------------------------------------

def ref_log_map(x, mu):
    cos_theta = torch.matmul(x, mu.reshape(-1))
    cos_theta = torch.clamp(cos_theta, -1.0 + 1e-6, 1.0 - 1e-6)
    theta = torch.acos(cos_theta)
    sin_theta = torch.sqrt(1 - cos_theta ** 2)
    coeff = theta / (sin_theta + 1e-6)
    mask_stable = theta > 1e-4
    scaling = torch.ones_like(coeff)
    scaling[mask_stable] = coeff[mask_stable]
    vec_diff = x - cos_theta.unsqueeze(1) * mu.unsqueeze(0)
    return scaling.unsqueeze(1) * vec_diff


def ref_sinkhorn(cost_matrix):
    B, N_b = cost_matrix.shape
    mu = torch.ones(B, 1)
    nu = torch.ones(B, N_b) / N_b
    f = torch.zeros(B, 1)
    g = torch.zeros(B, N_b)
    log_K = -cost_matrix / 0.1
    for _ in range(50):
        term1 = g + log_K
        f = torch.log(mu) - torch.logsumexp(term1, dim=1, keepdim=True)
        g = torch.log(nu) - (f + log_K)
    return (f * mu).sum(dim=1) + (g * nu).sum(dim=1)


def test_area_log_map_basis_and_sinkhorn_match_the_code():
    torch.manual_seed(8)
    x = torch.randn(20, 12) * 2
    mu = F.normalize(x.mean(0, keepdim=True), dim=-1)
    assert torch.allclose(area.log_map(x, mu), ref_log_map(x, mu).squeeze(0), atol=1e-6)  # the code squeezes
    _, _, vh = torch.linalg.svd(ref_log_map(x, mu).squeeze(0), full_matrices=False)
    assert torch.allclose(area.geodesic_basis(x, 5), vh[:5].T, atol=1e-6)
    assert (area.geodesic_basis(x[:3], 5)[:, 3:] == 0).all()  # fewer samples than K: zero columns
    cost = 1 - F.normalize(torch.randn(1, 12), dim=1) @ F.normalize(torch.randn(15, 12), dim=1).T
    ours = area.sinkhorn_distance(cost)
    assert torch.allclose(ours, ref_sinkhorn(cost), atol=1e-5)
    # what the code's updates reduce to: mean(cost) / 0.1 - log N (the routing quirk the docstring names)
    assert torch.allclose(ours, cost.mean(dim=1) / 0.1 - math.log(15), atol=1e-4)


def ref_area_forward(image_features, text_embeddings, visual_basis, textual_basis, va, ta, vs, ts, scale):
    image_features_residual = va(image_features)
    image_features_evidence = torch.einsum("cdk,bk->bcd", visual_basis, vs(image_features))
    image_features_residual = image_features_residual.unsqueeze(1).expand(-1, textual_basis.shape[0], -1)
    image_features = image_features_residual + image_features_evidence
    textual_features = ta(text_embeddings) + torch.einsum("cdk,ck->cd", textual_basis, ts(text_embeddings))
    image_features = image_features / (image_features.norm(dim=-1, keepdim=True) + 1e-6)
    textual_features = textual_features / (textual_features.norm(dim=-1, keepdim=True) + 1e-6)
    return torch.einsum("bcd,cd->bc", image_features, textual_features) * scale


def test_area_logits_match_the_code():
    torch.manual_seed(9)
    head = area.AreaHead(12, 4, 2)
    img, txt = torch.randn(5, 12), torch.randn(3, 12)
    vb, tb = torch.randn(3, 12, 4), torch.randn(3, 12, 4)
    args = (head.visual_adapter, head.textual_adapter, head.visual_S[1], head.textual_S[1], torch.tensor(100.0))
    assert torch.allclose(area.area_logits(img, txt, vb, tb, *args), ref_area_forward(img, txt, vb, tb, *args), atol=1e-4)


# ---- GIFT -------------------------------------------------------------------------------------------------------

def ref_distillation(t, s, T=2):
    p = F.softmax(t / T, dim=1)
    return F.cross_entropy(s / T, p, reduction="mean") * (T ** 2)


def test_gift_distillation_ita_and_awc_match_the_code():
    torch.manual_seed(10)
    ref_out, ref_emb = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    out, emb = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    labels = torch.tensor([0, 1, 0, 2, 3, 1])
    s = torch.tensor(100.0)
    logits_ref, logits_current = s * ref_out @ ref_emb.t(), s * out @ emb.t()
    eq = (labels.view(1, -1).repeat(6, 1) == labels.view(-1, 1)).float()
    y = eq / eq.sum(dim=1).view(-1, 1)
    ref = (ref_distillation(logits_ref, logits_current) + ref_distillation(logits_ref.t(), logits_current.t())
           + 0.25 * F.cross_entropy(logits_current, y, label_smoothing=0.2)
           + 0.25 * F.cross_entropy(logits_current.t(), y, label_smoothing=0.2))
    ours = gift.gift_terms(ref_out, ref_emb, out, emb, labels, s, 1.0, 0.25, 2.0, 0.2)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert gift.caption_labels(["a", "b", "a", "c"]).tolist() == [0, 1, 0, 2]
    # AWC: g^2 / mean(g^2) per tensor, 1e-6 without a gradient or for the logit scale; then sum F (p - p0)^2
    g = {"w": torch.randn(3, 4), "b": None, "logit_scale": torch.randn(())}
    shapes = {"w": torch.zeros(3, 4), "b": torch.zeros(4), "logit_scale": torch.zeros(())}
    prec = gift.awc_precision(g, shapes)
    assert torch.allclose(prec["w"], g["w"] ** 2 / (g["w"] ** 2).mean())
    assert torch.allclose(prec["b"], torch.full((4,), 1e-6)) and torch.allclose(prec["logit_scale"], torch.tensor(1e-6))
    params = {k: torch.randn_like(v) for k, v in shapes.items()}
    ref_ewc = sum((prec[n] * (params[n] - shapes[n]) ** 2).sum() for n in shapes)
    assert torch.allclose(gift.weighted_l2(params, shapes, prec), ref_ewc)


# ---- n/a without the artifact files -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,key", [("clg_cbm", "concepts"), ("area", "descriptions"), ("gift", "synthetic")])
def test_artifact_methods_are_not_applicable_without_their_files(name, key, tmp_path):
    cls = METHODS.get(name)
    reason = cls.not_applicable(SimpleNamespace(method_config={}))
    assert reason and f"methods.{name}.{key}" in reason and "\n" not in reason
    assert cls.not_applicable(SimpleNamespace(method_config={key: str(tmp_path)})) is None
    with pytest.raises(ClipbenchError, match=f"methods.{name}.{key}"):
        cls().setup(SimpleNamespace(), SimpleNamespace())


def test_artifact_method_run_without_file_says_why(results, capsys):
    """Without the folder the run never completes and says why (n/a where the plan honours `not_applicable`)."""
    run_cli("run", "--method", "gift", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
            "--set", *SMALL)
    said = capsys.readouterr()
    assert "methods.gift.synthetic" in said.out + said.err
    assert not any(r.get("status") == "complete" for r in records(results).values())


# ---- pinned steps: the engine's cross-entropy on the method's forward plus its loss term --------------------------

from clipbench.engine import set_trainable  # noqa: E402
from test_method_cores import streams, tiny_model  # noqa: E402,F401  (fixture and helper)
from test_method_fidelity import strategy_on  # noqa: E402


def _prepared(name, streams, task, **config):
    torch.manual_seed(0)
    model = tiny_model(streams)
    method = METHODS.get(name)(METHODS.get(name).Config(**config))
    method.setup(model, streams)
    method.learned = task
    set_trainable(model, method)
    strategy = strategy_on(model, streams, task)
    method.before_training_exp(strategy)
    return model, method, strategy


def _tokens(v, x):
    t = v.conv1(x)
    t = t.reshape(t.shape[0], t.shape[1], -1).permute(0, 2, 1)
    t = torch.cat([v.class_embedding + torch.zeros(t.shape[0], 1, t.shape[-1]), t], dim=1)
    return t + v.positional_embedding


def _block(block, x, prompt=None):
    a = block.attn
    x = x + ref_attention_with_prefix(block.ln_1(x), a.in_proj_weight, a.in_proj_bias, a.out_proj.weight,
                                      a.out_proj.bias, a.num_heads, prompt)
    return x + block.mlp(block.ln_2(x))


def _grads_match(model, mine, ref):
    mine.backward(retain_graph=True)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref.backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got and set(got) == set(want)
    for n in got:
        assert torch.allclose(got[n], want[n], atol=1e-5, rtol=1e-4), n


def test_pinned_l2p(streams):
    model, method, strategy = _prepared("l2p", streams, 1)
    x, y = strategy.mb_x, strategy.mb_y
    mine = F.cross_entropy(model(x), y) + method.loss(strategy)
    v, pool = model.clip.visual, method.prompts
    xin = model.preprocess(x)
    with torch.no_grad():
        query = type(v).forward(v, xin)  # original_backbone(x)
    mask = torch.arange(5, 10)[None].expand(len(x), -1)  # task 1 under the forced prompt mask
    _, prompts, reduce_sim = ref_prompt_forward(pool.prompt, pool.prompt_key, query, 5, 10, True, mask)
    t = _tokens(v, xin)
    t = torch.cat([t[:, 0:1], prompts, t[:, 1:]], dim=1)
    out = v.ln_post(v.transformer(v.ln_pre(t)))[:, 0] @ v.proj
    logits = method.head(out)[:, :model.num_active]
    ref = F.cross_entropy(logits, y) - 0.1 * reduce_sim
    assert torch.allclose(mine, ref, atol=1e-5)
    _grads_match(model, mine, ref)


def test_pinned_dualprompt(streams):
    model, method, strategy = _prepared("dualprompt", streams, 0)
    x, y = strategy.mb_x, strategy.mb_y
    mine = F.cross_entropy(model(x), y) + method.loss(strategy)
    v, p = model.clip.visual, method.prompts
    xin = model.preprocess(x)
    with torch.no_grad():
        query = type(v).forward(v, xin)
    mask = torch.zeros(len(x), 1, dtype=torch.long)  # task 0 uses E-prompt 0
    _, _, reduce_sim = ref_prompt_forward(torch.zeros(10, 1, 1), p.prompt_key, query, 1, 10, True, mask)
    e = ref_e_prompt_batched(p.prompt, mask)  # [layers, B, 2, Lp, H, d], the code's reshape
    g = p.g_prompt[torch.tensor([0] * len(x))]  # [B, 2, Lg, H, d]
    t = v.ln_pre(_tokens(v, xin))
    blocks = v.transformer.resblocks  # the tiny tower has 2 blocks: G in block 0, E in block 1
    t = _block(blocks[1], _block(blocks[0], t, g), e[0])
    logits = method.head(v.ln_post(t)[:, 0] @ v.proj)[:, :model.num_active]
    ref = F.cross_entropy(logits, y) - 0.1 * reduce_sim
    assert torch.allclose(mine, ref, atol=1e-5)
    _grads_match(model, mine, ref)
    assert p.g_prompt.grad is None  # C3Box: the G-prompts do not train


def test_pinned_coda_prompt(streams):
    model, method, strategy = _prepared("coda_prompt", streams, 0)
    x, y = strategy.mb_x, strategy.mb_y
    mine = F.cross_entropy(model(x), y) + (method.loss(strategy) or 0)
    v, comps = model.clip.visual, method.prompts
    xin = model.preprocess(x)
    with torch.no_grad():
        query = type(v).forward(v, xin)  # the code's first pass without prompts, CLS after ln_post @ proj
    t = v.ln_pre(_tokens(v, xin))
    pt = method.per_task  # 100 // 10
    h, width = v.transformer.resblocks[0].attn.num_heads, t.shape[-1]
    for layer, block in enumerate(v.transformer.resblocks):
        K, A, P = (comps.get(n, layer)[:pt] for n in ("k", "a", "p"))  # task 0 in training: K[s:f]
        ek, ev = ref_coda_forward(query, K, A, P, 8)
        prompt = torch.stack([ek.reshape(len(x), -1, h, width // h), ev.reshape(len(x), -1, h, width // h)], dim=1)
        t = _block(block, t, prompt)
    logits = method.head(v.ln_post(t)[:, 0] @ v.proj)[:, :model.num_active]
    ref = F.cross_entropy(logits, y)  # ortho_mu 0
    assert torch.allclose(mine, ref, atol=1e-5)
    _grads_match(model, mine, ref)


def test_pinned_clg_cbm():
    """One bottleneck step: CE(heads(explainer(x / ||x||))) + sim * alignment + elastic net, as `_train_function`."""
    torch.manual_seed(11)
    explainer = nn.Linear(16, 9, bias=False)
    unity = nn.ModuleList([nn.Linear(9, 2, bias=False), nn.Linear(9, 3, bias=False)])
    x, y, bottleneck = torch.randn(8, 16), torch.tensor([0, 1, 2, 3, 4, 0, 2, 4]), F.normalize(torch.randn(9, 16), dim=-1)
    logits, csv = clg_cbm.explain(x, explainer, unity)
    mine = F.cross_entropy(logits, y) + clg_cbm.similarity_loss(x, bottleneck, csv) + clg_cbm.sparse_linear_loss(
        [fc.weight for fc in unity])
    xn = x / x.norm(dim=1, keepdim=True)  # forward_explainer
    ref_csv = explainer(xn)
    ref_logits = torch.cat([fc(ref_csv) for fc in unity], dim=1)
    ref = F.cross_entropy(ref_logits, y) + ref_similiarity_loss(x, bottleneck, ref_csv) + ref_sparse_linear_loss(unity, 5)
    assert torch.allclose(mine, ref, atol=1e-6)


def test_clg_cbm_keeps_pool_concepts_per_class(streams, tmp_path):
    from helpers import write_concepts

    path = write_concepts(tmp_path / "c.json")
    model = tiny_model(streams)
    method = METHODS.get("clg_cbm")(METHODS.get("clg_cbm").Config(
        concepts=str(path), class_names_file=str(path.with_suffix(".names.json")), pool=2, epochs=2, fb_epochs=2,
        fb_epochs_inc=2))
    method.setup(model, streams)
    encode = lambda imgs: F.normalize(model.clip.encode_image(model.preprocess(imgs)), dim=-1)  # noqa: E731
    for exp in range(2):
        method.fit_experience(streams.train[exp], exp, encode)
    assert method.bottleneck.shape[0] == 2 * 2 * 2 and len(method.raw_concepts) == 8
    assert all(c.startswith("concept ") for c in method.raw_concepts)
    scores = method.scores(torch.randn(3, method.bottleneck.shape[1]), torch.zeros(6, 1))
    assert scores.shape == (3, 6) and (scores[:, 4:] < scores[:, :4].min(dim=1, keepdim=True).values).all()


def test_pinned_area(streams, tmp_path):
    from helpers import write_area_descriptions

    model, method, strategy = _prepared("area", streams, 0, descriptions=str(write_area_descriptions(tmp_path / "d")),
                                        vib_lambda=0.0)
    x, y = strategy.mb_x, strategy.mb_y
    logits = model(x)
    mine = method.loss(strategy)  # the CE over real (and pseudo) rows lives in `loss`
    h, c = method.head, model.num_active
    with torch.no_grad():
        feats = model.clip.encode_image(model.preprocess(x))
    ref_logits = ref_area_forward(feats, method.text[:c], method.v_basis[:c], method.t_basis[:c], h.visual_adapter,
                                  h.textual_adapter, h.visual_S[0], h.textual_S[0], model.clip.logit_scale.exp())
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    assert torch.allclose(mine, F.cross_entropy(ref_logits, y), atol=1e-5)


def test_pinned_gift(streams, tmp_path):
    from helpers import write_synthetic_pairs

    model, method, strategy = _prepared("gift", streams, 0, synthetic=str(write_synthetic_pairs(tmp_path / "s")))
    model.last_image_features = None
    teacher = copy.deepcopy(model)  # the model before the task: the teacher and the AWC anchor
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in method.trainable_parameters(model):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    torch.manual_seed(5)
    mine = method.loss(strategy)
    torch.manual_seed(5)
    images, tokens, labels = method.pools[0]
    pick = torch.randperm(len(images))[:strategy.train_mb_size]
    x, t, lab = images[pick], tokens[pick], labels[pick]
    s = model.clip.logit_scale.exp()
    with torch.no_grad():
        ref_out, ref_emb = teacher.encode_images(x), teacher.encode_tokens(t)
    cur_out, cur_emb = model.encode_images(x), model.encode_tokens(t)
    logits_ref, logits_current = s * ref_out @ ref_emb.t(), s * cur_out @ cur_emb.t()
    eq = (lab.view(1, -1).repeat(len(lab), 1) == lab.view(-1, 1)).float()
    yy = eq / eq.sum(dim=1).view(-1, 1)
    distill = ref_distillation(logits_ref, logits_current) + ref_distillation(logits_ref.t(), logits_current.t())
    ita = 0.25 * (F.cross_entropy(logits_current, yy, label_smoothing=0.2)
                  + F.cross_entropy(logits_current.t(), yy, label_smoothing=0.2))
    params = dict(model.named_parameters())
    anchor = dict(teacher.named_parameters())
    names = [n for n in method.teacher]
    grads = torch.autograd.grad(distill + ita, [params[n] for n in names], retain_graph=True, allow_unused=True)
    ewc = 0.0
    for n, gr in zip(names, grads):
        if gr is not None and "logit_scale" not in n:
            prec = gr ** 2 / (gr ** 2).mean()
        else:
            prec = torch.zeros_like(params[n]) + 1e-6
        ewc = ewc + (prec * (params[n] - anchor[n].detach()) ** 2).sum()
    ref = distill + ita + 1.0 * ewc
    assert torch.allclose(mine, ref, rtol=1e-5, atol=1e-6)
