"""Class-incremental and few-shot splits for the continual-learning methods.

All splits are pure functions of their arguments: the class order and the chosen shots come from a generator seeded
by ``seed`` alone, so every process and every run sees the same tasks.
"""

from __future__ import annotations

import torch


def class_order(num_classes: int, seed: int) -> list[int]:
    """A fixed, seeded permutation of ``range(num_classes)`` (``seed`` < 0: the identity order)."""
    if seed < 0:
        return list(range(num_classes))
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()


def class_incremental_tasks(num_classes: int, classes_per_task: int, seed: int = 1993,
                            first_task_classes: int | None = None) -> list[list[int]]:
    """Split the classes into tasks: ``first_task_classes`` (default ``classes_per_task``) classes, then
    ``classes_per_task`` at a time, in the order of :func:`class_order`. Tasks are disjoint and cover every class.
    (1993 is the customary class-order seed of class-incremental CIFAR-100 benchmarks.)"""
    first = classes_per_task if first_task_classes is None else first_task_classes
    if classes_per_task < 1 or first < 1:
        raise ValueError(f"classes_per_task and first_task_classes must be >= 1, got {classes_per_task}, {first}")
    if (num_classes - first) % classes_per_task or first > num_classes:
        raise ValueError(f"{num_classes} classes do not split into a first task of {first} and tasks of "
                         f"{classes_per_task}")
    order = class_order(num_classes, seed)
    tasks = [order[:first]]
    tasks += [order[i:i + classes_per_task] for i in range(first, num_classes, classes_per_task)]
    return tasks


def indices_of_classes(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Indices (ascending) of the samples whose label is in ``classes``."""
    return torch.isin(labels, torch.tensor(classes, device=labels.device)).nonzero().flatten()


def few_shot_indices(labels: torch.Tensor, classes: list[int], shots: int, seed: int) -> torch.Tensor:
    """``shots`` samples of each class in ``classes``, drawn without replacement by a generator seeded by
    ``(seed, class)``; sorted by class then draw. A class with fewer than ``shots`` samples is an error."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    picked = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        if len(idx) < shots:
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than shots={shots}")
        g = torch.Generator().manual_seed(seed * 100_003 + c)
        picked.append(idx[torch.randperm(len(idx), generator=g)[:shots].to(idx.device)])
    return torch.cat(picked)
