"""The only door to Avalanche (0.x; its API has moved before). Everything else imports from here.

Paths used, each exercised by the tests: `SupervisedPlugin`, `SupervisedTemplate`,
`EvaluationPlugin` (empty: metrics are computed from records, never in callbacks), and a
classification dataset built with `_make_taskaware_classification_dataset` (exported in
Avalanche's `__all__`) wrapped into experiences by `benchmark_from_datasets`. The newer
`class_incremental_benchmark` is not used: its streams lack task labels that plugins expect.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset
    from avalanche.core import SupervisedPlugin
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

import torch
from torch.utils.data import Dataset


class _UInt8Images(Dataset):
    """(uint8 image, label) pairs; the model normalises whole batches, so no per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def make_experience(images: torch.Tensor, labels: torch.Tensor, index: int):
    """One Avalanche training experience over uint8 images and integer labels (task label 0)."""
    dataset = _make_taskaware_classification_dataset(
        _UInt8Images(images, labels), task_labels=0, targets=labels.tolist()
    )
    scenario = benchmark_from_datasets(train=[dataset])
    experience = scenario.train_stream[0]
    experience.current_experience = index
    return experience


__all__ = ["SupervisedPlugin", "SupervisedTemplate", "EvaluationPlugin", "make_experience"]
