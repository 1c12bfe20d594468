"""Issue 18, the command-line half: outputs that overlap their inputs, symlinked
outputs, hostile configs, OS errors, signals and the temporaries of killed runs.

Every case asserts the exit status, the first line of the message and that no
output and no temporary folder is left (and, where it matters, that the inputs
are intact). See docs/security.md.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pactframe.cli import main
from tests.integration._pipeline_helpers import load_output, write_models

REPO = Path(__file__).parents[2]


# ----------------------------------------------------------------- helpers
def leftovers(folder: Path) -> list[str]:
    """Temporaries of pactframe in ``folder`` (there must be none after any command)."""
    return sorted(p.name for p in folder.iterdir() if ".pactframe-" in p.name)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``(exit status, first stderr line, all of stderr)``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, (err.splitlines() or [""])[0], err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (inputs must come out unchanged)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def make_inputs(root: Path, *, config_dir: Path | None = None, **config) -> Path:
    """Base (sharded folder with config.json) + 2 fine-tunes under ``root``; the config
    (task_arithmetic, average fallback) in ``config_dir`` (default ``root``)."""
    _, _, base, paths = write_models(root, sharded=True)
    data = {
        "base": str(base),
        "models": [{"name": f"t{i}", "path": str(p)} for i, p in enumerate(paths)],
        "merger": {"name": "task_arithmetic", "scaling": 0.5},
        "fallback": "average",
        **config,
    }
    folder = config_dir or root
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


# ------------------------------------------------ 1. outputs over their inputs
def test_merge_into_the_folder_holding_the_inputs_is_refused_even_with_force(tmp_path, capsys):
    root = tmp_path / "ex"
    cfg = make_inputs(root)
    before = snapshot(root)
    code, first, _ = run_cli(capsys, "merge", cfg, root, "--force")
    assert code == 1
    assert first.startswith(f"pactframe merge: error: Refusing to write the output '{root}': ")
    assert "contains the base model" in first and "even --force" in first
    assert snapshot(root) == before  # base, fine-tunes and config untouched
    assert leftovers(root) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("spelling", ["ex/base", "ex/ft0/../base", "link-to-ex/base"])
def test_merge_over_the_base_is_refused_however_spelt(tmp_path, capsys, spelling):
    root = tmp_path / "ex"
    cfg = make_inputs(root)
    (tmp_path / "link-to-ex").symlink_to(root)  # a parent that is a link is resolved
    before = snapshot(root / "base")
    out = tmp_path / spelling
    code, first, _ = run_cli(capsys, "merge", cfg, out, "--force")
    assert code == 1
    assert first.startswith(f"pactframe merge: error: Refusing to write the output '{out}': ")
    assert f"is the same path as the base model '{root / 'base'}'" in first
    assert snapshot(root / "base") == before
    assert leftovers(root) == []


def test_merge_inside_an_input_folder_is_refused(tmp_path, capsys):
    root = tmp_path / "ex"
    cfg = make_inputs(root)
    out = root / "ft1" / "merged"
    code, first, _ = run_cli(capsys, "merge", cfg, out)
    assert code == 1
    assert f"it lies inside the model 't1' '{root / 'ft1'}'" in first
    assert not out.exists() and leftovers(root / "ft1") == []


def test_merge_over_the_config_folder_is_refused_but_beside_the_config_is_fine(
    tmp_path, capsys
):
    cfg = make_inputs(tmp_path / "models", config_dir=tmp_path / "job")
    code, first, _ = run_cli(capsys, "merge", cfg, tmp_path / "job", "--force")
    assert code == 1
    assert f"is the same path as the config's folder '{tmp_path / 'job'}'" in first
    assert cfg.exists()
    code, first, _ = run_cli(capsys, "merge", cfg, tmp_path, "--force")
    assert code == 1 and "Refusing to write the output" in first and cfg.exists()
    # the documented layout: the output inside the config's folder
    assert main(["merge", str(cfg), str(tmp_path / "job" / "merged"), "--quiet"]) == 0
    assert len(load_output(tmp_path / "job" / "merged")) == 11
    assert leftovers(tmp_path / "job") == []


def test_materialize_over_the_merge_it_reads_is_refused(tmp_path, capsys):
    root = tmp_path / "ex"
    cfg = make_inputs(root, merger={"name": "emr"})
    merged = tmp_path / "merged"
    assert main(["merge", str(cfg), str(merged), "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(merged)
    code, first, _ = run_cli(capsys, "materialize", merged, "--task", "t0", merged, "--force")
    assert code == 1
    assert first.startswith(
        f"pactframe materialize: error: Refusing to write the output '{merged}': it is the "
        f"same path as the merged model '{merged}'"
    )
    assert snapshot(merged) == before and leftovers(tmp_path) == []
    # and the library function refuses as well
    from pactframe.errors import OutputPathError
    from pactframe.modulators import materialize

    with pytest.raises(OutputPathError, match="lies inside the merged model"):
        materialize(merged, "t0", merged / "t0", force=True)
    assert snapshot(merged) == before


def test_collect_covariance_over_its_own_factory_file_is_refused(tmp_path, capsys):
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Linear(4, 3), [torch.randn(2, 4) for _ in range(3)]\n"
    )
    text = factory.read_text()
    code, first, _ = run_cli(
        capsys, "collect-covariance", "--factory", f"{factory}:make", "-o", factory, "--force"
    )
    assert code == 1
    assert first.startswith(
        f"pactframe collect-covariance: error: Refusing to write the output '{factory}': it is "
        f"the same path as the --factory file '{factory}'"
    )
    assert factory.read_text() == text and leftovers(tmp_path) == []


def test_example_force_never_replaces_the_working_directory(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("mine")
    monkeypatch.chdir(work)
    for target in (".", str(tmp_path)):
        code, first, _ = run_cli(capsys, "example", target, "--force")
        assert code == 1
        assert first.startswith("pactframe example: error: Refusing to write the output")
        assert "the working directory" in first
    assert (work / "precious.txt").read_text() == "mine"
    assert leftovers(work) == [] and leftovers(tmp_path) == []


def test_an_input_inside_the_output_is_refused_for_the_api_too(tmp_path):
    from pactframe.api import merge
    from pactframe.errors import OutputPathError

    cfg = make_inputs(tmp_path / "ex")
    before = snapshot(tmp_path / "ex")
    with pytest.raises(OutputPathError, match="contains the base model"):
        merge(str(cfg), tmp_path, force=True)
    assert snapshot(tmp_path / "ex") == before


# ------------------------------------------------- 8. output that is a symlink
@pytest.mark.parametrize("force", [False, True])
def test_output_symlink_to_a_folder_is_refused_before_merging(tmp_path, capsys, force):
    cfg = make_inputs(tmp_path / "ex")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    link = tmp_path / "out"
    link.symlink_to(target)
    code, first, _ = run_cli(capsys, "merge", cfg, link, *(["--force"] if force else []))
    assert code == 1
    assert first == (
        f"pactframe merge: error: The output path '{link}' is a symbolic link (to "
        f"'{target}'). pactframe does not write through a link: replacing it would act on "
        "the folder it points to or leave the link behind. Give the link's target or another "
        "path."
    )
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert leftovers(tmp_path) == []


def test_dangling_output_symlink_is_refused(tmp_path, capsys):
    cfg = make_inputs(tmp_path / "ex")
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    code, first, _ = run_cli(capsys, "merge", cfg, link)
    assert code == 1 and "is a symbolic link" in first
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    assert leftovers(tmp_path) == []


# --------------------------------------------------------- 5. denial of service
def alias_bomb(levels: int = 9, fan: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    return "\n".join(lines) + f"\nseed: *a{levels}\n"


@pytest.mark.parametrize("command", ["validate", "merge"])
def test_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys, command):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(alias_bomb())
    out = tmp_path / "out"
    start = time.perf_counter()
    code, first, err = run_cli(capsys, command, cfg, *([out] if command == "merge" else []))
    assert time.perf_counter() - start < 5
    assert code == 1 and len(err) < 2000
    assert first.startswith(
        f"pactframe {command}: error: Config file '{cfg}' expands to more than 10000 values"
    )
    assert not out.exists() and leftovers(tmp_path) == []


def test_huge_values_give_short_messages(tmp_path, capsys):
    cfg = tmp_path / "long.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "base": "x" * 100_000,
                "models": [{"name": "a", "path": "y"}],
                "merger": {"name": "ties", "density": ["z" * 5_000] * 50},
                "seed": list(range(5000)),
                "device": "q" * 100_000,
            }
        )
    )
    code, first, err = run_cli(capsys, "validate", cfg)
    assert code == 1 and first.startswith("5 problem(s) in")
    assert len(err) < 4000
    assert "seed: must be an int in [0, 2**64); got [0, 1, 2, 3, 4, 5, ...]." in err


def test_alias_reuse_within_the_bound_still_works(tmp_path, capsys):
    cfg = make_inputs(tmp_path / "ex")
    data = yaml.safe_load(cfg.read_text())
    text = yaml.safe_dump({k: v for k, v in data.items() if k not in ("merger", "fallback")})
    text += "merger: &m {name: task_arithmetic, scaling: 0.5}\nfallback: *m\n"
    cfg.write_text(text)
    assert main(["validate", str(cfg)]) == 0
    assert "OK, ready to merge" in capsys.readouterr().out


# -------------------------------------------------------- 6. fallback: null
def test_fallback_null_works_as_documented(tmp_path, capsys):
    cfg = make_inputs(tmp_path / "ex", fallback=None)
    assert main(["validate", str(cfg)]) == 0  # task_arithmetic takes every float tensor
    assert "OK, ready to merge" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["merge", str(cfg), str(out), "--quiet"]) == 0
    import json

    report = json.loads((out / "merge_report.json").read_text())
    assert report["config"]["fallback"] is None
    # a tensor that needs the fallback is then a problem validate reports
    data = yaml.safe_load(cfg.read_text())
    data["rules"] = [{"match": "norm", "exclude": True}]
    cfg.write_text(yaml.safe_dump(data))
    code, first, err = run_cli(capsys, "validate", cfg)
    assert code == 1 and first == f"1 problem(s) in {cfg}:"
    assert "fallback is null, but 2 tensor(s) need the fallback merger" in err
    code, first, _ = run_cli(capsys, "merge", cfg, tmp_path / "out2")
    assert code == 1 and first == "pactframe merge: error: 1 problem(s) in the checkpoints:"
    assert not (tmp_path / "out2").exists() and leftovers(tmp_path) == []


# ------------------------------------------- 7. tracebacks -> one clear paragraph
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"compute_dtype": ["float32", "float64"]}, "compute_dtype: must be one of"),
        ({"compute_dtype": {"a": 1}}, "compute_dtype: must be one of"),
        ({"output": {"dtype": ["bf16"]}}, "output.dtype: must be 'base' or one of"),
        ({"merger": {"name": ["ties"]}}, "merger: A merger's 'name' must be a string"),
        ({"merger": {"name": "ties", 3: 1}}, "parameter names must be strings; got 3"),
        ({"merger": {"name": "task_arithmetic", "scaling": 10**400}}, "must be a float in"),
        ({"output": {"shard_size": "9" * 400}}, "output.shard_size is too large"),
        ({"seed": 2**70}, "seed: must be an int in [0, 2**64)"),
        ({"fallback": {"name": {"x": 1}}}, "fallback: A merger's 'name' must be a string"),
    ],
)
def test_config_type_errors_are_config_problems(tmp_path, capsys, override, needle):
    cfg = make_inputs(tmp_path / "ex", **override)
    for command in ("validate", "merge"):
        extra = [tmp_path / "out"] if command == "merge" else []
        code, first, err = run_cli(capsys, command, cfg, *extra)
        assert code == 1, err
        expected = "1 problem(s) in" if command == "validate" else "pactframe merge: error: 1"
        assert first.startswith(expected) and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["safetensors", "gzip", "latin1", "utf16", "fifo", "folder"])
def test_a_config_that_is_not_yaml_text_is_one_clear_error(tmp_path, capsys, kind):
    import gzip

    cfg = make_inputs(tmp_path / "ex")
    if kind == "safetensors":
        bad = tmp_path / "ex" / "base" / "model-00001-of-00003.safetensors"
        expected = "is binary (it holds NUL bytes at offset"
    elif kind == "gzip":
        bad = tmp_path / "cfg.yaml.gz"
        bad.write_bytes(gzip.compress(cfg.read_bytes()))
        expected = "is binary (it holds NUL bytes at offset 3)"
    elif kind == "latin1":
        bad = tmp_path / "cfg1.yaml"
        bad.write_bytes("# café\n".encode("latin-1") + cfg.read_bytes())
        expected = "is not UTF-8 text (byte 0xe9 at offset 5)"
    elif kind == "utf16":
        bad = tmp_path / "cfg16.yaml"
        bad.write_bytes(cfg.read_text().encode("utf-16"))
        expected = "is binary (it holds NUL bytes at offset"
    elif kind == "fifo":
        bad = tmp_path / "pipe.yaml"
        os.mkfifo(bad)
        expected = "is not a regular file"
    else:
        bad = tmp_path / "ex"
        expected = "is not a regular file"
    for command in ("validate", "merge"):
        extra = [tmp_path / "out"] if command == "merge" else []
        code, first, err = run_cli(capsys, command, bad, *extra)
        assert code == 1
        assert first.startswith(f"pactframe {command}: error: Config file '{bad}' {expected}")
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("code_name", "first_words"),
    [("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system")],
)
@pytest.mark.parametrize("where", ["shard", "mkdir"])
def test_full_or_read_only_disk_is_one_paragraph_and_leaves_nothing(
    tmp_path, capsys, monkeypatch, code_name, first_words, where
):
    from pactframe.io.writer import CheckpointWriter

    cfg = make_inputs(tmp_path / "ex")
    out = tmp_path / "out"
    number = getattr(errno, code_name)
    if where == "shard":  # the disk fills up after a few tensors were written
        real_write = CheckpointWriter.write
        count = []

        def write(self, key, tensor):
            count.append(key)
            if len(count) == 4:
                raise OSError(number, os.strerror(number), str(self.tmp / "model.safetensors"))
            real_write(self, key, tensor)

        monkeypatch.setattr(CheckpointWriter, "write", write)
    else:  # the temporary folder cannot even be created
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self, *args, **kwargs):
            if ".pactframe-tmp-" in self.name:
                raise OSError(number, os.strerror(number), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    code, first, err = run_cli(capsys, "merge", cfg, out, "--quiet")
    assert code == 1
    assert first.startswith(f"pactframe merge: error: {first_words}: '{tmp_path}/.out.pactframe-")
    assert f"({code_name})." in first and len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x00\x01\x02")
    code, _, err = run_cli(capsys, "validate", bad)
    assert code == 1 and "Traceback" not in err
    for argv in (["--debug", "validate", str(bad)], ["validate", str(bad), "--debug"]):
        code, first, err = run_cli(capsys, *argv)
        assert code == 1 and first == "Traceback (most recent call last):"
        assert err.splitlines()[-1].startswith("pactframe validate: error: Config file")
    monkeypatch.setenv("PACTFRAME_DEBUG", "1")
    code, first, _ = run_cli(capsys, "validate", bad)
    assert code == 1 and first == "Traceback (most recent call last):"


# ----------------------------------------------------------- signals, killed runs
SLOW_MERGE = """
import signal, sys, time
from pactframe.io.writer import CheckpointWriter
from pactframe.cli import main
# a terminal's defaults, even when the test runner ignores some signals
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
real_write = CheckpointWriter.write
def slow_write(self, key, tensor):
    time.sleep(0.3)
    real_write(self, key, tensor)
