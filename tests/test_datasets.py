"""Every dataset adapter on small files in its real format, and a protocol built from them end to end."""

from pathlib import Path

import pytest
import torch

from clipbench.decode import decode
from clipbench.errors import ClipbenchError
from clipbench.preprocess import Preprocess
from clipbench.protocols.catalog import ProtocolDef
from clipbench.protocols.formats import (cifar, coco_crops, image_folder, imagenet_val, karpathy_captions, lists,
                                         torchvision_dataset)
from fixtures_data import (write_cifar100, write_coco, write_image_folder, write_imagenet_val, write_karpathy,
                           write_lists)
from helpers import records, run_cli


def pixels(sources, size=16):
    """Decoded uint8 [N, 3, size, size] of a format's sources, with open_clip's default eval transform."""
    return decode(sources, Preprocess("open_clip", (size, size)))


def test_cifar100_pickles(tmp_path):
    write_cifar100(tmp_path)
    data, names = cifar.read(tmp_path, "train", 100)
    assert len(data.images) == 8 and pixels(data.images, 32).shape == (8, 3, 32, 32)
    assert data.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3] and names[1] == "aquarium fish"
    test, _ = cifar.read(tmp_path, "test", 100)
    assert len(test) == 4


def test_missing_cifar_names_path_and_download(tmp_path):
    with pytest.raises(ClipbenchError, match=r"cifar-100-python.*download=True"):
        cifar.read(tmp_path, "train", 100)


