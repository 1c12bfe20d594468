"""Where pactframe may write, and the temporaries it leaves beside an output.

Every command that writes (``merge``, ``materialize``, ``collect-covariance``,
``example``) and the library functions behind them call :func:`check_output`
before any work: the output must not be a symbolic link, and, once ``..`` and
symbolic links are resolved, must neither equal, contain nor lie inside any of
its inputs (``--force`` does not change this: replacing such an output would
delete the inputs). The config file's folder, the working directory and the
home directory are *protected*: the output may lie inside them (``ex/merged``
beside ``ex/config.yaml``) but must not be them or contain them.

Outputs are written into a temporary sibling ``.OUT.pactframe-tmp-HOST-PID-XXXXXXXX``
and renamed into place; ``--force`` first moves the old output aside to
``.OUT.pactframe-old-HOST-PID-XXXXXXXX``. ``HOST`` is a short hash of the host name
and ``PID`` the writing process, so :func:`sweep_stale` can tell the temporaries
of a killed run (its process is gone) from those of a run still going (on this
machine or, on a shared file system, another one). See ``docs/security.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pactframe.errors import OutputPathError

log = logging.getLogger("pactframe")

#: folders whose symbolic-linked entries are followed when listing what an input reads
_MAX_LISTED = 10_000


# ---------------------------------------------------------------- overlap checks
def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.normcase(os.path.realpath(os.path.expanduser(os.fspath(path)))))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _chain(path: Path) -> list[Path]:
    """``path`` and its ancestors, resolved, nearest first."""
    return [path, *path.parents]


def _ids(paths: Iterable[Path]) -> set[tuple[int, int]]:
    return {i for i in (_identity(p) for p in paths) if i is not None}


def _expand(label: str, path: Path) -> list[tuple[str, Path]]:
    """An input and, for a folder, the targets of its symbolic-linked entries (the
    Hugging Face cache keeps a snapshot's files as links into ``blobs/``)."""
    out = [(label, path)]
    try:
        if path.is_dir():
            for i, child in enumerate(sorted(path.iterdir())):
                if i >= _MAX_LISTED:
                    break
                if child.is_symlink():
                    out.append((f"{label}'s file {child.name!r} (a link to)", child.resolve()))
    except (OSError, ValueError, RuntimeError):  # unreadable, odd name, a link loop
        pass
    return out


def _relation(out_real: Path, in_real: Path) -> str | None:
    """How the output relates to an input: ``same``, ``inside``, ``contains`` or None."""
    if out_real == in_real:
        return "same"
    if in_real in out_real.parents:
        return "inside"
    if out_real in in_real.parents:
        return "contains"
    out_id, in_id = _identity(out_real), _identity(in_real)
    if out_id is not None and out_id == in_id:  # bind mounts, case-insensitive names
        return "same"
    if in_id is not None and in_id in _ids(_chain(out_real)[1:]):
        return "inside"
    if out_id is not None and out_id in _ids(_chain(in_real)[1:]):
        return "contains"
    return None


_WORDS = {
    "same": "is the same path as",
    "inside": "lies inside",
    "contains": "contains",
}


def check_output(
    output: str | os.PathLike[str],
    inputs: Iterable[tuple[str, str | os.PathLike[str]]] = (),
    *,
    protected: Iterable[tuple[str, str | os.PathLike[str]]] = (),
) -> None:
    """Refuse an unsafe output path (:class:`~pactframe.errors.OutputPathError`).

    ``inputs`` are ``(label, path)`` pairs the command reads: the output may not
    be one of them, lie inside one or contain one. ``protected`` folders (the
    config's folder) may hold the output but may not be it or lie inside it; the
    working directory and the home directory are always protected. The output
    itself must not be a symbolic link. ``..`` and links are resolved first.
    """
    out = Path(os.path.expanduser(os.fspath(output)))
    refuse_symlink(out)
    out_real = _real(out)
    for label, path in inputs:
        for what, target in _expand(label, Path(path)):
            in_real = _real(target)
            relation = _relation(out_real, in_real)
            if relation is None:
                continue
            _refuse(out, out_real, relation, what, Path(target), in_real)
    for label, path in [*protected, *_always_protected()]:
        in_real = _real(path)
        relation = _relation(out_real, in_real)
        if relation in ("same", "contains"):
            _refuse(out, out_real, relation, label, Path(path), in_real)


def _always_protected() -> list[tuple[str, Path]]:
    """The working directory and the home directory (when they can be determined)."""
    out = []
    for label, get in (("the working directory", Path.cwd), ("your home directory", Path.home)):
        try:
            out.append((label, get()))
        except (OSError, RuntimeError, KeyError):  # a deleted cwd, no HOME and no passwd entry
            continue
    return out


def refuse_symlink(out: Path) -> None:
    """Refuse an output path that is itself a symbolic link (to a folder or anything else)."""
    if out.is_symlink():
        raise OutputPathError(
            f"The output path {str(out)!r} is a symbolic link (to {os.readlink(out)!r}). "
            "pactframe does not write through a link: replacing it would act on the folder it "
            "points to or leave the link behind. Give the link's target or another path."
        )


def _refuse(
    out: Path, out_real: Path, relation: str, label: str, path: Path, in_real: Path
) -> None:
    resolved = ""
    if str(out_real) != str(out) or str(in_real) != str(path):
        resolved = f" (resolved: {str(out_real)!r} and {str(in_real)!r})"
    raise OutputPathError(
        f"Refusing to write the output {str(out)!r}: it {_WORDS[relation]} {label} "
        f"{str(path)!r}{resolved}. Writing there would delete or overwrite what it reads, so "
        "even --force does not allow it. Choose an output path outside every input."
    )


def merge_inputs(spec: Any) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """``(inputs, protected)`` of a merge (a :class:`~pactframe.config.MergeSpec`): base,
    models, covariances; the config's folder. (Typed ``Any``: this module sits below
    :mod:`pactframe.config` and imports nothing of it.)"""
    inputs: list[tuple[str, Path]] = [("the base model", spec.base)]
    for m in spec.models:
        inputs.append((f"the model {m.name!r}", m.path))
        if m.covariance is not None:
            inputs.append((f"the covariance file of {m.name!r}", m.covariance))
    protected = []
    if spec.source is not None:
        protected.append(("the config's folder", Path(spec.source).parent))
    return inputs, protected


# ------------------------------------------------------------------ temporaries
def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()


def temporary_path(dest: str | os.PathLike[str], kind: str = "tmp", suffix: str = "") -> Path:
    """A fresh sibling of ``dest``: ``.NAME.pactframe-KIND-HOST-PID-XXXXXXXX[SUFFIX]``."""
    dest = Path(dest)
    tag = f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return dest.parent / f".{dest.name}.pactframe-{kind}-{tag}{suffix}"


def _pattern(dest: Path) -> re.Pattern[str]:
    return re.compile(
        rf"^\.{re.escape(dest.name)}\.pactframe-(?P<kind>tmp|old)-"
        r"(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-)?[0-9a-f]{8}(?:\.safetensors)?$"
    )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process: assume it is a live writer
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def sweep_stale(dest: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries that killed runs left beside ``dest``; one line each.

    A ``tmp`` temporary is removed when it was made on this machine by a process
    that is no longer running. An ``old`` one (a previous output an interrupted
    ``--force`` run had moved aside) is removed only when ``dest`` exists again;
    otherwise it is kept and reported, since it is the only copy of that output.
    Temporaries of running processes, of other machines and of older pactframe
    versions (no process id in the name) are reported and left alone.
    """
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        return []
    pattern = _pattern(dest)
    notes = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        kind, host, pid = m.group("kind"), m.group("host"), m.group("pid")
        if pid is None:
            notes.append(
                f"left alone {str(entry)!r}: a temporary of an older pactframe or an unknown "
                "run; delete it by hand if no merge is writing there."
            )
            continue
        if host != _host_tag():
            notes.append(
                f"left alone {str(entry)!r}: made by process {pid} on another machine "
                "(shared file system); delete it by hand if that run is over."
            )
            continue
        if _alive(int(pid)):
            if int(pid) != os.getpid():
                notes.append(
                    f"left alone {str(entry)!r}: process {pid} is still running "
                    "(another run writing the same output?)."
                )
            continue
        if kind == "old" and not (dest.exists() or dest.is_symlink()):
            notes.append(
                f"kept {str(entry)!r}: it holds the previous {dest.name!r} that an interrupted "
                f"--force run (process {pid}) had moved aside; rename it back to "
                f"{str(dest)!r} or delete it."
            )
            continue
        try:
            _remove(entry)
        except OSError as exc:
            notes.append(f"could not remove {str(entry)!r} left by process {pid}: {exc}.")
            continue
        what = "temporary output" if kind == "tmp" else "replaced output"
        notes.append(
            f"removed {str(entry)!r}: a {what} left by an interrupted run (process {pid}, "
            "no longer running)."
        )
    for note in notes:
        log.info(note)
    return notes


_OWN: set[Path] = set()


def register_temporary(path: Path) -> None:
    """Note a temporary this process is writing (removed by :func:`remove_own_temporaries`)."""
    _OWN.add(Path(path))


def release_temporary(path: Path) -> None:
    _OWN.discard(Path(path))


def remove_own_temporaries() -> list[Path]:
    """Remove every temporary this process registered and did not release (the CLI's
    last step after an error or a signal); return those removed."""
    removed = []
    for path in sorted(_OWN):
        try:
            if path.exists() or path.is_symlink():
                _remove(path)
                removed.append(path)
        except OSError:
            continue
        _OWN.discard(path)
    return removed
