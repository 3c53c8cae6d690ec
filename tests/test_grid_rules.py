"""The grid's rules on real-format data (issue 23): n/a by declaration, a failure stops only its own run,
`limit.steps` cuts every run short and is recorded, reference sets are declared per method (images and
sentences from separate sources, subsets) and named by the dry run when missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipbench.protocols.catalog import get_protocol
from fixtures_data import write_image_folder
from helpers import records, run_cli

METHODS = ("zscl", "agem", "finetune")


def write_protocol(tmp_path: Path, extra: str = "") -> Path:
    """A user protocol over an image folder (the `datasets` builder), in 2 experiences, with no reference set."""
    write_image_folder(tmp_path / "pics", classes=("cat", "dog", "fox", "owl"), per_class=4)
    path = tmp_path / "pics.yaml"
    path.write_text(f"""name: pics_{tmp_path.name}
version: 1
kind: class_incremental
builder: datasets
params:
  target: {{adapter: image_folder, root: {tmp_path / 'pics'}, test_fraction: 0.25}}
  n_experiences: 2
{extra}""")
    return path


def test_methods_without_their_reference_set_are_na_never_failed(tmp_path, capsys):
    """zscl and agem declare n/a on a protocol without a reference set: the plan says why, `run` skips them
    (exit 0, an n/a record each), `status` and the leaderboard show the reason."""
    protocol, results = write_protocol(tmp_path), tmp_path / "results"
    common = ("--suite", "tiny", "--protocol", protocol, "--results", results)
    assert run_cli("run", "--method", *METHODS, *common, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "[n/a: needs reference images and reference sentences (outside data); the protocol declares no reference set]" in out
    assert "[n/a: needs image-caption pairs (outside data); the protocol declares no reference set]" in out
    assert run_cli("run", "--method", *METHODS, *common, "--quiet", "--set", "limit.steps=1") == 0
    by_method = {r["spec"]["method"]: r for r in records(results).values()}
    assert by_method["finetune"]["status"] == "complete"
    assert by_method["zscl"]["status"] == by_method["agem"]["status"] == "n/a"
    assert by_method["agem"]["reason"].startswith("needs image-caption pairs")
    before = {k: Path(results, k).stat().st_mtime_ns for k in records(results)}
    assert run_cli("run", "--method", *METHODS, *common, "--quiet", "--set", "limit.steps=1") == 0
    assert {k: Path(results, k).stat().st_mtime_ns for k in records(results)} == before  # nothing rewritten
    capsys.readouterr()
    assert run_cli("status", "--method", *METHODS, *common, "--set", "limit.steps=1") == 0
    out = capsys.readouterr().out
    assert f"n/a       pics_{tmp_path.name}" in out and "(needs image-caption pairs" in out and "1 complete, 2 n/a" in out
    assert run_cli("leaderboard", "--results", results, "--print") == 0
    page = capsys.readouterr().out
    row = next(line for line in page.splitlines() if line.startswith("| zscl"))
    assert "n/a: needs reference images and reference sentences" in row


def test_a_run_failing_at_build_time_fails_alone(tmp_path, capsys):
    """A reference set missing on disk fails only the runs that read it: the others complete, the command exits 1
    after them and lists the failure at the end; the failed run has a record saying why."""
    protocol = write_protocol(tmp_path, "  reference: {adapter: csv, list: nowhere/pairs.csv}\n")
    results = tmp_path / "results"
    assert run_cli("run", "--method", *METHODS, "--suite", "tiny", "--protocol", protocol, "--results", results,
                   "--set", "limit.steps=1") == 1
    err = capsys.readouterr().err
    by_method = {r["spec"]["method"]: r for r in records(results).values()}
    assert by_method["finetune"]["status"] == "complete"  # never reads the reference set
    for method in ("zscl", "agem"):
        assert by_method[method]["status"] == "failed"
        assert "caption list not found at" in by_method[method]["error"]["message"]
    tail = err.strip().splitlines()[-2:]
    assert all(": failed: MissingData: caption list not found at" in line for line in tail)
    assert "done: 1 ran, 0 already complete, 0 held by other runners, 0 n/a, 2 failed" in err


def test_bad_input_seen_by_the_plan_still_writes_nothing(tmp_path):
    protocol, results = write_protocol(tmp_path), tmp_path / "results"
    assert run_cli("run", "--method", "finetune", "--suite", "tiny", "--protocol", protocol, "--results", results,
                   "--set", "limit.steps=-1") == 2
    assert run_cli("run", "--method", "nosuch", "--suite", "tiny", "--protocol", protocol, "--results", results) == 2
    assert not results.exists()


def test_limit_steps_cuts_every_recipe_and_is_recorded(tmp_path, monkeypatch):
    """`limit.steps` caps the steps of an epochs recipe (10 epochs) and a method-internal loop (DDAS's
    autoencoders), sits in the spec (so in the run id) only when set."""
    from clipbench import engine
    from clipbench.methods import ddas

    steps, loops = [], []
    real_train, real_autoencoder = engine.train_experience, ddas.train_autoencoder

    def counting_train(*args, **kwargs):
        steps.append(kwargs.get("limit_steps"))
        return real_train(*args, **kwargs)

    def counting_autoencoder(features, iterations, *args, **kwargs):
        loops.append(iterations)
        return real_autoencoder(features, iterations, *args, **kwargs)

    monkeypatch.setattr(ddas, "train_autoencoder", counting_autoencoder)
    results = tmp_path / "results"
    small = ["protocols.tiny_shapes.train_per_class=8", "protocols.tiny_shapes.test_per_class=2",
             "train.epochs=10", "methods.moe_adapters.experts=2"]
    assert run_cli("run", "--method", "moe_adapters", "--suite", "tiny", "--protocol", "tiny_shapes", "--results",
                   results, "--quiet", "--set", *small, "limit.steps=2") == 0
    [record] = records(results).values()
    assert record["spec"]["limit"] == {"steps": 2} and record["spec"]["train"]["epochs"] == 10
    assert loops and set(loops) == {2}  # 1000 reference and 300 task iterations, cut to 2
    from clipbench.plan import plan

    [cut] = plan("tiny", ["finetune"], ["tiny_shapes"], None, None, ["limit.steps=2"])
    [whole] = plan("tiny", ["finetune"], ["tiny_shapes"], None, None, [])
    assert "limit" in cut.to_dict() and "limit" not in whole.to_dict() and cut.id != whole.id


def test_engine_takes_limit_steps_over_epochs():
    """10 epochs of 4 batches would be 40 steps; limit 3 gives exactly 3 optimizer steps."""
    from clipbench.engine import CLIPClassifier, train_experience
    from clipbench.methods.base import Method
    from clipbench.models import load_model
    from clipbench.streams import LabelledImages

    class Count(Method):
        name = "count"

        def __init__(self):
            super().__init__()
            self.steps = 0

        def after_training_iteration(self, strategy, **kwargs):
            self.steps += 1

    loaded = load_model("clipbench-tiny", None, "cpu")
    model = CLIPClassifier(loaded, ["a", "b"], ["a photo of a {c}."] * 2).eval()
    data = LabelledImages(torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1] * 8))
    method = Count()
    train_experience(model, method, data, 0, 2, {"epochs": 10, "batch_size": 4}, "cpu", False, limit_steps=3)
    assert method.steps == 3
    method.steps = 0
    train_experience(model, method, data, 0, 2, {"epochs": 1, "batch_size": 4}, "cpu", False, limit_steps=30)
    assert method.steps == 4  # shorter recipes are left as they are


def test_dry_run_names_missing_reference_sets_with_how_to_get_them(tmp_path, capsys):
    assert run_cli("run", "--all", "--suite", "mtil", "--dry-run", "--set", f"data_root={tmp_path}",
                   "model.pretrained=null") == 0
    out = capsys.readouterr().out
    assert f"MISSING reference of zscl: images  {tmp_path / 'imagenet' / 'train'}" in out and "image-net.org" in out
    assert "MISSING reference of zscl: sentences" in out and "gather_cc.py" in out
    assert f"MISSING reference of moe_adapters: images {tmp_path / 'tiny-imagenet-200'}" in out
    # declared for every method that reads one: none is n/a for want of a set (the CIL-only methods are n/a on MTIL)
    assert "MISSING reference                  " in out and "n/a: needs reference" not in out


def test_each_method_reads_its_own_reference_set(tmp_path):
    """zscl reads ImageNet images (a declared subset, fixed by its seed) with Conceptual Captions' sentences,
    agem the caption pairs, moe_adapters TinyImageNet's images; finetune reads none."""
    from suite_data import write_suite_data

    root = write_suite_data(tmp_path / "data", suites=("mtil",))
    protocol = get_protocol("mtil_order1")
    params = dict(protocol.params, order=["MNIST", "EuroSAT"])
    params["references"] = json.loads(json.dumps(params["references"]))
    params["references"]["zscl"]["images"]["subset"] = {"count": 4, "seed": 3}
    built = {m: protocol.build(str(root), 0, params, reference_for=m) for m in ("zscl", "agem", "moe_adapters")}
    built["finetune"] = protocol.build(str(root), 0, params)
    assert built["finetune"].reference is None
    zscl = built["zscl"].reference
    assert zscl.caption_image is None and len(zscl.images) == 4 and len(zscl.captions) == 8
    assert all("imagenet/train" in str(p) for p in zscl.images.items)
    again = protocol.build(str(root), 0, params, reference_for="zscl").reference
    assert again.images.items == zscl.images.items  # the seed fixes the draw
    agem = built["agem"].reference
    assert agem.caption_image is not None and len(agem.images) == len(agem.captions) == 8
    assert all("cc_data/val" in str(p) for p in agem.images.items)
    moe = built["moe_adapters"].reference
    assert len(moe.images) == 400 and all("tiny-imagenet-200/train" in str(p) for p in moe.images.items)


