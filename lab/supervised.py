"""The supervised comparison for a label-free student: the same pruned student trained with labels.

The label-free student learns on the edge's images from the teacher's targets alone. What would
the same pruned network reach had the edge images come with labels? `train_supervised` answers it
on one student file: the masks stay fixed (the LNPT-pruned network is unchanged), cross-entropy on
the labels, the optimizer, learning rate, weight decay, batch size and epochs of the [train]
section (cosine schedule, no augmentation), then top-1 accuracy on a held-out labeled set.
`lnpt demo --dataset elpv` and docs/recipes/elpv.sh both use it.

    >>> from lnpt.lab.supervised import train_supervised
    >>> train_supervised("student.pt", "data/edge_labels.csv", "data/test", epochs=10)["accuracy"]  # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any

import torch

from lnpt.edge.evaluation import labeled_folder
from lnpt.edge.student import load_student
from lnpt.lab.paper.experiment import Recipe, train
from lnpt.shared.config import Config
from lnpt.shared.inference import outputs, top1
from lnpt.shared.objectives import CrossEntropy, Targets


def train_supervised(student: str | os.PathLike, labeled: str | os.PathLike, test: str | os.PathLike, *,
                     epochs: int, config: Config | None = None, seed: int = 0) -> dict[str, Any]:
    """Train the pruned `student` file with the labels of `labeled` and measure it on `test`.

    labeled  the edge images with their labels: a folder of class sub-folders or a path,label .csv
    test     held-out labeled images (folder or .csv), read with the student's recorded preprocessing
    config   [train] gives the recipe (epochs excepted), [data] the workers, bad-file policy and CSV columns

    Returns the test accuracy, the test set's majority-class share (what always answering the
    commonest class scores) and the sample counts. The student file is only read.
    """
    config = config or Config()
    torch.manual_seed(seed)
    model, record = load_student(student)
    images, labels = labeled_folder(labeled, record.preprocess, record.class_names, config.data)
    tc = config.train
    recipe = Recipe(epochs=epochs, batch_size=tc.batch_size, optimizer=tc.optimizer, lr=tc.lr, momentum=tc.momentum,
                    weight_decay=tc.weight_decay)
    losses = train(model, record.input_spec, images, Targets(labels=labels), CrossEntropy(), recipe, seed=seed)
    test_images, test_labels = labeled_folder(test, record.preprocess, record.class_names, config.data)
    accuracy = top1(outputs(model, test_images, record.input_spec)[1], test_labels)
    majority = float(torch.bincount(test_labels).max()) / len(test_labels)
    return {"accuracy": accuracy, "majority_class_share": majority, "train_samples": len(labels),
            "test_samples": len(test_labels), "epochs": epochs, "epoch_losses": losses,
            "recipe": {"optimizer": tc.optimizer, "lr": tc.lr, "momentum": tc.momentum,
                       "weight_decay": tc.weight_decay, "batch_size": tc.batch_size, "schedule": "cosine",
                       "augment": False}}
