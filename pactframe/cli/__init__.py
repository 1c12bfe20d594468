"""The ``pactframe`` command line.

Each subcommand lives in its own module of this package, exposing
``help: str``, ``add_arguments(parser)`` and ``run(args) -> int``; the table
below maps command names to those modules (imported only when needed). Plugins add
more through the ``pactframe_register_commands`` hook (:mod:`pactframe.cli.hook_commands`).

:func:`main` is the one error boundary of every command: a
:class:`~pactframe.errors.PactframeError`, an ``OSError`` (a full disk, a
read-only file system, a permission) or running out of memory prints one
paragraph ``pactframe COMMAND: error: ...`` on stderr and exits 1; SIGINT,
SIGTERM and SIGHUP remove the command's temporary files and exit with
128 + the signal number (130, 143, 129). ``--debug`` (or ``PACTFRAME_DEBUG=1``)
prints the traceback too. Anything else is a bug in pactframe and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from pactframe.cli.hook_commands import hook_commands
from pactframe.errors import PactframeError, PluginError

COMMANDS: dict[str, str] = {
    "collect-covariance": "pactframe.cli.collect_cmd",
    "convert": "pactframe.cli.convert_cmd",
    "merge": "pactframe.cli.merge_cmd",
    "validate": "pactframe.cli.validate_cmd",
    "diagnose": "pactframe.cli.diagnose_cmd",
    "materialize": "pactframe.cli.materialize_cmd",
    "example": "pactframe.cli.example_cmd",
    "plugins": "pactframe.cli.plugins_cmd",
}

#: signals turned into :class:`Interrupted` while a command runs (exit 128 + number)
HANDLED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_DEBUG_HELP = "on an error, also print the Python traceback (or set PACTFRAME_DEBUG=1)"


class Interrupted(KeyboardInterrupt):
    """A handled signal (SIGINT, SIGTERM, SIGHUP) while a command runs.

    A ``KeyboardInterrupt`` subclass, so it unwinds through ``except Exception``
    blocks and every ``with`` block (the output writer's included) cleans up.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside, SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` (a signal that is
    ignored on entry, e.g. SIGHUP under ``nohup``, stays ignored). Restored on exit.
    Does nothing outside the main thread (Python delivers signals only there)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED_SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue
            previous[sig] = current
            signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Let the cleanup finish: a second Ctrl-C must not leave a half-removed folder."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED_SIGNALS:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_OS_HINTS = {
    errno.ENOSPC: "The disk is full: free some space or write the output to another disk.",
    errno.EDQUOT: "The disk quota is exhausted: free some space or write elsewhere.",
    errno.EROFS: "The file system is read-only: choose an output folder you can write to.",
    errno.EACCES: "Permission denied: check the permissions of that path, or choose another.",
    errno.EPERM: "Operation not permitted: check the permissions of that path.",
    errno.ENOENT: "Check that the path exists.",
    errno.ENOTDIR: "A part of that path is a file, not a folder.",
    errno.EISDIR: "That path is a folder where a file was expected.",
    errno.EMFILE: "Too many open files: raise the limit (ulimit -n).",
    errno.EIO: "An input/output error: the disk or network file system may be failing.",
}


def describe_os_error(exc: OSError) -> str:
    """One paragraph for an ``OSError``: what, which path, the errno name, what to do."""
    from pactframe.errors import short_text

    what = exc.strerror or str(exc) or type(exc).__name__
    where = ""
    if exc.filename is not None:
        where = f" {os.fsdecode(exc.filename)!r}"
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)!r}"
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    hint = _OS_HINTS.get(exc.errno, "") if exc.errno is not None else ""
    text = f"{what}{':' if where else ''}{where}{f' ({code})' if code else ''}."
    return short_text(f"{text} {hint}".strip(), 1200)


def build_parser() -> argparse.ArgumentParser:
    from pactframe import __version__

    parser = argparse.ArgumentParser(
        prog="pactframe", description="Training-free model merging (PACT, PAVE and friends)."
    )
    parser.add_argument("--version", action="version", version=f"pactframe {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {name: importlib.import_module(path) for name, path in COMMANDS.items()}
    try:
        commands.update(hook_commands(reserved=commands))
    except PluginError as exc:  # a broken plugin must not take the core commands down
        print(f"pactframe: warning: plugin commands not loaded: {exc}", file=sys.stderr)
    for name in sorted(commands):
        module = commands[name]
        p = sub.add_parser(name, help=module.help, description=module.help)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        p.set_defaults(_module=module)
    return parser


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False)) or os.environ.get("PACTFRAME_DEBUG", "") not in (
        "",
        "0",
    )
    prog = f"pactframe {args.command}"
    failure: BaseException | None = None
    message = ""
    code = 0
    try:
        with signals_interrupt():
            try:
                code = int(args._module.run(args) or 0)
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                failure, code = exc, 128 + int(signum)
                message = f"interrupted by {signal.Signals(signum).name}"
            except PactframeError as exc:
                failure, code, message = exc, 1, f"error: {exc}"
            except OSError as exc:
                failure, code, message = exc, 1, f"error: {describe_os_error(exc)}"
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise
                failure, code = exc, 1
                message = (
                    f"error: out of memory ({type(exc).__name__}). Use a smaller compute_dtype, "
                    "prefetch: 0, or a machine with more memory; `pactframe validate` prints "
                    "the estimated peak."
                )
    except Interrupted as exc:  # a signal between the command's end and the handlers' reset
        failure, code = exc, 128 + exc.signum
        message = f"interrupted by {signal.Signals(exc.signum).name}"
    finally:
        with _signals_ignored():
            from pactframe.output_safety import remove_own_temporaries

            remove_own_temporaries()
    if failure is None:
        return code
    if debug:
        traceback.print_exception(failure, file=sys.stderr)
    if code > 128:
        message += "; its temporary files were removed"
    prefix = "\r\x1b[2K" if sys.stderr.isatty() else ""  # clear a progress line
    print(f"{prefix}{prog}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