def test_image_folder_and_class_subset(tmp_path):
    write_image_folder(tmp_path, ("cat", "dog", "eel"))
    data, names = image_folder.read(tmp_path)
    assert names == ["cat", "dog", "eel"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    sub, sub_names = image_folder.read(tmp_path, classes=["eel", "cat"])
    assert sub_names == ["eel", "cat"] and sub.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert pixels(sub.images).shape == (6, 3, 16, 16)


def test_imagenet_val_layout_with_class_subset(tmp_path):
    write_imagenet_val(tmp_path)
    data, ids = imagenet_val.read(tmp_path / "val", tmp_path / "LOC_val_solution.csv")
    assert ids == ["n01440764", "n01443537"] and data.labels.tolist() == [0, 1, 0]
    sub, sub_ids = imagenet_val.read(tmp_path / "val", tmp_path / "LOC_val_solution.csv", ["n01443537"])
    assert sub_ids == ["n01443537"] and len(sub) == 1


def test_imagenet_names_from_open_clip_for_a_full_index():
    wnids = [f"n{i:08d}" for i in range(1000)]
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert imagenet_val.imagenet_names([wnids[0], wnids[999]], wnids) == [IMAGENET_CLASSNAMES[0], IMAGENET_CLASSNAMES[999]]
    assert imagenet_val.imagenet_names(["n1"], ["n1", "n2"]) == ["n1"]


def test_coco_object_crops(tmp_path):
    write_coco(tmp_path, "val")
    data, names = coco_crops.read(tmp_path, "val", min_area=100)
    assert names == ["person", "dog"]  # category-id order
    assert data.labels.tolist() == [1, 0]  # annotations 10 (dog) and 11 (person); small and crowd boxes skipped
    # the crop is the coloured box, not the white page around it
    assert pixels(data.images, 20)[0, 0].float().mean() == pytest.approx(220, abs=3)


def test_karpathy_captions_several_per_image(tmp_path):
    split = write_karpathy(tmp_path)
    cap = karpathy_captions.read(split, tmp_path, "test")
    assert len(cap.images) == 4 and len(cap.captions) == 8
    assert cap.caption_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert cap.captions[2] == "picture number 1 ."


def test_csv_labels_and_jsonl_captions(tmp_path):
    write_lists(tmp_path)
    data, names = lists.read_labels(tmp_path / "labels.csv")
    assert names == ["green", "red"] and data.labels.tolist() == [1, 0, 1, 0]
    cap = lists.read_captions(tmp_path / "captions.jsonl")
    assert len(cap.images) == 4 and cap.caption_image.tolist() == [0, 1, 2, 3, 0]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{not json\n')
    with pytest.raises(ClipbenchError, match=r"bad.jsonl:2"):
        lists.read_captions(tmp_path / "bad.jsonl")


def test_torchvision_missing_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(ClipbenchError, match=r"torchvision DTD not found at .*download: true"):
        torchvision_dataset.read("DTD", tmp_path, "test")


PROTOCOL = {
    "name": "fixture_protocol", "version": 1, "kind": "class_incremental", "builder": "datasets",
    "params": {
        "target": {"adapter": "image_folder", "root": "folder", "test_fraction": 0.34},
        "n_experiences": 2, "templates": ["a photo of a {c}."],
        "zeroshot": {"imagenet": {"adapter": "imagenet_val", "images": "imagenet/val", "index_file": "imagenet/LOC_val_solution.csv",
                                  "class_ids_file": "imagenet/wnids.txt"}},
        "retrieval": {"coco": {"adapter": "karpathy_captions", "split_json": "karpathy/dataset.json", "image_root": "karpathy",
                               "split": "test", "folds": 2}},
        "reference": {"adapter": "jsonl", "list": "lists/captions.jsonl"},
    },
}


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "folder", ("cat", "dog", "eel", "fox"), per_class=3)
    write_imagenet_val(root / "imagenet")
    write_karpathy(root / "karpathy")
    write_lists(root / "lists")
    return root


def test_datasets_protocol_builds_streams(data_root):
    proto = ProtocolDef(**{k: v for k, v in PROTOCOL.items()})
    streams = proto.build(str(data_root), 0, reference_for="agem")
    assert streams.class_names == ["cat", "dog", "eel", "fox"]
    assert streams.experience_classes == [[0, 1], [2, 3]]
    assert [len(t) for t in streams.train] == [4, 4] and [len(t) for t in streams.test] == [2, 2]
    assert streams.zeroshot_sets["imagenet"].class_names == ["n01443537", "n01440764"]
    assert streams.retrieval_sets["coco"].folds == 2 and len(streams.reference.captions) == 5
    assert all(r["found"] for r in proto.assets(str(data_root)))
    assert not any(r["found"] for r in proto.assets(str(data_root / "elsewhere")))


def test_missing_dataset_folder_stops_the_run_with_one_line(data_root, tmp_path, capsys, monkeypatch):
    """A run on a protocol whose data is missing fails by itself (exit 1 after the others, a failed record)
    naming the folder."""
    from clipbench.protocols import catalog

    proto = ProtocolDef(**PROTOCOL)
    monkeypatch.setitem(catalog._protocols(), proto.name, proto)
    results = tmp_path / "results"
    assert run_cli("run", "--method", "finetune", "--protocol", proto.name, "--suite", "tiny", "--results", results,
                   "--quiet", "--set", f"data_root={tmp_path / 'nowhere'}") == 1
    err = capsys.readouterr().err
    assert "image folder not found at" in err and str(tmp_path / "nowhere") in err
    [failed] = records(results).values()
    assert failed["status"] == "failed" and "image folder not found at" in failed["error"]["message"]
    assert run_cli("run", "--method", "finetune", "lwf", "--protocol", proto.name, "--suite", "tiny", "--results", results,
                   "--quiet", "--set", f"data_root={data_root}") == 0
    recs = {k: r for k, r in records(results).items() if r["status"] == "complete"}
    assert len(recs) == 2 and all(r["status"] == "complete" for r in recs.values())
    assert all("i2t_r1.coco" in r["metrics"] and "zs_acc.imagenet" in r["metrics"] for r in recs.values())


def test_download_true_fetches_a_missing_cifar_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    from clipbench.protocols.builders.dataset_specs import load_labelled
    from fixtures_data import write_cifar100

    calls = []

    class FakeCIFAR100:  # stands in for the network: writes the files torchvision would
        def __init__(self, root, train, download):
            calls.append((root, download))
            write_cifar100(Path(root))

    monkeypatch.setattr(tvd, "CIFAR100", FakeCIFAR100)
    spec = {"adapter": "cifar", "root": "cifar100", "variant": 100, "download": True}
    data, names = load_labelled(spec, "train", str(tmp_path))
    assert calls == [(str(tmp_path / "cifar100"), True)] and len(data) == 8
    load_labelled(spec, "test", str(tmp_path))
    assert len(calls) == 1  # present now: not fetched again


def test_download_failure_offline_is_one_clear_error(tmp_path):
    from clipbench.protocols.builders.dataset_specs import load_labelled

    spec = {"adapter": "image_folder", "root": "eurosat/2750", "download": True, "torchvision": "EuroSAT"}
    with pytest.raises(ClipbenchError, match=r"eurosat/2750.*torchvision could not download it"):
        load_labelled(spec, "train", str(tmp_path))


def test_torchvision_adapter_reads_a_dataset_in_torchvision_layout(tmp_path):
    """torchvision's MNIST reads raw idx files from <root>/MNIST/raw (the layout its download leaves)."""
    import struct

    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((6, 28, 28), dtype=np.uint8)
    images[:, 10:18, 10:18] = np.arange(6, dtype=np.uint8)[:, None, None] * 40
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 6, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 6) + labels.tobytes())
    data, names = torchvision_dataset.read("MNIST", tmp_path, "train")
    images = pixels(data.images)
    assert images.shape == (6, 3, 16, 16) and data.labels.tolist() == [3, 1, 4, 1, 5, 9]
    assert names[0].startswith("0") and len(names) == 10
    assert int(images[5, 0, 8, 8]) > int(images[1, 0, 8, 8])  # brighter square survives the resize