CheckpointWriter.write = slow_write
sys.exit(main(sys.argv[1:]))
"""


def launch_slow_merge(tmp_path: Path, out: Path) -> subprocess.Popen:
    cfg = make_inputs(tmp_path / "ex")
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_MERGE, "merge", str(cfg), str(out), "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until_writing(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    while not leftovers(out.parent):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the merge never started"
        time.sleep(0.05)
    time.sleep(0.4)  # a tensor or two written


def start_slow_merge(tmp_path: Path, out: Path) -> subprocess.Popen:
    proc = launch_slow_merge(tmp_path, out)
    wait_until_writing(proc, out)
    return proc


def test_signals_exit_128_plus_n_and_clean_up(tmp_path):
    """SIGTERM -> 143, SIGINT -> 130, SIGHUP -> 129: one line, no traceback, no output and
    no temporary folder (three merges run side by side to keep the test short)."""
    cases = [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
    runs = []
    for sig, status in cases:
        folder = tmp_path / signal.Signals(sig).name
        folder.mkdir()
        runs.append((sig, status, folder, launch_slow_merge(folder, folder / "out")))
    for sig, _, folder, proc in runs:
        wait_until_writing(proc, folder / "out")
        proc.send_signal(sig)
    for sig, status, folder, proc in runs:
        _, err = proc.communicate(timeout=60)
        text = err.decode()
        assert proc.returncode == status, text
        assert text.splitlines()[-1] == (
            f"pactframe merge: interrupted by {signal.Signals(sig).name}; its temporary files "
            "were removed"
        )
        assert "Traceback" not in text
        assert not (folder / "out").exists() and leftovers(folder) == []


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "out"
    proc = start_slow_merge(tmp_path, out)
    proc.kill()  # SIGKILL: no handler runs, the temporary folder stays
    proc.communicate(timeout=60)
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and f"-{proc.pid}-" in stale[0]
    cfg = tmp_path / "ex" / "cfg.yaml"
    code, first, err = run_cli(capsys, "merge", cfg, out, "--quiet")
    assert code == 0
    assert first == (
        f"pactframe merge: removed '{tmp_path / stale[0]}': a temporary output left by an "
        f"interrupted run (process {proc.pid}, no longer running)."
    )
    assert leftovers(tmp_path) == [] and len(load_output(out)) == 11


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_removed_only_when_their_owner_is_gone(tmp_path, capsys):
    from pactframe.output_safety import temporary_path

    cfg = make_inputs(tmp_path / "ex")
    out = tmp_path / "out"
    gone = dead_pid()

    def owned_by(pid: int, kind: str) -> Path:
        return Path(str(temporary_path(out, kind)).replace(f"-{os.getpid()}-", f"-{pid}-"))

    dead_tmp, live_tmp, dead_old = owned_by(gone, "tmp"), owned_by(os.getppid(), "tmp"), owned_by(
        gone, "old"
    )
    legacy = tmp_path / ".out.pactframe-tmp-0123abcd"
    from pactframe.output_safety import _host_tag

    host = "000000" if _host_tag() != "000000" else "111111"
    other_host = tmp_path / f".out.pactframe-tmp-{host}-{gone}-0123abcd"
    for folder in (dead_tmp, live_tmp, dead_old, legacy, other_host):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    # `out` does not exist: the moved-aside previous output is kept (its only copy)
    code, _, err = run_cli(capsys, "merge", cfg, out, "--quiet")
    assert code == 0
    assert f"removed '{dead_tmp}'" in err and not dead_tmp.exists()
    assert f"left alone '{live_tmp}': process {os.getppid()} is still running" in err
    assert f"kept '{dead_old}'" in err and dead_old.exists()
    assert f"left alone '{legacy}'" in err and legacy.exists()
    assert f"left alone '{other_host}': made by process {gone} on another machine" in err
    assert other_host.exists()
    # now `out` exists: the next run removes the stale previous output
    code, _, err = run_cli(capsys, "merge", cfg, out, "--quiet", "--force")
    assert code == 0 and f"removed '{dead_old}'" in err and not dead_old.exists()
    assert live_tmp.exists()  # still not ours to remove


def test_which_merger_takes_the_norms_is_what_the_docs_say(tmp_path, capsys):
    """docs/config.md: with tsv_m the norms and biases are merged by tsv_m's own
    `fallback` (times its scaling); the top-level fallback takes only excluded tensors,
    and `validate` says so."""
    import json

    import torch

    cfg = make_inputs(
        tmp_path / "ex",
        merger={"name": "tsv_m", "scaling": 0.5},
        fallback={"name": "task_arithmetic", "scaling": 0.25},
        rules=[{"match": "lm_head", "exclude": True}],
    )
    code = main(["validate", str(cfg), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "note: tsv_m merges the tensors that are not matrices (norms, biases) itself, with its "
        "own fallback 'average' times its scaling; the top-level fallback takes only tensors a "
        "merger refuses or a rule excludes." in out
    )
    merged_dir = tmp_path / "out"
    assert main(["merge", str(cfg), str(merged_dir), "--quiet"]) == 0
    report = {t["name"]: t for t in json.loads((merged_dir / "merge_report.json").read_text())[
        "tensors"
    ]}
    norm = report["layers.0.norm.weight"]
    assert norm["handler"] == "recipe" and norm["merger"] == "tsv_m"
    assert report["lm_head.weight"]["handler"] == "fallback"
    assert report["lm_head.weight"]["merger"] == "task_arithmetic"
    # the values: base + 0.5 * mean(deltas) for the norm, base + 0.25 * sum for lm_head
    from tests.integration._pipeline_helpers import finetune, tiny_model

    base = tiny_model(0)
    fts = [finetune(base, t + 1) for t in range(2)]
    merged = load_output(merged_dir)
    for key, expected in (
        ("layers.0.norm.weight", base["layers.0.norm.weight"].double()
         + 0.5 * sum(f["layers.0.norm.weight"].double() - base["layers.0.norm.weight"].double()
                     for f in fts) / 2),
        ("lm_head.weight", base["lm_head.weight"].double()
         + 0.25 * sum(f["lm_head.weight"].double() - base["lm_head.weight"].double()
                      for f in fts)),
    ):
        assert torch.allclose(merged[key].double(), expected, atol=1e-6), key
