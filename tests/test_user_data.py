"""A user's own data, as a new user brings it: an ImageFolder of real clip art and a captions CSV, through
a protocol of the `datasets` builder, on an open_clip ViT-B-32 whose weights come from a file.

- zero-shot predictions, accuracy and recall@K equal an open_clip-only reference on the same files;
- the data is part of the run's identity: one added image gives a new run id, and `status` shows the
  old record as stale;
- an image that cannot be decoded stops the run before training, naming every such file (exit 2).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipbench.protocols import catalog
from clipbench.protocols.catalog import ProtocolDef
from helpers import records, run_cli, snapshot
from real_images import OPENCLIPART, TUXPAINT, bomb_png

CLASSES = {"bird": "animals/birds", "flower": "plants/flowers", "fruit": "food/fruit"}
TEMPLATES = ["a photo of a {c}.", "clip art of a {c}."]


def _protocol(name: str = "user_clipart") -> ProtocolDef:
    return ProtocolDef(name=name, version=1, kind="class_incremental", builder="datasets", params={
        "target": {"adapter": "image_folder", "root": "clipart", "test_fraction": 0.5},
        "n_experiences": 1, "templates": TEMPLATES,
        "zeroshot": {"clipart": {"adapter": "image_folder", "root": "clipart", "split": "all", "templates": TEMPLATES}},
        "retrieval": {"stamps": {"adapter": "csv", "list": "stamps/captions.csv"}},
    })


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    """<tmp>/data: clipart/<class>/*.png (8 real clip-art files per class) and stamps/captions.csv (12 Tux
    Paint stamps with their descriptions); the protocol registered as a user's would be."""
    root = tmp_path / "data"
    for name, folder in CLASSES.items():
        files = sorted((OPENCLIPART / folder).glob("*.png"), key=lambda p: p.stat().st_size)[:8]
        assert len(files) == 8, f"openclipart-png lacks {folder}"
        (root / "clipart" / name).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, root / "clipart" / name / f.name)
    stamps = root / "stamps"
    stamps.mkdir(parents=True)
    pairs = []
    for png in sorted(TUXPAINT.glob("animals/**/*.png"))[:40]:
        txt = png.with_suffix(".txt")
        if txt.is_file() and len(pairs) < 12:
            shutil.copy2(png, stamps / png.name)
            pairs.append((png.name, txt.read_text(errors="replace").splitlines()[0].strip()))
    with open(stamps / "captions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(pairs)
    proto = _protocol()
    monkeypatch.setitem(catalog._protocols(), proto.name, proto)
    return root


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """ViT-B-32 with random weights (seed 0) saved to a file, as a user passes real weights."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "vit-b-32.pt"
    torch.save(model.state_dict(), path)
    return path


def _reference(vit_file: Path, root: Path):
    """Zero-shot predictions and retrieval ranks from open_clip alone: its `preprocess_val`, `encode_image`,
    `encode_text`, and the templates' mean embedding per class."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vit_file))
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    model.eval()
    names = sorted(CLASSES)
    files = [(p, label) for label, n in enumerate(names) for p in sorted((root / "clipart" / n).iterdir())]
    with torch.no_grad():
        images = F.normalize(model.encode_image(torch.stack([preprocess(Image.open(p)) for p, _ in files])), dim=-1)
        classes = []
        for n in names:
            t = F.normalize(model.encode_text(tokenizer([tpl.format(c=n) for tpl in TEMPLATES])), dim=-1)
            classes.append(F.normalize(t.mean(0), dim=-1))
        predictions = (images @ torch.stack(classes).T).argmax(1)
        rows = list(csv.DictReader(open(root / "stamps" / "captions.csv")))
        cap_images = F.normalize(model.encode_image(torch.stack([preprocess(Image.open(root / "stamps" / r["image"])) for r in rows])), dim=-1)
        cap_texts = F.normalize(model.encode_text(tokenizer([r["caption"] for r in rows])), dim=-1)
    labels = torch.tensor([label for _, label in files])
    sim = cap_images @ cap_texts.T  # one caption per image here: pair i is (image i, caption i)
    i2t_rank = torch.tensor([int((sim[i] >= sim[i, i]).sum()) - 1 for i in range(len(rows))])
    t2i_rank = torch.tensor([int((sim[:, j] >= sim[j, j]).sum()) - 1 for j in range(len(rows))])
    recall = {f"{d}_r{k}": float((r < k).double().mean()) for d, r in (("i2t", i2t_rank), ("t2i", t2i_rank)) for k in (1, 5, 10)}
    return predictions, labels, recall


def _run(results: Path, root: Path, vit_file: Path, *extra: str) -> int:
    return run_cli("run", "--method", "zeroshot", "--protocol", "user_clipart", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", f"data_root={root}", "model.arch=ViT-B-32", f"model.pretrained={vit_file}", *extra)


def test_zero_shot_and_recall_equal_an_open_clip_only_loop(user_data, vit_file, tmp_path):
    from clipbench.decode import decode_streams
    from clipbench.evaluate import class_embeddings, encode_images
    from clipbench.models import load_model

    predictions, labels, recall = _reference(vit_file, user_data)
    # per image: clipbench's decoding and encoding predict what open_clip's loop predicts
    streams = _protocol().build(str(user_data), 0)
    loaded = load_model("ViT-B-32", str(vit_file))
    decode_streams(streams, loaded.preprocess)
    zs = streams.zeroshot_sets["clipart"]
    assert zs.data.labels.tolist() == labels.tolist()
    ours = (encode_images(loaded, zs.data.images, 8) @ class_embeddings(loaded, zs.class_names, zs.templates, 8).T).argmax(1)
    assert ours.tolist() == predictions.tolist()
    # and the run's record says the same
    results = tmp_path / "results"
    assert _run(results, user_data, vit_file) == 0
    (record,) = records(results).values()
    assert record["metrics"]["zs_acc.clipart"] == pytest.approx(float((predictions == labels).double().mean()), abs=1e-12)
    for key, value in recall.items():
        assert record["metrics"][f"{key}.stamps"] == pytest.approx(value, abs=1e-12), key


def test_one_added_image_is_another_run_and_the_old_record_is_stale(user_data, vit_file, tmp_path, capsys):
    from clipbench.plan import plan

    sets = [f"data_root={user_data}", "model.arch=ViT-B-32", f"model.pretrained={vit_file}"]
    before = plan("tiny", ["zeroshot"], ["user_clipart"], sets=sets)[0]
    assert set(before.data) == {"target", "zero-shot clipart", "retrieval stamps"}
    extra = sorted((OPENCLIPART / CLASSES["bird"]).glob("*.png"), key=lambda p: p.stat().st_size)[8]
    shutil.copy2(extra, user_data / "clipart" / "bird" / extra.name)
    after = plan("tiny", ["zeroshot"], ["user_clipart"], sets=sets)[0]
    assert after.id != before.id and after.data["target"] != before.data["target"]
    assert after.data["retrieval stamps"] == before.data["retrieval stamps"]
    (user_data / "clipart" / "bird" / extra.name).unlink()
    assert plan("tiny", ["zeroshot"], ["user_clipart"], sets=sets)[0].id == before.id  # removed again: same data
    # a changed image (new contents, same name) is other data too
    shutil.copy2(extra, sorted((user_data / "clipart" / "bird").iterdir())[0])
    assert plan("tiny", ["zeroshot"], ["user_clipart"], sets=sets)[0].id != before.id


def test_status_shows_a_record_made_on_other_data_as_stale(user_data, tmp_path, capsys):
    results = tmp_path / "results"
    tiny = ("run", "--method", "zeroshot", "--protocol", "user_clipart", "--suite", "tiny", "--results", results, "--quiet",
            "--set", f"data_root={user_data}")
    assert run_cli(*tiny) == 0
    files = sorted((user_data / "clipart" / "fruit").iterdir())
    shutil.copy2(files[0], user_data / "clipart" / "fruit" / "copy.png")
    capsys.readouterr()
    assert run_cli("status", "--suite", "tiny", "--results", results, "--set", f"data_root={user_data}",
                   "--method", "zeroshot", "--protocol", "user_clipart") == 0
    out = capsys.readouterr().out
    assert "stale" in out and "made on other data (target, zero-shot clipart)" in out
    assert run_cli(*tiny) == 0  # a new run, beside the old record
    assert len(records(results)) == 2


def test_undecodable_images_stop_the_run_naming_every_file(user_data, tmp_path, capsys):
    results = tmp_path / "results"
    tiny = ("--suite", "tiny", "--results", results, "--quiet", "--set", f"data_root={user_data}")
    assert run_cli("run", "--method", "zeroshot", "--protocol", "tiny_shapes", *tiny) == 0
    done = snapshot(results)
    birds = user_data / "clipart" / "bird"
    bad = [bomb_png(birds / "huge.png"), birds / "empty.png", birds / "notes.png", birds / "cut.png"]
    bad[1].write_bytes(b"")
    bad[2].write_text("not an image\n")
    bad[3].write_bytes(sorted(birds.glob("*.png"))[0].read_bytes()[:300])
    capsys.readouterr()
    assert run_cli("run", "--method", "finetune", "--protocol", "user_clipart", *tiny) == 1  # fails by itself
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "4 image(s) cannot be decoded" in err  # listed at the end
    assert all(str(p) in err for p in bad) and "DecompressionBombError" in err
    after = snapshot(results)
    assert {k: v for k, v in after.items() if k in done} == done  # the completed run untouched
    [failed] = [r for r in records(results).values() if r["status"] != "complete"]
    assert failed["status"] == "failed" and "4 image(s) cannot be decoded" in failed["error"]["message"]