def test_conceptual_captions_reads_what_gather_cc_writes(tmp_path):
    """Tab-separated `title` and `filepath`, paths relative to the file, captions as pandas reads them."""
    from clipbench.protocols.formats import get_format

    folder = tmp_path / "cc"
    (folder / "cc_data" / "val" / "7").mkdir(parents=True)
    (folder / "out.csv").write_text('title\tfilepath\nsome "quoted" words, and more\tcc_data/val/7/7.jpg\n'
                                    "second caption\tcc_data/val/8/8.jpg\n")
    cap = get_format({"adapter": "conceptual_captions"}).captioned({"adapter": "conceptual_captions", "list": "cc/out.csv"},
                                                                    str(tmp_path))
    assert cap.captions == ['some "quoted" words, and more', "second caption"]
    assert cap.images.items == [folder / "cc_data/val/7/7.jpg", folder / "cc_data/val/8/8.jpg"]
    assert cap.caption_image.tolist() == [0, 1]


def test_flowers102_reads_torchvision_layout(tmp_path):
    """Labels (imagelabels.mat, minus 1), splits (setid.mat) and class names as torchvision's Flowers102 gives."""
    import numpy as np
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    from clipbench.protocols.formats.flowers102 import read

    base = tmp_path / "flowers-102"
    base.mkdir()
    savemat(base / "imagelabels.mat", {"labels": np.array([[5, 1, 102, 5]], dtype=np.uint8)})
    savemat(base / "setid.mat", {"trnid": np.array([[4, 1]]), "valid": np.array([[2]]), "tstid": np.array([[3, 2]])})
    data, names = read(tmp_path, "train")
    assert [p.name for p in data.images.items] == ["image_00004.jpg", "image_00001.jpg"] and data.labels.tolist() == [4, 4]
    data, _ = read(tmp_path, "test")
    assert data.labels.tolist() == [101, 0] and len(names) == 102 and names[0] == Flowers102.classes[0]


def test_a_suite_may_leave_a_method_out_of_its_all_grid_and_it_still_runs_by_name(tmp_path, capsys):
    import yaml

    from clipbench.plan import plan

    mini = plan("mini")
    assert "attriclip" not in {s.method for s in mini} and len({s.method for s in mini}) >= 40
    assert {s.method for s in plan("mini", ["attriclip"])} == {"attriclip"}
    suite = tmp_path / "lo.yaml"
    suite.write_text(yaml.safe_dump({"name": "lo", "model": {"arch": "clipbench-tiny"}, "protocols": ["tiny_shapes"],
                                     "left_out_of_all": {"no_such_method": "slow"}}))
    from clipbench.cli import main

    assert main(["run", "--all", "--suite", str(suite), "--dry-run", "--results", str(tmp_path / "r")]) == 2
    assert "no_such_method" in capsys.readouterr().err and not (tmp_path / "r").exists()
