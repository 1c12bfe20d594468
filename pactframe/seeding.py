"""Per-tensor seeds derived from the run seed and the tensor name.

Results therefore do not depend on the order in which tensors are processed,
nor on the number of workers.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed from ``seed`` and any labels (tensor name, task index...)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for name in names:
        h.update(b"\x00")
        h.update(str(name).encode())
    return int.from_bytes(h.digest(), "little") >> 1


def generator(seed: int, *names: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` (draw on CPU, then move)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, *names))
    return g
