"""The only door to Avalanche (0.x; its API has moved before). Everything else imports from here.

Paths used, each exercised by the tests: `SupervisedPlugin`, `SupervisedTemplate` (subclassed as
`Template` to feed mini-batches sliced straight from the uint8 tensors, through the
`make_train_dataloader` hook Avalanche documents for this), `EvaluationPlugin` (empty: metrics are
computed from records, never in callbacks; with `--log`, the training loss and accuracy for
Avalanche's loggers, see `TrainingLog`), and a classification dataset built with
`_make_taskaware_classification_dataset` (exported in Avalanche's `__all__`) wrapped into
experiences by `benchmark_from_datasets`. The newer `class_incremental_benchmark` is not used: its
streams lack task labels that plugins expect.
"""

from __future__ import annotations

import importlib.util
import itertools
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch.utils.data import Dataset

from .errors import ClipbenchError, unknown_name_error
from .feed import DeviceFeeder


class _UInt8Images(Dataset):
    """(uint8 image, label) pairs, for Avalanche's dataset API (plugins may read `experience.dataset`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


class TensorBatches:
    """Shuffled mini-batches `[images, labels, task labels]` sliced from whole tensors.

    Replaces Avalanche's task-balanced loader, which indexes and collates one sample at a time.
    One `torch.randperm` per pass over the data from torch's global generator, so the order is fixed
    by the run's seed. One iteration is one pass, or exactly `batches` batches when given (passes
    follow each other, each freshly shuffled, the last cut short: ZSCL's iteration-counted loop).
    `transform` (train-time augmentation) is applied to each batch of images. Batches are gathered for
    `device` (`clipbench.feed`: on a GPU into pinned memory, copied asynchronously; on the CPU as they are).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = True,
                 batches: Optional[int] = None, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 device: str | torch.device = "cpu"):
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.batches, self.transform, self.device = batches, transform, device

    def __len__(self) -> int:
        return self.batches if self.batches is not None else -(-len(self.labels) // self.batch_size)

    def _one_pass(self):
        n = len(self.labels)
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            yield order[start:start + self.batch_size]

    def __iter__(self):
        if not len(self.labels):
            return
        # with `batches`, pass after pass (each shuffled when reached) until that many batches
        passes = itertools.chain.from_iterable(iter(self._one_pass, None)) if self.batches is not None else self._one_pass()
        size = min(self.batch_size, len(self.labels))
        images_in = DeviceFeeder(self.device, size, self.images.shape[1:], self.images.dtype)
        labels_in = DeviceFeeder(self.device, size, (), self.labels.dtype)
        for index in itertools.islice(passes, len(self)):
            images = images_in.gather(self.images, index)
            if self.transform is not None:
                images = self.transform(images)
            # task labels made where they are used: a pageable copy per batch would wait for the device
            yield [images, labels_in.gather(self.labels, index), torch.zeros(len(index), dtype=torch.long,
                                                                              device=images_in.device)]


class Template(SupervisedTemplate):
    """Avalanche's supervised template, fed by `TensorBatches` over the experience's tensors, and
    keeping the optimizer it is given (both hooks Avalanche documents for overriding).

    `batches`: exactly this many training iterations per epoch (None: one pass over the data);
    `transform`: train-time augmentation of each batch of images."""

    def __init__(self, *, batches: Optional[int] = None,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, **kwargs):
        self.batches, self.transform = batches, transform
        super().__init__(**kwargs)

    def make_train_dataloader(self, shuffle: bool = True, **kwargs):
        images, labels = self.experience.tensors
        self.dataloader = TensorBatches(images, labels, self.train_mb_size, shuffle, self.batches, self.transform,
                                        self.device)

    def criterion(self):
        # a criterion that knows the experience's labels scores the step's own batch without host syncs
        for_batch = getattr(self._criterion, "for_batch", None)
        return for_batch(self.mb_output, self.mb_y) if for_batch else self._criterion(self.mb_output, self.mb_y)

    def make_optimizer(self, **kwargs):
        # The engine builds a fresh optimizer over the trainable parameters for every experience.
        # Avalanche's default would put every model parameter into it, frozen towers included,
        # for the optimizer to walk past at every step.
        pass


def make_experience(images: torch.Tensor, labels: torch.Tensor, index: int):
    """One Avalanche training experience over uint8 images and integer labels (task label 0).

    Plugins see a regular Avalanche experience (`dataset`, `classes_in_this_experience`,
    `current_experience`); `tensors` holds the images and labels `Template` slices batches from.
    """
    dataset = _make_taskaware_classification_dataset(
        _UInt8Images(images, labels), task_labels=0, targets=labels.tolist()
    )
    scenario = benchmark_from_datasets(train=[dataset])
    experience = scenario.train_stream[0]
    experience.current_experience = index
    experience.tensors = (images, labels)
    return experience


# `--log` names -> the package each needs beyond Avalanche
LOGGERS: Dict[str, Optional[str]] = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb"}


def parse_log(text: str) -> Tuple[str, ...]:
    """`--log tensorboard,csv` -> ("tensorboard", "csv"); an unknown name or a logger whose package is
    not installed fails in one line."""
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds:
        raise ClipbenchError(f"--log: name one or more of {', '.join(LOGGERS)}, comma-separated")
    for kind in kinds:
        if kind not in LOGGERS:
            raise ClipbenchError(f"--log: {unknown_name_error('logger', kind, LOGGERS)}")
        package = LOGGERS[kind]
        if package and importlib.util.find_spec(package) is None:
            raise ClipbenchError(f"--log {kind} needs the package '{package}', which is not installed: "
                                 f"pip install {package}")
    return kinds


class TrainingLog:
    """Avalanche's loggers for one run, writing under `folder` (`csv/training_results.csv` with each epoch's
    training loss and accuracy; `tensorboard/` event files with the loss of every mini-batch and epoch;
    W&B under `wandb/`, synced as your W&B settings say). Steps count training iterations across the
    run's experiences (Avalanche's clock restarts with each experience's strategy, so it is advanced
    here), kept in `folder/step` so a resumed run continues its curves. For watching training only:
    the results are the records'."""

    def __init__(self, kinds: Sequence[str], folder: Path, run_name: str, config: Dict[str, Any]):
        from avalanche.logging import CSVLogger

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.loggers = folder, []
        self._closers: List[Callable[[], Any]] = []
        self.step = int((folder / "step").read_text()) if (folder / "step").is_file() else 0
        if "csv" in kinds:
            # CSVLogger starts its files afresh: keep the rows of a run's earlier attempts
            old = folder / "csv" / "training_results.csv"
            rows = old.read_text().splitlines()[1:] if old.is_file() else []
            csv = CSVLogger(str(folder / "csv"))
            if rows:
                print(*rows, sep="\n", file=csv.training_file, flush=True)
            self.loggers.append(csv)
            self._closers.append(csv.close)
        if "tensorboard" in kinds:
            from avalanche.logging import TensorboardLogger

            board = TensorboardLogger(folder / "tensorboard")
            self.loggers.append(board)
            self._closers.append(board.writer.close)
        if "wandb" in kinds:
            from avalanche.logging import WandBLogger

            (folder / "wandb").mkdir(exist_ok=True)
            # our own run id: Avalanche 0.6 would call wandb.util.generate_id, gone from newer wandb; kept
            # in the folder, so a resumed run continues its W&B run
            id_file = folder / "wandb" / "run_id"
            run_id = id_file.read_text() if id_file.is_file() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            wandb = WandBLogger(project_name="clipbench", run_name=run_name, dir=str(folder / "wandb"),
                                config=config, save_code=False, params={"id": run_id, "resume": "allow"})
            self.loggers.append(wandb)
            self._closers.append(wandb.wandb.finish)

    def plugin(self) -> EvaluationPlugin:
        """The evaluation plugin of one experience's strategy: training loss and accuracy to the loggers."""
        from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics

        return EvaluationPlugin(loss_metrics(minibatch=True, epoch=True), accuracy_metrics(epoch=True),
                                loggers=self.loggers)

    def start(self, strategy: SupervisedTemplate, index: int) -> None:
        """Before training experience `index`: the run's clock, not the fresh strategy's."""
        strategy.clock.train_iterations, strategy.clock.train_exp_counter = self.step, index

    def finish(self, strategy: SupervisedTemplate) -> None:
        self.step = strategy.clock.train_iterations
        (self.folder / "step").write_text(str(self.step))

    def close(self) -> None:
        for close in self._closers:
            close()


__all__ = ["SupervisedPlugin", "SupervisedTemplate", "Template", "TensorBatches", "EvaluationPlugin",
           "make_experience", "LOGGERS", "parse_log", "TrainingLog"]
