"""``pactframe.io``: the split of the old ``pactframe.checkpoint`` module, its
compatibility shim, and the one ``numel``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import pactframe.checkpoint as checkpoint
import pactframe.io as pio
from pactframe.io import reader, units, writer
from pactframe.io.units import numel


def test_the_compat_module_exports_the_same_objects():
    assert sorted(checkpoint.__all__) == sorted(pio.__all__)
    for name in pio.__all__:
        assert getattr(checkpoint, name) is getattr(pio, name), name
    assert checkpoint.CheckpointReader is reader.CheckpointReader
    assert checkpoint.CheckpointWriter is writer.CheckpointWriter
    assert checkpoint.parse_size is units.parse_size


def test_every_public_name_of_a_submodule_is_reexported():
    for module in (reader, units, writer):
        own = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        ]
        missing = [name for name in own if name not in pio.__all__]
        assert missing == [], f"{module.__name__} defines {missing}, not in pactframe.io.__all__"


@pytest.mark.parametrize(
    "shape, expected",
    [((), 1), ((0,), 0), ((7,), 7), ((3, 4), 12), ((2, 0, 5), 0), ((2, 3, 4, 5), 120)],
)
def test_numel_matches_torch(shape, expected):
    assert numel(shape) == expected == torch.empty(shape).numel()
    assert numel(torch.Size(shape)) == expected
    assert numel(list(shape)) == expected


def test_numel_is_exact_where_numpy_overflows():
    shape = (2**40, 2**40)
    assert numel(shape) == 2**80
    assert int(np.prod(np.array(shape, dtype=np.int64))) != 2**80  # what numpy would say
    assert numel(np.array([3, 5], dtype=np.int64)) == 15
    assert type(numel(np.array([3, 5], dtype=np.int64))) is int


def test_each_submodule_imports_first_and_the_stdlib_io_is_untouched():
    for first in ("pactframe.io.units", "pactframe.io.writer", "pactframe.io.reader"):
        code = textwrap.dedent(
            f"""
            import {first}
            import io, pactframe.io, pactframe.checkpoint
            assert io.BytesIO(b"x").read() == b"x" and io.__name__ == "io"
            assert pactframe.io.__name__ == "pactframe.io"
            """
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
