"""Subcommands from plugins (``pactframe_register_commands``): the benchmark's
``demo`` and ``bench`` arrive this way, and bad or clashing commands are errors
naming the plugin that leave the core commands working."""

from __future__ import annotations

import argparse
import types

import pytest

import pactframe.cli as cli
from pactframe import hookimpl
from pactframe.cli import COMMANDS, build_parser, main
from pactframe.cli.hook_commands import hook_commands
from pactframe.errors import PluginError
from pactframe.plugins import make_plugin_manager


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def _command(name: str, **overrides: object) -> types.SimpleNamespace:
    calls: list[str] = []

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--who", default="world")

    def run(args: argparse.Namespace) -> int:
        calls.append(args.who)
        return 0

    fields = {"name": name, "help": f"the {name} command", "add_arguments": add_arguments,
              "run": run, "calls": calls}
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


def _plugin(plugin_name: str, result: object) -> types.ModuleType:
    module = types.ModuleType(plugin_name)

    @hookimpl
    def pactframe_register_commands():
        return result

    module.pactframe_register_commands = pactframe_register_commands  # type: ignore[attr-defined]
    return module


def _pm(*plugins: types.ModuleType):
    return make_plugin_manager(load_entrypoints=False, plugins=plugins)


def test_demo_and_bench_come_from_the_bench_plugin_not_the_core():
    assert "demo" not in COMMANDS and "bench" not in COMMANDS
    commands = hook_commands(reserved=COMMANDS)
    assert commands["demo"].__name__ == "pactframe_bench.demo_cmd"
    assert commands["bench"].__name__ == "pactframe_bench.bench_cmd"
    assert {"demo", "bench", *COMMANDS} <= _subcommands(build_parser())


def test_blocking_the_bench_entry_point_removes_its_commands(monkeypatch):
    monkeypatch.setenv("PACTFRAME_BLOCK_PLUGINS", "bench")
    names = _subcommands(build_parser())
    assert "demo" not in names and "bench" not in names
    assert set(COMMANDS) <= names


def test_the_bench_command_runs_through_the_hook(capsys):
    # an unknown method is refused before any suite is built
    assert main(["bench", "vision-small", "--methods", "no_such_method"]) == 1
    err = capsys.readouterr().err
    assert "pactframe bench: error: Unknown method(s) ['no_such_method']" in err


def test_a_plugin_command_is_added_and_run(monkeypatch):
    hello = _command("hello")
    commands = hook_commands(reserved=COMMANDS, pm=_pm(_plugin("greeter", [hello])))
    assert commands == {"hello": hello}
    monkeypatch.setattr(cli, "hook_commands", lambda reserved: commands)
    assert main(["hello", "--who", "tests"]) == 0
    assert hello.calls == ["tests"]


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (_command("hello"), "must return a list of commands; got SimpleNamespace"),
        ([_command("Hello World")], "needs a lower-case 'name'"),
        ([_command("hello\n")], "needs a lower-case 'name'"),
        ([_command("hello", help=None)], "the command 'hello' needs a 'help' string"),
        ([_command("hello", run=None)], "the command 'hello' lacks run"),
        ([_command("merge")], "registers the command 'merge', which is a core pactframe command"),
    ],
)
def test_a_bad_command_is_an_error_naming_the_plugin(result, message):
    with pytest.raises(PluginError, match="Plugin 'greeter'") as info:
        hook_commands(reserved=COMMANDS, pm=_pm(_plugin("greeter", result)))
    assert message in str(info.value)


def test_two_plugins_with_one_command_name_is_an_error_naming_both():
    pm = _pm(_plugin("first", [_command("hello")]), _plugin("second", [_command("hello")]))
    with pytest.raises(PluginError, match="Two plugins register the command 'hello'") as info:
        hook_commands(reserved=COMMANDS, pm=pm)
    assert "'first'" in str(info.value) and "'second'" in str(info.value)


def test_a_broken_plugin_leaves_the_core_commands_working(monkeypatch, capsys):
    def broken(reserved):
        raise PluginError("Loading the 'pactframe' entry points failed: boom.")

    monkeypatch.setattr(cli, "hook_commands", broken)
    names = _subcommands(build_parser())
    assert names == set(COMMANDS)
    err = capsys.readouterr().err
    assert "pactframe: warning: plugin commands not loaded: Loading the" in err
    assert main(["plugins", "--kind", "merger"]) == 0


def test_the_demo_writes_under_the_cache_unless_told_otherwise(monkeypatch, tmp_path):
    import pactframe_bench.demo

    calls = []
    monkeypatch.setattr(
        pactframe_bench.demo, "run_demo", lambda out, methods, **kw: calls.append((out, methods))
    )
    monkeypatch.setenv("PACTFRAME_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--methods", "ties"]) == 0
    assert main(["demo", "--out", str(tmp_path / "mine")]) == 0
    assert calls[0] == (tmp_path / "cache" / "demo", ["ties"])
    assert calls[1][0] == tmp_path / "mine" and "pact+tsv_m" in calls[1][1]
