"""Recipes (`clipbench.recipes`): every method x real suite trains with the recipe its authors' scripts give it,
written out below from those scripts (each entry citing its file), so a suite change that leaks one recipe into
another method fails here; `recipe=shared` gives every method one recipe; per-experience settings; the
dry-run JSON plan; ZSCL's split."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
import torch

from clipbench.errors import ClipbenchError
from clipbench.plan import method_registry, plan
from clipbench.recipes import check_per_experience, experience_train
from clipbench.spec import TRAIN_RULES
from helpers import run_cli

CLIP_2_16 = 2.0 ** -16
ZSCL_MTIL_LRS = {"Aircraft": {"lr": 5e-5}, "MNIST": {"lr": 5e-5}}

# The suites' own recipes, from their references' scripts (Thunderbeee/ZSCL at b96e714; yxding95/CL-CLIP at 877a69f;
# JiazuoYu/MoE-Adapters4CL at 4572d97 for the few-shot length).
ZSCL_MTIL = dict(  # mtil/scripts/ZSCL.sh, finetune.sh, lwf.sh...: lr=(5e-5 1e-5 ...), --ls 0.2, --iterations 1000;
    optimizer="adamw", lr=1e-5, weight_decay=0.0, batch_size=64, iterations=1000,  # mtil/src/args.py defaults
    schedule="cosine", warmup_steps=100, label_smoothing=0.2, grad_clip=0.0, augment="zscl", ce_classes="current",
    per_experience=ZSCL_MTIL_LRS, eval_batch=256)
MOE_FEWSHOT_LENGTH = dict(ZSCL_MTIL, iterations=500)  # train_few_shot_router11_experts22_1000iters.sh: --iterations 500
ZSCL_CIL = dict(  # cil/configs/class/{cifar100,tinyimagenet_100}-*.yaml; cil/continual_clip/models.py: EPOCH = 1
    optimizer="adamw", lr=7.1e-6, weight_decay=0.0, batch_size=64, epochs=1, iterations=0, schedule="cosine",
    warmup_steps=30, label_smoothing=0.2, grad_clip=0.0, augment="zscl", ce_classes="current", per_experience=None,
    eval_batch=256)
CLCLIP = dict(  # main.py (--epochs 15 --batch 100 --lr 1e-6), methods/ft.py (Adam, clip_grad_norm_ 1.0 on scaled grads)
    optimizer="adam", lr=1e-6, weight_decay=0.0, batch_size=100, epochs=15, iterations=0, warmup_steps=0,
    label_smoothing=0.0, grad_clip=CLIP_2_16, augment="clclip", ce_classes="current", per_experience=None,
    eval_batch=256)

SUITE_RECIPES = {"mtil": ZSCL_MTIL, "mtil_cil": ZSCL_MTIL, "xtail": ZSCL_MTIL, "mtil_fewshot": MOE_FEWSHOT_LENGTH,
                 "cil_cifar100": ZSCL_CIL, "cil_tinyimagenet": ZSCL_CIL, "paper": CLCLIP}

MAGMAX = dict(  # danielm1405/magmax@4f49f18 src/args.py (--wd 0.1 --ls 0 --warmup_length 500), finetune_splitted.py
    optimizer="adamw", lr=1e-5, weight_decay=0.1, batch_size=128, epochs=10, iterations=0,  # (lr, batch in __main__;
    schedule="cosine", warmup_steps=500, label_smoothing=0.0, grad_clip=1.0,  # clip_grad_norm_ 1.0), scripts/CIL/all.sh
    augment="zscl", ce_classes="current", per_experience=None, eval_batch=256)  # open_clip train_preprocess: RRC 0.9-1
MOE_CIL = dict(  # MoE-Adapters4CL cil/configs/class/cifar100_{10-10,5-5}-MoE-Adapters.yaml: lr 1e-3, ls 0.0, batch 128
    optimizer="adamw", lr=1e-3, weight_decay=0.0, batch_size=128, epochs=1, iterations=0, schedule="cosine",
    warmup_steps=30, label_smoothing=0.0, grad_clip=0.0, augment="zscl", ce_classes="current", per_experience=None,
    eval_batch=256)

# (suite, method) -> (recipe source, what it trains with, per protocol over it), each from the file named
REFERENCE: Dict[tuple, tuple] = {
    # Thunderbeee/ZSCL@b96e714 mtil/scripts/{finetune,lwf,lwf_vr,WiSE_finetune,wc,ZSCL}.sh: the suite's recipe
    **{("mtil", m): ("reference", ZSCL_MTIL, {}) for m in ("finetune", "lwf_zscl", "lwf_vr", "icarl_zscl",
                                                          "wise_ft_zscl", "wc_zscl", "zscl")},
    # lloongx/DIKI@8ef89e7 configs/MTIL.yaml: SGD lr 5.0, wd 0, batch 128, max_epoch 10, cosine, warmup_epoch 0;
    # DIKI.py: F.cross_entropy, test batch x 2; utils.py get_transform: CLIP's eval transform for training
    ("mtil", "diki"): ("reference", dict(optimizer="sgd", momentum=0.0, lr=5.0, weight_decay=0.0, batch_size=128,
                                         epochs=10, iterations=0, schedule="cosine", warmup_steps=0,
                                         label_smoothing=0.0, grad_clip=0.0, augment="none", ce_classes="current",
                                         per_experience=None, eval_batch=256), {}),
    # MaolinLuo/KeepLoRA@a17f9c2 MTIL/configs/keeplora_order{1,2}.yaml: AdamW 1e-3, wd 0.01, batch 64, epoch_list;
    # trainer.py: F.cross_entropy; model/utils.py get_transform: CLIP's eval transform for training
    ("mtil", "keeplora"): ("reference", dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, batch_size=64, epochs=10,
                                             iterations=0, schedule="cosine", warmup_steps=0, label_smoothing=0.0,
                                             grad_clip=0.0, augment="none", ce_classes="current", eval_batch=256),
                           {"mtil_order1": {"per_experience": {"SUN397": {"epochs": 5}}},
                            "mtil_order2": {"per_experience": {"StanfordCars": {"epochs": 5}, "Food": {"epochs": 2},
                                                               "MNIST": {"epochs": 5}, "OxfordPet": {"epochs": 5},
                                                               "Flowers": {"epochs": 5}, "SUN397": {"epochs": 5}}}}),
    ("mtil", "magmax"): ("method", MAGMAX, {}),  # MagMax never ran MTIL: its one recipe (above)
    # MoE-Adapters4CL mtil/scripts/train/train_full_shot_router11_experts22_1000iters.sh:
    # lr=(5e-3 1e-3 5e-3 1e-3 1e-4 1e-3 1e-3 1e-4 1e-3 1e-3 1e-3) --ls 0.2 --iterations 1000; args.py --batch-size-eval 128
    ("mtil", "moe_adapters"): ("reference", dict(ZSCL_MTIL, lr=1e-3, eval_batch=128, per_experience={
        "Aircraft": {"lr": 5e-3}, "CIFAR100": {"lr": 5e-3}, "EuroSAT": {"lr": 1e-4}, "MNIST": {"lr": 1e-4}}), {}),
    # ... few-shot script: lr=(8e-3 5e-4 2e-4 5e-3 1e-3 1e-3 1e-2 1e-4 1e-2 1e-2 1e-2), --iterations 500
    ("mtil_fewshot", "moe_adapters"): ("reference", dict(MOE_FEWSHOT_LENGTH, lr=1e-3, eval_batch=128, per_experience={
        "Aircraft": {"lr": 8e-3}, "Caltech101": {"lr": 5e-4}, "CIFAR100": {"lr": 2e-4}, "DTD": {"lr": 5e-3},
        "Food": {"lr": 1e-2}, "MNIST": {"lr": 1e-4}, "OxfordPet": {"lr": 1e-2}, "StanfordCars": {"lr": 1e-2},
        "SUN397": {"lr": 1e-2}}), {}),
    # ZSCL cil/configs/class/cifar100_*-LwF.yaml (lwfvr), cifar100_*-iCaRL.yaml
    ("cil_cifar100", "lwf_vr"): ("reference", ZSCL_CIL, {}),
    ("cil_cifar100", "icarl_zscl"): ("reference", ZSCL_CIL, {}),
    ("cil_cifar100", "moe_adapters_cil"): ("reference", MOE_CIL, {"cifar100_50steps": {"batch_size": 64}}),  # 2-2: 64
    ("cil_cifar100", "magmax"): ("reference", MAGMAX, {}),  # scripts/CIL/all.sh: CIFAR100, 10/20/50 splits
    # ZSCL cil/configs/class/tinyimagenet_100-*-ZSCL.yaml, tinyimagenet_100-{5,10,20}.yaml (lwfvr), -iCaRL.yaml
    ("cil_tinyimagenet", "zscl"): ("reference", ZSCL_CIL, {}),
    ("cil_tinyimagenet", "lwf_vr"): ("reference", ZSCL_CIL, {}),
    ("cil_tinyimagenet", "icarl_zscl"): ("reference", ZSCL_CIL, {}),
    # MoE-Adapters4CL cil/configs/class/tinyimagenet_100-{5,10,20}.yaml: lr 1e-3, ls 0.0, batch 64
    ("cil_tinyimagenet", "moe_adapters_cil"): ("reference", dict(MOE_CIL, batch_size=64), {}),
    ("cil_tinyimagenet", "magmax"): ("method", MAGMAX, {}),
    # CL-CLIP methods/{ft,lwf,vrd,geodl,imm}.py, models/clip_rkr.py: the suite's; methods/agem.py: no clipping
    **{("paper", m): ("reference", CLCLIP, {}) for m in ("finetune", "lwf", "vr_lwf", "geodl", "imm", "rkr")},
    ("paper", "agem"): ("reference", dict(CLCLIP, grad_clip=0.0), {}),
}

REAL_SUITES = sorted(SUITE_RECIPES)
OFFLINE = ["model.pretrained=null"]  # no weights are looked up: the recipe is what is compared


def _plans(mode: str):
    return {s: plan(s, strict_weights=False, sets=OFFLINE + [f"recipe={mode}"]) for s in REAL_SUITES}


@pytest.fixture(scope="module")
def reference_plans():
    return _plans("reference")


@pytest.fixture(scope="module")
def shared_plans():
    return _plans("shared")


def _observed(spec) -> Dict[str, Any]:
    t = spec.train
    out = {k: t[k] for k in ("optimizer", "lr", "weight_decay", "batch_size", "iterations", "warmup_steps",
                             "label_smoothing", "grad_clip", "augment", "ce_classes")}
    out.update(per_experience=t.get("per_experience"), eval_batch=spec.eval["batch_size"])
    if not t["iterations"]:
        out["epochs"] = t["epochs"]
    if t["optimizer"] == "sgd":
        out["momentum"] = t["momentum"]
    if t["warmup_steps"] or t["schedule"] != "constant" or spec.suite != "paper":
        out["schedule"] = t["schedule"]
    return out


def _expected(recipe: Dict[str, Any], protocol: str, spec) -> Dict[str, Any]:
    want = {k: v for k, v in recipe.items()}
    if not want.get("iterations"):
        want.setdefault("epochs", 1)
    else:
        want.pop("epochs", None)
    if spec.suite == "paper" and "schedule" not in want:  # CL-CLIP steps StepLR in one-session training only
        if protocol == "paper_coco_ost":
            want["schedule"] = "step"
    return want


def test_every_method_on_every_real_suite_trains_with_its_authors_recipe(reference_plans):
    registry = method_registry()
    seen = set()
    for suite, specs in reference_plans.items():
        for spec in specs:
            if not registry.get(spec.method).trains:
                assert spec.recipe["source"] == "none"
                continue
            source, recipe, per_protocol = REFERENCE.get((suite, spec.method), ("suite", SUITE_RECIPES[suite], {}))
            seen.add((suite, spec.method))
            want = _expected({**recipe, **per_protocol.get(spec.protocol, {})}, spec.protocol, spec)
            got = _observed(spec)
            assert spec.recipe["mode"] == "reference" and spec.recipe["source"] == source, (suite, spec.method)
            assert {k: got.get(k) for k in want} == want, (suite, spec.protocol, spec.method)
    assert set(REFERENCE) <= seen  # every entry above was resolved


def test_shared_gives_every_method_of_a_suite_one_recipe(shared_plans):
    registry = method_registry()
    for suite, specs in shared_plans.items():
        by_protocol: Dict[str, set] = {}
        for spec in specs:
            if registry.get(spec.method).trains:
                assert spec.recipe == {**spec.recipe, "mode": "shared", "source": "suite"}
                key = json.dumps({"train": spec.train, "eval": spec.eval}, sort_keys=True)
                by_protocol.setdefault(spec.protocol, set()).add(key)
                assert _observed(spec) | {} == _observed(spec)  # resolvable
        for protocol, recipes in by_protocol.items():
            assert len(recipes) == 1, (suite, protocol, len(recipes))


def test_dry_run_json_prints_one_resolved_spec_per_run(capsys):
    assert run_cli("run", "--suite", "mtil", "--method", "diki", "keeplora", "zscl", "--dry-run", "--json",
                   "--set", *OFFLINE) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and {r["spec"]["method"] for r in rows} == {"diki", "keeplora", "zscl"}
    for r in rows:
        assert set(r) == {"id", "state", "recipe", "spec"} and r["state"] == "missing"
        assert r["recipe"] == r["spec"]["recipe"] and len(r["id"]) == 12
        if r["spec"]["method"] != "zscl":
            train = r["spec"]["train"]
            assert train["label_smoothing"] == 0 and train["warmup_steps"] == 0 and train["augment"] == "none"
        else:
            assert r["spec"]["train"]["per_experience"] == ZSCL_MTIL_LRS
    assert run_cli("run", "--suite", "tiny", "--method", "zeroshot", "--json") == 2  # --json needs --dry-run


def test_the_recipe_is_in_the_record_not_in_the_id():
    ref = plan("mtil", ["zscl"], ["mtil_order1"], strict_weights=False, sets=OFFLINE)[0]
    shared = plan("mtil", ["zscl"], ["mtil_order1"], strict_weights=False, sets=OFFLINE + ["recipe=shared"])[0]
    assert ref.recipe["mode"] == "reference" and shared.recipe["mode"] == "shared"
    assert ref.id == shared.id  # the same settings: the same run
    assert ref.to_dict()["recipe"] == ref.recipe and "recipe" not in json.loads(ref.canonical_json())
    diki = plan("mtil", ["diki"], ["mtil_order1"], strict_weights=False, sets=OFFLINE)[0]
    diki_shared = plan("mtil", ["diki"], ["mtil_order1"], strict_weights=False, sets=OFFLINE + ["recipe=shared"])[0]
    assert diki.id != diki_shared.id and diki_shared.train["optimizer"] == "adamw"


def test_per_experience_settings_are_checked_up_front(capsys):
    assert run_cli("run", "--suite", "mtil", "--method", "zscl", "--dry-run", "--set", *OFFLINE,
                   "train.per_experience.Aircrft.lr=1e-4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown experience 'Aircrft'" in err[0] and "Aircraft" in err[0]
    assert run_cli("run", "--suite", "mtil", "--method", "zscl", "--dry-run", "--set", *OFFLINE,
                   "train.per_experience.MNIST.lr=-1") == 2
    assert "train.per_experience.MNIST.lr=-1" in capsys.readouterr().err
    with pytest.raises(ClipbenchError, match="unknown setting 'train.per_experience.0.lrr'"):
        check_per_experience({"per_experience": {0: {"lrr": 1.0}}}, None, "p", TRAIN_RULES)
    with pytest.raises(ClipbenchError, match="unknown experience 3"):
        check_per_experience({"per_experience": {3: {"lr": 1.0}}}, ["a", "b", "c"], "p", TRAIN_RULES)


def test_experience_train_takes_the_entry_by_name_then_index():
    train = {"lr": 1.0, "epochs": 2, "per_experience": {"MNIST": {"lr": 5.0}, 1: {"epochs": 7}, "2": {"lr": 3.0}}}
    assert experience_train(train, 0, "Aircraft") == {"lr": 1.0, "epochs": 2}
    assert experience_train(train, 1, "MNIST") == {"lr": 5.0, "epochs": 2}  # the name wins over the index
    assert experience_train(train, 1, None) == {"lr": 1.0, "epochs": 7}
    assert experience_train(train, 2, "x") == {"lr": 3.0, "epochs": 2}  # an index as digits (--set, records)


def test_the_engine_applies_per_experience_settings(tmp_path, monkeypatch):
    import clipbench.engine as engine

    seen = []
    real = engine.make_optimizer
    monkeypatch.setattr(engine, "make_optimizer", lambda params, train: seen.append(train["lr"]) or real(params, train))
    assert run_cli("run", "--suite", "tiny", "--method", "finetune", "--protocol", "tiny_shapes", "--quiet",
                   "--results", tmp_path, "--set", "train.per_experience.1.lr=0.05") == 0
    assert seen == [1e-3, 0.05, 1e-3]


def test_zscl_split_is_torchs_random_split():
    """`random_split: {train: 0.8, seed: 42}` picks what ZSCL's `split_dataset` (torch's random_split, seed 42) does."""
    from clipbench.protocols.builders.dataset_specs import random_split_mask

    n = 1037
    train, test = torch.utils.data.random_split(range(n), [int(0.8 * n), n - int(0.8 * n)],
                                                generator=torch.Generator().manual_seed(42))
    assert torch.nonzero(random_split_mask(n, {"train": 0.8, "seed": 42}, "train")).flatten().tolist() == sorted(train.indices)
    assert torch.nonzero(random_split_mask(n, {"train": 0.8, "seed": 42}, "test")).flatten().tolist() == sorted(test.indices)
    with pytest.raises(ClipbenchError, match="random_split"):
        random_split_mask(n, {"train": 1.5, "seed": 42}, "train")


def test_the_methods_page_holds_the_recipe_table():
    """docs/methods.md's method x suite table is `recipe_table()` (regenerate it there when a suite's recipes change)."""
    from pathlib import Path

    from clipbench.recipe_table import recipe_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert recipe_table() in page
