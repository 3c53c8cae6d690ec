"""MagMax: sequential fine-tuning merged by maximum magnitude (Marczak et al., ECCV 2024)."""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch

from .base import Method, MethodConfig, register_method
from .toolkit import State, load_into, snapshot


def keep_larger(merged: Optional[State], task_vector: State) -> State:
    """Fold one more task vector into a max-magnitude merge: per element, the entry of larger absolute
    value, the newer one on ties (the code's `torch.where(new.abs() >= merged.abs(), new, merged)`)."""
    if merged is None:
        return {k: v.clone() for k, v in task_vector.items()}
    return {k: torch.where(task_vector[k].abs() >= merged[k].abs(), task_vector[k], merged[k]) for k in merged}


def max_magnitude_merge(task_vectors: Sequence[State]) -> State:
    """`merge_max_abs` over task vectors in task order."""
    merged: Optional[State] = None
    for tv in task_vectors:
        merged = keep_larger(merged, tv)
    assert merged is not None, "max_magnitude_merge needs at least one task vector"
    return merged


def apply_task_vector(pretrained: State, vector: State, scaling: float) -> State:
    """theta_0 + scaling * vector (the code's `TaskVector.apply_to`)."""
    return {k: pretrained[k] + scaling * vector[k] for k in pretrained}


@dataclass
class MagMaxConfig(MethodConfig):
    part: str = "image"  # the code fine-tunes the image encoder, text frozen (`freeze_lang`)
    scaling: float = 0.5  # lambda of theta_0 + lambda * merged (merge_splitted.py: merge_max_abs at 0.5)


@register_method
class MagMax(Method):
    """MagMax (Marczak et al., ECCV 2024; code: danielm1405/magmax at 4f49f18, `finetune_splitted.py`,
    `merge_splitted.py`, `src/merging/task_vectors.py`).

    Train the image encoder (text frozen) on task t starting from the sequentially fine-tuned weights
    theta_{t-1} (`--sequential-finetuning` loads `finetuned_{t-1}.pt`, never a merged model); form the
    task vector tau_t = theta_t - theta_0; merge tau_1..tau_t element by element keeping the entry of
    largest magnitude (`merge_max_abs`: `>=`, so a later task wins a tie); evaluate
    theta_0 + lambda * merged with lambda = 0.5 (`search_evaluate_merging`). Here the merge happens
    after every experience, so each row of the accuracy matrix is the merged model of the tasks so far
    (the code's `evaluate_merged_fts`); the next experience trains from theta_t again. The running
    merge equals `merge_max_abs` over all task vectors so far (the same fold, element by element).
    What is kept between experiences (and checkpointed, so a resumed run ends with identical numbers):
    theta_0 (taken at `setup`, before any training), theta_t and the running merge.

    On the mini model (frozen towers) the image part that trains is the image projection
    (1280 -> 256): MagMax fine-tunes and merges that layer alone.

    Departures: the code trains against a zero-shot head built with all of a dataset's templates;
    here the protocol's training template gives the class embeddings, as for every method.

    Recipe (`train_defaults`, and the suites' `recipes:` with `recipe: reference`): `src/args.py` and
    `finetune_splitted.py`: AdamW, lr 1e-5 and batch 128 (set in `__main__`), weight decay 0.1, 10 epochs
    (`scripts/CIL/all.sh` for CIFAR-100), `cosine_lr` with 500 warm-up steps, `clip_grad_norm_(params, 1.0)`,
    no label smoothing (`--ls 0`), and open_clip's train transform, RandomResizedCrop(scale 0.9-1, bicubic),
    which is `augment: zscl`. MagMax ran CIFAR-100 (`cil_cifar100`: its own recipe there), never MTIL or
    TinyImageNet: there it keeps this one recipe, recorded as source `method`. Its CIFAR-100 class order
    (`default_class_order` in `src/datasets/cifar100.py`) is not the protocol's iCaRL order.
    """

    name = "magmax"
    version = 1
    Config = MagMaxConfig
    # finetune_splitted.py / src/args.py: AdamW, lr 1e-5, wd 0.1, batch 128, 10 epochs (CIL scripts);
    # each split's head covers its own classes, hence cross-entropy over the current experience's classes.
    # The code's `cosine_lr(optimizer, lr, warmup_length=500, epochs * batches)`, fresh per task, and
    # `clip_grad_norm_(params, 1.0)`.
    train_defaults = {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.1, "batch_size": 128, "epochs": 10,
                      "ce_classes": "current", "schedule": "cosine", "warmup_steps": 500, "grad_clip": 1.0}

    def setup(self, model, streams) -> None:
        self.pretrained = snapshot(model, self.trainable_parameters(model))
        self.merged: Optional[State] = None  # max-magnitude merge of the task vectors so far
        self.sequential: Optional[State] = None  # theta_t: where the next experience starts

    def inference_extras(self) -> str:
        return ""  # one model at inference: theta_0 + lambda * merged

    def before_training_exp(self, strategy, **kwargs):
        if self.sequential is not None:  # the model holds the merged weights that were evaluated
            load_into(strategy.model, self.sequential)
            strategy.model.invalidate_text_cache()

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        self.sequential = snapshot(model, self.trainable_parameters(model))
        task_vector = {k: v - self.pretrained[k] for k, v in self.sequential.items()}
        self.merged = keep_larger(self.merged, task_vector)
        load_into(model, apply_task_vector(self.pretrained, self.merged, self.config.scaling))
        model.invalidate_text_cache()

    def state_dict(self) -> Dict[str, Any]:
        return {"merged": self.merged, "sequential": self.sequential}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.merged, self.sequential = state["merged"], state["sequential"]
