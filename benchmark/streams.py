"""The containers a protocol builder returns: labelled images, captioned images, and the streams.

A builder may return images in either of two forms:
- `ImageSources`: image files (or raw pixel arrays) not decoded yet. The runner decodes them once,
  with the model's own preprocessing (`clipbench.decode`), into uint8 tensors at the model's input
  size, so what reaches the model is exactly what its own eval transform makes of the same file.
- uint8 tensors [N, 3, H, W], already decoded (the synthetic and mini suites, which document their
  own preprocessing); they are resized and normalised for a model in batches (`clipbench.model_input`).
Either way images are never decoded per sample inside training loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("class_incremental", "task_incremental")
SCORINGS = ("", "all")  # by kind, or over every class of the stream (Streams.scoring)
TEMPLATE_EXAMPLE = "a photo of a {c}."


def template_problem(template: Any) -> Optional[str]:
    """What is wrong with a prompt template (None: nothing). A template is text with the class name's place
    written `{c}` (Python's str.format): without it every class gets the same prompt and every image is
    predicted as class 0; `{0}`, `{x}` or an unbalanced brace fail when the prompt is made."""
    import string

    if not isinstance(template, str):
        return f"a template is text with {{c}} where the class name goes, e.g. '{TEMPLATE_EXAMPLE}'"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return (f"template {template!r} has an unbalanced brace: write the class name's place as {{c}} and a "
                "literal brace as {{ or }}")
    others = [f for f in fields if f != "c"]
    if others:
        return f"template {template!r} has {{{others[0]}}}: the only field is {{c}}, the class name"
    if "c" not in fields:
        return (f"template {template!r} has no {{c}}: every class would get the same prompt; write the class "
                f"name's place as {{c}}, e.g. '{TEMPLATE_EXAMPLE}'")
    try:
        template.format(c="x")
    except ValueError as err:
        return f"template {template!r} does not format ({err}): write the class name's place as {{c}}"
    return None


def templates_problem(templates: Any) -> Optional[str]:
    """What is wrong with a list of templates (None: nothing): one at least, each valid."""
    if not isinstance(templates, (list, tuple)) or not templates:
        return f"give at least one template, e.g. ['{TEMPLATE_EXAMPLE}']"
    return next((p for p in map(template_problem, templates) if p), None)


def prompt_key(text: str) -> str:
    """A prompt as CLIP's tokenizer reads it: HTML entities decoded, whitespace collapsed, lower case (open_clip's
    `SimpleTokenizer` and uncased text towers do this), so two prompts with one key give one text embedding."""
    import html

    return " ".join(html.unescape(html.unescape(text)).split()).lower()


def same_prompts(names: Sequence[str], templates: Sequence[Sequence[str]]) -> Optional[Tuple[str, str, str]]:
    """The first two classes (and their prompt) whose prompts read the same to the tokenizer, or None.
    `templates[k]`: the templates of class k."""
    seen: Dict[Tuple[str, ...], str] = {}
    for name, ts in zip(names, templates):
        key = tuple(prompt_key(t.format(c=name)) for t in ts)
        if key in seen:
            return seen[key], name, ts[0].format(c=name)
        seen[key] = name
    return None


def duplicate_classes_error(what: str, found: Tuple[str, str, str]) -> str:
    first, second, prompt = found
    return (f"{what}: classes {first!r} and {second!r} get the same prompt ({prompt!r}, as the tokenizer reads "
            "it: lower case, spaces collapsed), so one of them could never be predicted; rename or merge them "
            "(a dataset spec's `names:` renames classes)")


class ImageReader:
    """Opens item `k` of a collection as a PIL image. Subclasses are small and picklable, so decoding
    can run in worker processes; `identity()` names the collection for caches and fingerprints."""

    def open(self, item: Any):
        raise NotImplementedError

    def describe(self, item: Any) -> str:
        """The item as a user would find it (a file path), for error messages."""
        return str(item)

    def signature(self, items: Sequence[Any], digest: Any) -> None:
        """Feed `digest` (a hashlib object) with what the images of `items` depend on: a decoded-image
        cache keyed on it is reused only for the same images."""
        raise NotImplementedError


class FileReader(ImageReader):
    """Items are file paths, or (path, (x, y, w, h)) to crop a box first (COCO objects)."""

    def open(self, item: Any):
        from PIL import Image

        path, box = (item, None) if not isinstance(item, tuple) else item
        img = Image.open(path)
        if box is None:
            return img
        x, y, w, h = box
        with img:  # crop() reads the pixels; the file can close afterwards
            return img.crop((int(x), int(y), int(np.ceil(x + w)), int(np.ceil(y + h))))

    def describe(self, item: Any) -> str:
        return str(item if not isinstance(item, tuple) else item[0])

    def signature(self, items: Sequence[Any], digest: Any) -> None:
        """Each file's absolute path, crop box, size and modification time."""
        import os

        for item in items:
            path, box = (item, None) if not isinstance(item, tuple) else item
            try:
                st = os.stat(path)
                stat = f"{st.st_size} {st.st_mtime_ns}"
            except OSError:
                stat = "missing"
            # a file name that is not UTF-8 counts by its bytes
            digest.update(f"{os.path.abspath(path)}|{box}|{stat}\n".encode("utf-8", "surrogateescape"))


