"""``pactframe collect-covariance``: write a task model's input covariances for PAVE.

Two ways to name the model and the data (give them a task's TRAIN or
VALIDATION samples, never its test split):

- ``--factory MODULE:FUNCTION`` (or ``path/to/file.py:FUNCTION``): a function
  you write that returns ``(model, batches)``: the fine-tuned ``nn.Module`` and
  an iterable of inputs for its forward (tensor, tuple or dict of kwargs).
  ``--factory-arg KEY=VALUE`` (repeatable) passes string keyword arguments.
- ``--hf-model PATH --text-file FILE`` (needs ``transformers``): loads the
  checkpoint with the architecture class named in its ``config.json`` (so the
  covariance keys are the checkpoint's state-dict keys) and its tokenizer, and
  feeds the file's non-empty lines, ``--batch-size`` at a time (default 1: no
  padding tokens), truncated to ``--max-length`` tokens.

The file is written atomically (``--output``; an existing file is kept unless
``--force``) in the format of :mod:`pactframe.covariance_io`, and a summary,
including every weight that could not be captured and why, is printed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pactframe.errors import ConfigError, InputError

help = (
    "collect the input covariances X^T X / N of a fine-tuned model's linear weights for PAVE, "
    "from its task's train or validation data (never the test split)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model and data (one of)")
    source.add_argument(
        "--factory",
        metavar="MODULE:FUNCTION",
        help="function returning (model, batches); MODULE may be a dotted name or a .py path",
    )
    source.add_argument(
        "--factory-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument (a string) for the factory; repeatable",
    )
    source.add_argument("--hf-model", metavar="PATH", help="Hugging Face checkpoint folder or id")
    source.add_argument("--text-file", metavar="FILE", help="with --hf-model: one example per line")
    source.add_argument("--hf-class", help="with --hf-model: transformers class to load with")
    source.add_argument("--batch-size", type=int, default=1, help="with --text-file (default 1)")
    source.add_argument(
        "--max-length", type=int, default=512, help="with --text-file (default 512)"
    )
    parser.add_argument(
        "--output", "-o", required=True, help="covariance file to write (.safetensors)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--include", metavar="REGEX", help="only weight keys matching this")
    parser.add_argument("--exclude", metavar="REGEX", help="skip weight keys matching this")
    parser.add_argument(
        "--max-tokens", type=int, metavar="N", help="at most N token rows per weight"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default=None, help="move model and batches here (e.g. cuda)")
    parser.add_argument("--source", help="free text stored in the file (model, split, batches)")
    parser.add_argument(
        "--adapter",
        metavar="PATH",
        help="a PEFT LoRA adapter folder: collect on the base model plus this adapter "
        "(the fine-tuned model of an adapter task, docs/lora.md)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from pactframe.cli._output import prepare_output
    from pactframe.covariance import collect_covariances

    output = Path(args.output)
    inputs = [
        (label, Path(value))
        for label, value in (
            ("the --hf-model folder", args.hf_model),
            ("the --text-file", args.text_file),
            ("the --factory file", (args.factory or "").rpartition(":")[0]),
        )
        if value and Path(value).exists()
    ]
    prepare_output("collect-covariance", output, inputs)
    if output.exists() and not args.force:
        raise ConfigError(
            f"collect-covariance: the output file {str(output)!r} exists; pass --force to "
            "overwrite it or choose another --output."
        )
    if not output.parent.is_dir():
        raise ConfigError(
            f"collect-covariance: the output folder {str(output.parent)!r} does not exist; "
            "create it first."
        )
    if bool(args.factory) == bool(args.hf_model):
        raise ConfigError(
            "collect-covariance: give exactly one of --factory MODULE:FUNCTION or "
            "--hf-model PATH (with --text-file FILE)."
        )
    if args.factory:
        model, batches = _from_factory(args.factory, args.factory_arg)
        default_source = f"factory {args.factory}"
    else:
        model, batches = _from_hugging_face(args)
        default_source = f"hf-model {args.hf_model}, text {args.text_file}"
    if args.adapter:  # the fine-tuned model of an adapter task: base + scale * B A
        from pactframe.lora import apply_adapter

        model = apply_adapter(model, args.adapter)
        default_source += f", adapter {args.adapter}"
    if args.device:
        model = model.to(args.device)
        batches = (_to_device(b, args.device) for b in batches)
    result = collect_covariances(
        model,
        batches,
        include=args.include,
        exclude=args.exclude,
        max_tokens=args.max_tokens,
        dtype=getattr(torch, args.dtype),
    )
    _write_atomically(result, output, args.source or default_source)
    tokens = sorted(set(result.num_samples.values()))
    print(
        f"wrote {len(result.covariances)} covariances to {output} "
        f"(tokens per weight: {', '.join(map(str, tokens))})"
    )
    if result.skipped:
        print(f"skipped {len(result.skipped)} weights (they keep the plain task vector in PAVE):")
        for key, reason in result.skipped.items():
            print(f"  {key}: {reason}")
    return 0


def _write_atomically(result: Any, output: Path, source: str) -> None:
    from pactframe.output_safety import register_temporary, release_temporary, temporary_path

    tmp = temporary_path(output, "tmp", ".safetensors")
    register_temporary(tmp)
    try:
        result.save(tmp, source=source)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        release_temporary(tmp)


def load_factory(spec: str) -> Any:
    """The function named by ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(
            f"collect-covariance: --factory must look like 'package.module:function' or "
            f"'path/to/file.py:function'; got {spec!r}."
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(
                    f"collect-covariance: factory file {module_name!r} does not exist."
                )
            module_spec = importlib.util.spec_from_file_location(
                f"_pactframe_factory_{path.stem}", path
            )
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"collect-covariance: cannot import the factory module {module_name!r} ({exc}). "
            "Check the name and that it is on PYTHONPATH."
        ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(
            f"collect-covariance: {module_name!r} has no function {func_name!r} "
            f"(--factory {spec!r})."
        )
    return func


def _from_factory(spec: str, raw_args: list[str]) -> tuple[Any, Any]:
    kwargs = {}
    for item in raw_args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"collect-covariance: --factory-arg must be KEY=VALUE; got {item!r}.")
        kwargs[key] = value
    made = load_factory(spec)(**kwargs)
    if not (isinstance(made, tuple) and len(made) == 2):
        raise InputError(
            f"collect-covariance: the factory {spec!r} must return (model, batches); it "
            f"returned {type(made).__name__}."
        )
    return made


