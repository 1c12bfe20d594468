"""Fine-tunes with added tokens: embedding and output-head rows beyond the base's.

A tensor is a *vocabulary tensor* when it is 1-D or 2-D and some fine-tune has
more rows (dim 0) than the base, with the same trailing dims. The config's
``vocab`` key says what happens to the extra rows (see docs/config.md):

- ``base``: every fine-tune is read with the base's rows only; the report says how
  many rows were dropped per model. The base's tokenizer files still match.
- ``union``: the output keeps every appended row. Each appended id must mean the
  same token in every model that has it (read from the models' tokenizer files),
  else the merge is refused naming the tokens. Shared rows are merged by the
  recipe as usual. For an appended row the base side is the weighted mean of the
  rows of the models that have the token, and each of those models' task vector
  is its deviation from that mean (the others' is zero): one owner's row comes out
  unchanged, and several owners' deviations are merged by the recipe (plain or
  weighted averages give their mean). The output gets the tokenizer files of
  the model with the most rows and a config.json whose ``vocab_size`` matches.

Token ids are never renumbered: pactframe does not permute embeddings the way
mergekit's ``tokenizer_source: union`` does for models whose tokenizers differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from pactframe.errors import CheckpointError, InputError
from pactframe.io.reader import TensorInfo, read_json_in_folder
from pactframe.safetensors_header import shown

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
)


def vocab_tensors(base: Any, models: Sequence[Any]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """``{key: (base rows, rows per model)}`` for every vocabulary tensor."""
    out = {}
    for key in base.keys():
        b = base.info(key)
        if len(b.shape) not in (1, 2):
            continue
        rows = []
        for m in models:
            if key not in m.keys():
                break
            info = m.info(key)
            if len(info.shape) != len(b.shape) or info.shape[1:] != b.shape[1:]:
                break
            rows.append(info.shape[0])
        else:
            if any(r > b.shape[0] for r in rows):
                out[key] = (b.shape[0], tuple(rows))
    return out


_MAX_TOKENIZER_BYTES = 256 * 2**20


def _read_tokenizer_json(folder: Path, name: str) -> dict[str, Any]:
    """A tokenizer file of ``folder``, read as the checkpoint files are
    (:func:`pactframe.io.reader.read_json_in_folder`)."""
    return read_json_in_folder(
        folder,
        name,
        what=f"The tokenizer file of {str(folder)!r}",
        max_bytes=_MAX_TOKENIZER_BYTES,
        fix="Replace it with the tokenizer saved by the model's training run (vocab: union "
        "identifies added rows through it).",
    )


def _token_map(path_label: str, pairs: Any) -> dict[int, str]:
    """``{id: token}`` from ``(token, id)`` pairs, refusing ids that are not
    non-negative ints and tokens that are not strings."""
    out: dict[int, str] = {}
    for token, idx in pairs:
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0 or not isinstance(
            token, str
        ):
            raise CheckpointError(
                f"The tokenizer file {path_label} maps {shown(token)} to {shown(idx)}; a "
                "vocabulary entry is a string token with a non-negative integer id. Replace "
                "the file with the tokenizer saved by the model's training run."
            )
        out[idx] = token
    return out


def read_added_tokens(folder: Path) -> dict[int, str] | None:
    """``{id: token}`` of a model folder's tokenizer files (``tokenizer.json``, else
    ``added_tokens.json``); ``None`` when the folder has neither. Malformed files,
    and files that lead out of the folder, are :class:`CheckpointError`."""
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer.json").is_symlink():
        label = repr(str(folder / "tokenizer.json"))
        data = _read_tokenizer_json(folder, "tokenizer.json")
        model = data.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        tokens: dict[int, str] = {}
        if isinstance(vocab, Mapping):
            tokens.update(_token_map(label, vocab.items()))
        elif isinstance(vocab, list):  # unigram: [[piece, score], ...]
            pieces = [(v[0] if isinstance(v, list) and v else v, i) for i, v in enumerate(vocab)]
            tokens.update(_token_map(label, pieces))
        added = data.get("added_tokens") or []
        if not isinstance(added, list) or not all(isinstance(a, dict) for a in added):
            raise CheckpointError(
                f"The tokenizer file {label}: 'added_tokens' must be a list of objects with "
                f"'id' and 'content'; got {shown(added)}."
            )
        tokens.update(_token_map(label, ((a.get("content"), a.get("id")) for a in added)))
        return tokens
    if (folder / "added_tokens.json").exists() or (folder / "added_tokens.json").is_symlink():
        label = repr(str(folder / "added_tokens.json"))
        data = _read_tokenizer_json(folder, "added_tokens.json")
        return _token_map(label, data.items())
    return None


class _RowsSource:
    """A tensor source whose vocabulary tensors are cut or extended to ``rows``."""

    def __init__(self, inner: Any, rows: Mapping[str, int], fill: Any = None) -> None:
        self.inner = inner
        self.label = inner.label
        self.rows = dict(rows)
        self.fill = fill  # fill(key, start) -> rows start..rows[key]-1 appended to the inner tensor
        self.fresh = getattr(inner, "fresh", False)

    def keys(self) -> list[str]:
        return self.inner.keys()

    def info(self, key: str) -> TensorInfo:
        info = self.inner.info(key)
        if key not in self.rows:
            return info
        shape = (self.rows[key], *info.shape[1:])
        per_row = info.nbytes // max(info.shape[0], 1)
        return attrs.evolve(info, shape=shape, nbytes=per_row * shape[0])

    def load(self, key: str) -> torch.Tensor:
        tensor = self.inner.load(key)
        if key not in self.rows:
            return tensor
        want = self.rows[key]
        if tensor.shape[0] >= want:
            return tensor[:want].clone()
        assert self.fill is not None
        extra = self.fill(key, tensor.shape[0])
        return torch.cat([tensor, extra.to(tensor.dtype)], dim=0)


@attrs.define
class VocabResult:
    """What the vocabulary handling did: report notes and the files the output needs."""

    mode: str
    notes: list[str]
    tokenizer_folder: Path | None = None
    base_config: Path | None = None
    vocab_size: int | None = None
    copy_files: bool = True

    def write_files(self, writer: Any) -> None:
        """Tokenizer files and config.json matching the output rows (``union`` only)."""
        if self.mode != "union" or not self.copy_files or self.tokenizer_folder is None:
            return
        for name in TOKENIZER_FILES:
            path = self.tokenizer_folder / name
            if path.is_file():
                writer.copy_file(path)
        if self.base_config is not None and self.base_config.is_file():
            config = json.loads(self.base_config.read_text(encoding="utf-8"))
            if isinstance(config, dict) and "vocab_size" in config and self.vocab_size:
                config["vocab_size"] = self.vocab_size
                writer.add_file("config.json", json.dumps(config, indent=2) + "\n")


def apply_vocab(spec: Any, sources: Any) -> tuple[Any, VocabResult | None]:
    """Sources whose vocabulary tensors have consistent rows, per ``spec.vocab``."""
    if spec.vocab is None:
        return sources, None
    tensors = vocab_tensors(sources.base, sources.models)
    names = spec.task_names
    notes: list[str] = []
    if not tensors:
        return sources, VocabResult(spec.vocab, [f"vocab: {spec.vocab}: no model adds rows"])
    if spec.vocab == "base":
        models = []
        for t, (task, model) in enumerate(zip(names, sources.models)):
            cut = {k: base_rows for k, (base_rows, rows) in tensors.items() if rows[t] > base_rows}
            if cut:
                dropped = max(tensors[k][1][t] - tensors[k][0] for k in cut)
                notes.append(
                    f"vocab: base: dropped {dropped} added row(s) of model {task!r} in "
                    f"{', '.join(sorted(cut))}"
                )
                model = _RowsSource(model, cut)
            models.append(model)
        return attrs.evolve(sources, models=tuple(models)), VocabResult("base", notes)
    return _union(spec, sources, tensors, notes)


def _union(
    spec: Any, sources: Any, tensors: dict[str, tuple[int, tuple[int, ...]]], notes: list[str]
) -> tuple[Any, VocabResult]:
    names = spec.task_names
    total_rows = max(max(rows) for _, rows in tensors.values())
    base_rows = min(b for b, _ in tensors.values())
    widest = max(range(len(names)), key=lambda t: max(rows[t] for _, rows in tensors.values()))
    model_rows = [max(rows[t] for _, rows in tensors.values()) for t in range(len(names))]
    vocabularies: list[dict[int, str] | None] = []
    for t, m in enumerate(spec.models):
        if model_rows[t] <= base_rows:
            vocabularies.append(None)
            continue
        tokens = read_added_tokens(Path(m.path)) if Path(m.path).is_dir() else None
        if tokens is None:
            raise InputError(
                f"vocab: union: model {m.name!r} ({m.path}) has {model_rows[t]} embedding rows "
                f"where the base has {base_rows}, but no tokenizer.json or added_tokens.json "
                "names the added tokens. Add its tokenizer files, or set vocab: base."
            )
        vocabularies.append(tokens)
    conflicts = []
    for token_id in range(base_rows, total_rows):
        seen: dict[str, list[str]] = {}
        for t, tokens in enumerate(vocabularies):
            if tokens is None or model_rows[t] <= token_id:
                continue
            token = tokens.get(token_id, f"<row {token_id} with no token>")
            seen.setdefault(token, []).append(names[t])
        if len(seen) > 1:
            said = ", ".join(f"{tok!r} in {', '.join(who)}" for tok, who in seen.items())
            conflicts.append(f"id {token_id}: {said}")
    if conflicts:
        shown = "; ".join(conflicts[:10]) + (
            f"; ... ({len(conflicts) - 10} more)" if len(conflicts) > 10 else ""
        )
        raise InputError(
            f"vocab: union: the models add different tokens at the same id ({shown}). pactframe "
            "does not renumber tokens: merge models whose added tokens agree, or set vocab: base."
        )
    weights = spec.task_weights or (1.0,) * len(names)
    cache: dict[str, torch.Tensor] = {}

    def added_rows(key: str, start: int) -> torch.Tensor:
        """Rows base_rows..R-1 of tensor ``key``: the weighted mean over the owners."""
        if key not in cache:
            cache.clear()
            b_rows, rows = tensors[key]
            target = max(rows)
            total: torch.Tensor | None = None
            weight = torch.zeros(target - b_rows, dtype=torch.float64)
            for t, model in enumerate(sources.models):
                if rows[t] <= b_rows:
                    continue
                part = model.load(key)[b_rows:].to(torch.float64)
                padded = torch.zeros((target - b_rows, *part.shape[1:]), dtype=torch.float64)
                padded[: part.shape[0]] = part * weights[t]
                weight[: part.shape[0]] += weights[t]
                total = padded if total is None else total + padded
            assert total is not None
            shape = (-1,) + (1,) * (total.ndim - 1)
            cache[key] = total / weight.clamp(min=1e-12).reshape(shape)
        return cache[key][start - tensors[key][0] :]

    target_rows = {k: max(rows) for k, (_, rows) in tensors.items()}
    base = _RowsSource(sources.base, target_rows, fill=added_rows)
    models = []
    for t, model in enumerate(sources.models):
        pad = {k: target_rows[k] for k, (_, rows) in tensors.items() if rows[t] < target_rows[k]}
        if pad:
            model = _RowsSource(model, pad, fill=_pad_from(base))
        models.append(model)
    added = total_rows - base_rows
    notes.append(
        f"vocab: union: kept {added} added row(s) (ids {base_rows}..{total_rows - 1}) in "
        f"{', '.join(sorted(tensors))}; tokenizer files from model {names[widest]!r}"
    )
    base_folder = Path(spec.base)
    result = VocabResult(
        "union",
        notes,
        tokenizer_folder=Path(spec.models[widest].path),
        base_config=base_folder / "config.json" if base_folder.is_dir() else None,
        vocab_size=total_rows,
        copy_files=spec.output.copy_files,
    )
    return attrs.evolve(sources, base=base, models=tuple(models)), result


def _pad_from(base: _RowsSource) -> Any:
    """Rows a model lacks are the (extended) base's rows: a zero task vector there."""

    def rows(key: str, start: int) -> torch.Tensor:
        return base.load(key)[start:]

    return rows