class ArrayReader(ImageReader):
    """Items index a uint8 array [N, H, W, 3] or [N, H, W] of raw pixels (CIFAR's pickles, MNIST)."""

    def __init__(self, pixels: np.ndarray, source: str):
        self.pixels, self.source = pixels, source

    def open(self, item: Any):
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.pixels[int(item)]))

    def describe(self, item: Any) -> str:
        return f"{self.source}[{item}]"

    def signature(self, items: Sequence[Any], digest: Any) -> None:
        """The selected images' own pixels."""
        index = np.asarray(list(items), dtype=np.int64)
        digest.update(index.tobytes())
        digest.update(np.ascontiguousarray(self.pixels[index]).tobytes())


class ImageSources:
    """Images not decoded yet: a reader and the items it opens, in order. Indexing with a slice, a
    boolean mask or integer positions selects items without decoding anything."""

    def __init__(self, reader: ImageReader, items: Sequence[Any]):
        self.reader, self.items = reader, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Any) -> "ImageSources":
        if isinstance(key, slice):
            return ImageSources(self.reader, self.items[key])
        index = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ImageSources(self.reader, [self.items[int(i)] for i in index.reshape(-1)])

    def open(self, k: int):
        return self.reader.open(self.items[k])

    def describe(self, k: int) -> str:
        return self.reader.describe(self.items[k])

    def update_signature(self, digest: Any) -> None:
        """Feed `digest` with what these images depend on (see `ImageReader.signature`)."""
        digest.update(f"{type(self.reader).__qualname__}:{len(self.items)}\n".encode())
        self.reader.signature(self.items, digest)

    @staticmethod
    def concat(parts: List["ImageSources"]) -> "ImageSources":
        if any(p.reader is not parts[0].reader for p in parts):
            raise ValueError("only sources of one reader can be joined before decoding")
        return ImageSources(parts[0].reader, [i for p in parts for i in p.items])


Images = Union[torch.Tensor, ImageSources]


class JoinedImages:
    """Several uint8 image tensors [N_k, 3, H, W] read as one, without copying them: a slice `[a:b]` is
    the same batch `torch.cat(parts)[a:b]` would give, copied only when it straddles two parts. So
    evaluating every test set in one pass keeps memory-mapped sets on disk instead of one copy in RAM."""

    def __init__(self, parts: Sequence[torch.Tensor]):
        self.parts = [p for p in parts if len(p)] or list(parts[:1])
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts]).tolist()
        self.dtype = self.parts[0].dtype if self.parts else torch.uint8
        self.shape = torch.Size([self.bounds[-1], *(self.parts[0].shape[1:] if self.parts else (3, 0, 0))])

    def __len__(self) -> int:
        return self.bounds[-1]

    def __getitem__(self, key: slice) -> torch.Tensor:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("JoinedImages takes contiguous slices only")
        start, stop, _ = key.indices(len(self))
        pieces = [p[max(start - lo, 0):min(stop, hi) - lo]
                  for p, lo, hi in zip(self.parts, self.bounds, self.bounds[1:]) if lo < stop and start < hi]
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat(pieces) if pieces else self.parts[0][:0]