def _from_hugging_face(args: argparse.Namespace) -> tuple[Any, Iterator[Any]]:
    """Model and tokenized text batches via transformers (import-guarded)."""
    if not args.text_file:
        raise ConfigError(
            "collect-covariance: --hf-model needs --text-file FILE (one example a line)."
        )
    if args.batch_size < 1 or args.max_length < 1:
        raise ConfigError("collect-covariance: --batch-size and --max-length must be positive.")
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(
            "collect-covariance: --hf-model needs the 'transformers' package, which is not "
            "installed (pip install transformers), or use --factory with your own loader."
        ) from exc
    lines = [ln.strip() for ln in Path(args.text_file).read_text(encoding="utf-8").splitlines()]
    texts = [ln for ln in lines if ln]
    if not texts:
        raise InputError(
            f"collect-covariance: the text file {args.text_file!r} has no non-empty line."
        )
    class_name = args.hf_class
    if class_name is None:
        config = transformers.AutoConfig.from_pretrained(args.hf_model)
        architectures = getattr(config, "architectures", None) or ["AutoModel"]
        class_name = architectures[0]
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise ConfigError(
            f"collect-covariance: transformers has no class {class_name!r}; pass --hf-class."
        )
    model = model_class.from_pretrained(args.hf_model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.hf_model)
    if tokenizer.pad_token is None and args.batch_size > 1:
        tokenizer.pad_token = tokenizer.eos_token

    def batches() -> Iterator[dict[str, Any]]:
        for start in range(0, len(texts), args.batch_size):
            enc = tokenizer(
                texts[start : start + args.batch_size],
                return_tensors="pt",
                padding=args.batch_size > 1,
                truncation=True,
                max_length=args.max_length,
            )
            yield dict(enc)

    return model, batches()


def _to_device(batch: Any, device: str) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