def _write_mnist(root: Path, n: int = 6) -> None:
    import struct

    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = bytes(k % 10 for k in range(n))
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels)


def test_mtil_trains_and_scores_each_dataset_with_its_own_templates(tmp_path):
    """The shipped MTIL protocol, on two of its datasets in their real formats: MNIST's class "0" is
    'a photo of the number: "0".', never the first dataset's prompt."""
    from clipbench.engine import CLIPClassifier
    from clipbench.models import load_model
    from clipbench.protocols.catalog import get_protocol
    from fixtures_data import write_cifar100

    write_cifar100(tmp_path / "cifar100")
    _write_mnist(tmp_path / "mtil")
    proto = get_protocol("mtil_order1")
    assert proto.version >= 2
    params = {**proto.params, "order": ["CIFAR100", "MNIST"]}
    streams = proto.build(str(tmp_path), 0, params)
    mnist = streams.experience_classes[1]
    assert streams.class_names[mnist[0]] == "0"
    assert streams.class_templates[mnist[0]] == ['a photo of the number: "{c}".']
    assert streams.class_templates[0] == ["a photo of a {c}."]  # CIFAR-100's own
    prompts = streams.train_prompts()
    assert prompts[mnist[0]] == 'a photo of the number: "0".' and prompts[0] == "a photo of a apple."
    loaded = load_model("clipbench-tiny", None)
    model = CLIPClassifier(loaded, streams.class_names, streams.train_templates())
    assert torch.equal(model.prompt_tokens[mnist[0]], loaded.tokenizer(['a photo of the number: "0".'])[0])


def test_a_new_format_is_one_registered_module(tmp_path, monkeypatch):
    """What docs/suites.md says: a format registered from one file is usable by protocol files at once."""
    from clipbench.streams import FileReader, ImageSources, LabelledImages
    from clipbench.protocols.formats import FORMATS, Format, register_format
    from clipbench.protocols.builders.dataset_specs import load_labelled

    write_image_folder(tmp_path / "flat", ("a",), per_class=4)

    def labelled(spec, split, data_root):
        files = sorted((tmp_path / "flat" / "a").iterdir())
        return LabelledImages(ImageSources(FileReader(), files), torch.tensor([k % 2 for k in range(len(files))])), ["even", "odd"]

    monkeypatch.setattr(FORMATS, "_items", dict(FORMATS._items))  # leave the real registry as it was
    register_format(Format("parity_list", "any", ("root",), labelled=labelled))
    data, names = load_labelled({"adapter": "parity_list", "root": "flat"}, "train", str(tmp_path))
    assert names == ["even", "odd"] and data.labels.tolist() == [0, 1, 0, 1]


def test_cifar_raw_names_keep_torchvisions_underscores(tmp_path):
    """`raw_names: true` (the CIFAR-100 protocols): `aquarium_fish`, as Continual-CLIP, ZSCL's and MoE-Adapters'
    CIL code and MagMax prompt `dataset.classes`; by default `aquarium fish` (ZSCL's MTIL `underline_to_space`)."""
    import pickle

    import numpy as np

    from clipbench.protocols.formats import cifar

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = ["apple", "aquarium_fish", "maple_tree"]
    with open(folder / "train", "wb") as fh:
        pickle.dump({"data": np.zeros((3, 3072), np.uint8), "fine_labels": [0, 1, 2]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names}, fh)
    assert cifar.labelled({"root": str(tmp_path), "raw_names": True}, "train", None)[1] == names
    assert cifar.labelled({"root": str(tmp_path)}, "train", None)[1] == ["apple", "aquarium fish", "maple tree"]