def _check_images(images: Images) -> None:
    if isinstance(images, ImageSources):
        return
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [N, 3, H, W] or ImageSources, got {images.dtype} {tuple(images.shape)}")


@dataclass
class LabelledImages:
    """Images with one integer label each (labels index the owner's class-name list)."""

    images: Images  # uint8 [N, 3, H, W], or sources the runner decodes for the model
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        _check_images(self.images)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask_or_index: torch.Tensor) -> "LabelledImages":
        return LabelledImages(self.images[mask_or_index], self.labels[mask_or_index])

    @staticmethod
    def concat(parts: List["LabelledImages"]) -> "LabelledImages":
        """One set from several; decoded images are resized to the first part's size when they differ."""
        if isinstance(parts[0].images, ImageSources):
            return LabelledImages(ImageSources.concat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
        size = parts[0].images.shape[-2:]
        images = [p.images if p.images.shape[-2:] == size else
                  F.interpolate(p.images.float(), size=tuple(size), mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
                  for p in parts]
        return LabelledImages(torch.cat(images), torch.cat([p.labels for p in parts]))


@dataclass
class CaptionedImages:
    """Images with one or more captions each; `caption_image[k]` is the image of caption k.

    A reference set whose images and sentences come from different sources (ZSCL's ImageNet images and
    Conceptual Captions sentences) has `caption_image` None: its captions describe none of its images."""

    images: Images  # uint8 [N, 3, H, W], or sources the runner decodes for the model
    captions: List[str]
    caption_image: Optional[torch.Tensor]  # int64 [M]; None: images and sentences unpaired (reference sets only)
    folds: int = 1  # score recall on this many equal folds of images and average (COCO 5k as 5 x 1k)

    def __post_init__(self) -> None:
        _check_images(self.images)
        if self.caption_image is not None and len(self.captions) != len(self.caption_image):
            raise ValueError("captions and caption_image differ in length")


@dataclass
class ZeroShotSet:
    """A held-out classification set, scored zero-shot with its own class names and templates."""

    data: LabelledImages
    class_names: List[str]
    templates: List[str]


@dataclass
class Streams:
    """Everything one protocol run needs.

    Classes are numbered in the protocol's class order, so experience k holds the contiguous
    class ids `experience_classes[k]`; labels in `train`/`test` use those ids.
    """

    kind: str
    class_names: List[str]
    templates: List[str]
    train: List[LabelledImages]
    test: List[LabelledImages]
    experience_classes: List[List[int]]
    zeroshot_sets: Dict[str, ZeroShotSet] = field(default_factory=dict)
    retrieval_sets: Dict[str, CaptionedImages] = field(default_factory=dict)
    train_template: str = ""  # one training prompt for every class; "" = each class's first template
    # outside image-text data that replay/distillation methods may use (A-GEM's LAION subset, ZSCL's
    # reference images and sentences, DDAS's reference autoencoder); never used for evaluation. Builders over
    # real datasets load it only for a method that reads one (`Method.uses_reference`): the set declared for
    # that method (`references.<method>`, else `reference`)
    reference: Optional[CaptionedImages] = None
    # per class, its templates, where classes differ (MTIL: each dataset has its own); default `templates`
    class_templates: List[List[str]] = field(default_factory=list)
    # "all": every experience is scored over every class of the stream, seen or not, with no task id (RAIL's
    # X-TAIL); "" scores by `kind` (see `scored_classes`)
    scoring: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if not self.class_templates:
            self.class_templates = [list(self.templates) for _ in self.class_names]
            # one template list for every class: one training template too (what `train_template` always held)
            self.train_template = self.train_template or self.templates[0]
        if len(self.class_templates) != len(self.class_names):
            raise ValueError(f"{len(self.class_templates)} template lists for {len(self.class_names)} classes")
        expected = 0
        for classes in self.experience_classes:
            if classes != list(range(expected, expected + len(classes))):
                raise ValueError("experience classes must be contiguous ids in class order")
            expected += len(classes)

    @property
    def n_experiences(self) -> int:
        return len(self.train)

    def check(self, what: str) -> None:
        """Refuse streams that would give wrong metrics with no warning (one ClipbenchError line starting with
        `what`, e.g. "protocol 'x'"): an experience with no train or no test images (scored 0.0 and averaged
        into last/avg), a template without {c} or that does not format, two classes of one experience or of
        one zero-shot set whose prompts read the same, an empty held-out set, a caption that is empty."""
        from clipbench.errors import ClipbenchError

        if not (len(self.train) == len(self.test) == len(self.experience_classes)) or not self.train:
            raise ClipbenchError(f"{what}: {len(self.train)} train, {len(self.test)} test sets for "
                                 f"{len(self.experience_classes)} experiences; a stream needs one of each per experience")
        for templates in [*self.class_templates, [self.train_template] if self.train_template else []]:
            found = templates_problem(templates) if templates else None
            if found:
                raise ClipbenchError(f"{what}: {found}")
        for k, classes in enumerate(self.experience_classes):
            names = [self.class_names[c] for c in classes]
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            for split, data in (("train", self.train[k]), ("test", self.test[k])):
                if len(data) == 0:
                    raise ClipbenchError(f"{what}: experience {k + 1} (classes {shown}) has no {split} images, so it "
                                         "would be scored 0.0: add images to its classes, or change the split "
                                         "(test_fraction, train_per_class / test_per_class) or the class order")
            same = same_prompts(names, [self.class_templates[c] for c in classes])
            if same:
                raise ClipbenchError(duplicate_classes_error(f"{what}: experience {k + 1}", same))
        for name, zs in self.zeroshot_sets.items():
            found = templates_problem(zs.templates)
            if found:
                raise ClipbenchError(f"{what}: zero-shot set {name}: {found}")
            if len(zs.data) == 0:
                raise ClipbenchError(f"{what}: zero-shot set {name} has no images; check its files and split")
            same = same_prompts(zs.class_names, [zs.templates] * len(zs.class_names))
            if same:
                raise ClipbenchError(duplicate_classes_error(f"{what}: zero-shot set {name}", same))
        for name, cap in {**self.retrieval_sets, **({"reference": self.reference} if self.reference else {})}.items():
            # a reference set may hold images only, or sentences only (its parts come from separate sources)
            empty = (len(cap.images) == 0 and not cap.captions) if name == "reference" and cap.caption_image is None \
                else (len(cap.images) == 0 or not cap.captions)
            if empty:
                raise ClipbenchError(f"{what}: {'' if name == 'reference' else 'retrieval set '}{name} has no "
                                     "images or no captions; check its files and split")
            empty = next((k for k, c in enumerate(cap.captions) if not str(c).strip()), None)
            if empty is not None:
                raise ClipbenchError(f"{what}: {'' if name == 'reference' else 'retrieval set '}{name}: caption "
                                     f"{empty + 1} is empty; give every image a caption or drop the row")

    def train_templates(self) -> List[str]:
        """Per class, the template its training prompt uses: the protocol's `train_template`, else the
        class's first template (as CLIP's and ZSCL's code train with one prompt per class)."""
        return [self.train_template or templates[0] for templates in self.class_templates]

    def train_prompts(self) -> List[str]:
        """Per class, its training prompt."""
        return [t.format(c=c) for t, c in zip(self.train_templates(), self.class_names)]

    def scored_classes(self, row: int, exp: int) -> Tuple[int, int]:
        """The class-id range [lo, hi) over which experience `exp` is scored in accuracy-matrix row `row`.

        Row 0 is before training; row i follows training on experiences 0..i-1. Class-incremental:
        every class seen so far, counting experience `exp` itself (so rows before an experience
        score it against the classes known up to it). Task-incremental: the task's own classes.
        With `scoring` "all": every class of the stream, in every row.
        """
        if self.scoring == "all":
            return 0, len(self.class_names)
        if self.kind == "task_incremental":
            classes = self.experience_classes[exp]
            return classes[0], classes[-1] + 1
        last = max(row - 1, exp)
        return 0, self.experience_classes[last][-1] + 1
