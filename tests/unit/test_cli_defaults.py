"""A CLI option that restates a Python API default says the same value.

The parsers are built without importing the API modules (``pactframe --help`` stays
fast), so the few options that default to an API argument's default write the value
again; these tests hold the two together."""

from __future__ import annotations

import inspect

import torch

from pactframe.cli import build_parser
from pactframe.covariance import collect_covariances
from pactframe.diagnose import diagnose
from pactframe.example import write_example


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_diagnose_top_is_the_api_default():
    args = build_parser().parse_args(["diagnose", "config.yaml", "out"])
    assert args.top == _default(diagnose, "top")


def test_example_seed_is_the_api_default():
    args = build_parser().parse_args(["example", "dir"])
    assert args.seed == _default(write_example, "seed")


def test_collect_dtype_is_the_api_default():
    args = build_parser().parse_args(
        ["collect-covariance", "--output", "c.safetensors", "--hf-model", "m"]
    )
    assert getattr(torch, args.dtype) == _default(collect_covariances, "dtype")
