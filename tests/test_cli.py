"""The command-line shell: version, help, exit codes, rate parsing, import hygiene and shell completion."""

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mome_cli import __version__
from mome_cli.cli import RateListParam, RateParam, cli
from mome_cli.outputs import collect_inputs
from mome_cli.report import ExitCode, Report

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("transcribe", "evaluate", "train", "download")
HEAVY_MODULES = ("torch", "transformers", "numpy")


def invoke(*args: str):
    return CliRunner().invoke(cli, args, prog_name="mome")


def explain(result) -> str:
    """What a failed assertion shows about a CliRunner result or a CompletedProcess."""
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    extra = f"\nexception: {result.exception!r}" if getattr(result, "exception", None) else ""
    return f"exit {code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}{extra}"


def run_mome(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m mome_cli ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "mome_cli", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=60,
    )


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"mome {__version__}\n", explain(result)


def test_version_subprocess():
    result = run_mome("--version")
    assert result.returncode == 0 and result.stdout == f"mome {__version__}\n", explain(result)


def test_console_script_registered():
    (script,) = entry_points(group="console_scripts", name="mome")
    assert script.value == "mome_cli.cli:main"


def test_help_lists_commands_in_contract_order():
    result = invoke("--help")
    assert result.exit_code == 0, explain(result)
    positions = [result.stdout.find(f"  {command} ") for command in COMMANDS]
    assert -1 not in positions and positions == sorted(positions), explain(result)


@pytest.mark.parametrize("args", [["--help"], ["transcribe", "--help"]], ids=" ".join)
def test_help_imports_nothing_heavy(args):
    code = (
        "import sys\n"
        "from mome_cli.cli import main\n"
        f"sys.argv = ['mome', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, explain(result)
    assert result.stdout.splitlines()[-1] == "HEAVY=", explain(result)


def test_transcribe_hands_over_to_the_library_before_torch_is_imported(tmp_path):
    """transcribe.run reads the first input while torch is imported and the model loads: the command must not
    import torch itself (the options and the usage error it needs are in the torch-free mome_cli.options)."""
    (tmp_path / "x.mp4").write_bytes(b"")
    code = (
        "import sys\n"
        "from mome_cli import transcribe\n"
        "from mome_cli.cli import main\n"
        "def run(*args, **kwargs):\n"
        "    print('HEAVY=' + ','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
        "    raise SystemExit(0)\n"
        "transcribe.run = run\n"
        f"sys.argv = ['mome', 'transcribe', {str(tmp_path / 'x.mp4')!r}, '--roi', '--stdout']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, explain(result)
    assert result.stdout.splitlines()[-1] == "HEAVY=", explain(result)


def test_the_entry_point_freezes_what_it_made_before_exit(monkeypatch):
    """The process's objects are frozen on the way out, whatever the exit (here --help's), so that Python's last
    garbage collection does not walk torch's objects (0.3 s of a 2 s command on 2 cores)."""
    import gc

    from mome_cli import cli as cli_module

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(sys, "argv", ["mome", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    assert exit_info.value.code == 0 and frozen == [True]
    assert not cli_module._in_program  # later in-process calls are not taken for the program


@pytest.mark.parametrize("args", [("-q", "-v", "download"), ("-v", "download", "-q"),
                                  ("-q", "transcribe", "x.mp4", "-v"), ("transcribe", "x.mp4", "-v", "-q")])
def test_quiet_and_verbose_conflict(args):
    result = invoke(*args)
    assert result.exit_code == ExitCode.USAGE and "cannot be used together" in result.stderr, explain(result)


@pytest.mark.parametrize("text, rate", [("4,2", (4, 2)), ("4", (4,)), (" 16 , 5 ", (16, 5))])
def test_rate_param(text, rate):
    assert RateParam().convert(text, None, None) == rate


@pytest.mark.parametrize("text", ["4,x", "", "4,", "0,2", "-4,2", "4,2,1", "4;2"])
def test_rate_param_rejects(text):
    with pytest.raises(click.BadParameter, match="such as 4,2"):
        RateParam().convert(text, None, None)


@pytest.mark.parametrize(
    "text, rates",
    [("4,2;4,5", ((4, 2), (4, 5))), ("16,5", ((16, 5),)), ("4,2; 16,5;", ((4, 2), (16, 5))), ("all", None)],
)
def test_rate_list_param(text, rates):
    assert RateListParam(allow_all=True).convert(text, None, None) == rates


@pytest.mark.parametrize("text", ["", ";", "4,2;x", "4,2;4,2,2", "all"])
def test_rate_list_param_rejects(text):
    with pytest.raises(click.BadParameter, match="such as"):
        RateListParam().convert(text, None, None)


def test_trains_rates_message_asks_for_pairs_only():
    """train's --rates takes A,V pairs in every mode: its message offered "4;16" for mode a or v (evaluate's form),
    which train then refused as no pairs."""
    result = invoke("train", "-o", "run", "--steps", "1", "--rates", "x")
    assert result.exit_code == ExitCode.USAGE, explain(result)
    assert "'x': expected A,V pairs separated by ';' such as \"4,2;4,5\"\n" in result.stderr, explain(result)
    assert "one rate each" not in result.stderr, explain(result)


def test_bad_rate_is_a_usage_error():
    result = invoke("transcribe", "--rate", "4,x", "clip.mp4")
    assert result.exit_code == ExitCode.USAGE, explain(result)
    assert "'4,x'" in result.stderr and "such as 4,2" in result.stderr, explain(result)


@pytest.mark.parametrize(
    "ok, skipped, failed, code",
    [
        (3, 0, 0, ExitCode.OK),
        (0, 2, 0, ExitCode.OK),
        (2, 1, 0, ExitCode.OK),
        (0, 0, 0, ExitCode.OK),
        (2, 0, 1, ExitCode.PARTIAL),
        (0, 1, 1, ExitCode.PARTIAL),
        (0, 0, 2, ExitCode.FAILURE),
    ],
)
def test_report_return_code(ok, skipped, failed, code):
    assert Report(ok=ok, skipped=skipped, failed=failed).return_code == code


def test_report_summary():
    assert Report(ok=3, skipped=1, failed=1).summary() == "3 ok, 1 skipped, 1 failed"


@pytest.mark.parametrize("command, module, args", [
    ("transcribe", "transcribe", ["-o", "out"]),
    ("evaluate", "evaluate", ["--dataset", "m.jsonl", "-o", "out"]),
])
def test_ctrl_c_ends_a_command_with_130_not_click_s_1(tmp_path, monkeypatch, command, module, args):
    """...and, in the `mome` program (not when called in-process, as here at first), ignores more Ctrl-Cs while it
    exits: another would kill the process by SIGINT, or print a traceback."""
    import importlib
    import signal

    from mome_cli import cli as cli_module

    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.append((signum, handler)))
    handlers = []

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(f"mome_cli.{module}"), "run", interrupted)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "audio": "a.wav", "text": "a"}\n')
    for in_program in (False, True):
        monkeypatch.setattr(cli_module, "_in_program", in_program)
        result = invoke(command, *(["a.wav"] if command == "transcribe" else []), *args)
        assert result.exit_code == 130 and result.stderr.strip() == "interrupted", explain(result)
        assert handlers == ([(signal.SIGINT, signal.SIG_IGN)] if in_program else [])


def test_ctrl_c_under_torchrun_is_said_once_by_rank_0(tmp_path, monkeypatch):
    """torchrun hands a Ctrl-C to every process: during a train's preparation each said "interrupted"."""
    from mome_cli import training

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "run", interrupted)
    monkeypatch.chdir(tmp_path)
    for rank, said in (("1", ""), ("0", "interrupted")):
        monkeypatch.setenv("RANK", rank)
        result = invoke("train", "--train", "t.jsonl", "-o", "out", "--steps", "1")
        assert result.exit_code == 130 and result.stderr.strip() == said, explain(result)


def test_exit_codes_match_contract():
    assert [(code.name, int(code)) for code in ExitCode] == [
        ("OK", 0), ("FAILURE", 1), ("USAGE", 2), ("PARTIAL", 3), ("MISSING", 4)
    ]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_current(shell):
    result = run_mome(env={"_MOME_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0, explain(result)
    path = ROOT / "completions" / f"mome.{shell}"
    assert path.read_text() == result.stdout, f"{path} is stale: run scripts/gen_completions.sh"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_syntax(shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    result = subprocess.run([shell, "-n", str(ROOT / "completions" / f"mome.{shell}")], capture_output=True, text=True)
    assert result.returncode == 0, explain(result)


def test_fish_completion_keeps_descriptions_with_commas(tmp_path):
    """Click's fish script split each completion at every comma: "--mode<TAB>Audio" for "Audio, video or both."."""
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    bin_dir = Path(sys.executable).parent  # where `mome` is, for the script's call back
    result = subprocess.run(["fish", "-c", f"source {ROOT / 'completions' / 'mome.fish'}; "
                                           "complete -C 'mome transcribe --mo'"], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=60)
    assert "--mode\tAudio, video or both." in result.stdout.splitlines(), explain(result)


def test_bash_completion_of_command():
    result = run_mome(env={"_MOME_COMPLETE": "bash_complete", "COMP_WORDS": "mome tr", "COMP_CWORD": "1"})
    assert result.returncode == 0, explain(result)
    assert "plain,transcribe" in result.stdout.splitlines(), explain(result)


@pytest.mark.parametrize("words, cword, expected", [
    ("mome transcribe --model mome-", "3", {"mome-1b", "mome-3b", "mome-8b"}),
    ("mome evaluate --model t", "3", {"tiny"}),
    ("mome transcribe -f j", "3", {"json", "jsonl"}),
])
def test_bash_completion_of_models_and_formats(words, cword, expected):
    result = run_mome(env={"_MOME_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword})
    offered = {line.split(",", 1)[1] for line in result.stdout.splitlines() if line.startswith("plain,")}
    assert offered == expected, explain(result)


def test_every_command_takes_v_and_q_after_it_too():
    """The contract's -v adds detail to every command (train: stage times and saves; download: where each part
    lies), before or after the subcommand."""
    for command in ("transcribe", "evaluate", "train", "download"):
        shown = invoke(command, "--help").stdout
        assert "--verbose" in shown and "--quiet" in shown, command


@pytest.mark.parametrize("pattern", ["**/*.mp4", "sub/*.mp4", "sub\\*.mp4", ".", "..", ""])
def test_glob_takes_file_name_patterns_only(tmp_path, pattern):
    """A path pattern would look into sub-folders without -r (pathlib's `**`) or match nothing: refused, exit 2."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.mp4").write_bytes(b"")
    result = invoke("transcribe", str(tmp_path), "--glob", pattern)
    assert result.exit_code == ExitCode.USAGE and "matches file names" in result.stderr, explain(result)


def test_a_folder_is_searched_for_the_kinds_of_media_phones_and_recorders_make(tmp_path):
    """A folder of .opus voice notes, .m4v and .MTS videos was "no media files found"; a glob matching nothing is
    named in the message."""
    for name in ("voice.opus", "clip.m4v", "cam.MTS", "notes.ts"):  # .ts: a TypeScript source as often as a video
        (tmp_path / name).write_bytes(b"")
    found = collect_inputs([str(tmp_path)])
    assert sorted(i.path.name for i in found) == ["cam.MTS", "clip.m4v", "voice.opus"]
    result = invoke("transcribe", str(tmp_path), "--glob", "*.png")
    assert result.exit_code == ExitCode.USAGE and f"no media files named '*.png' found in {tmp_path}" in \
        result.stderr, explain(result)


def test_stdout_goes_above_the_bar_only_when_it_is_the_bars_terminal():
    """--stdout's lines went to the bar's terminal (stderr's) whenever stdout was a terminal, also another one."""
    import pty

    from mome_cli.cli import _same_terminal

    (master, terminal), (other_master, other) = pty.openpty(), pty.openpty()
    with open(terminal, "w") as first, open(os.dup(terminal), "w") as again, open(other, "w") as second, \
            open(os.devnull, "w") as null:
        assert _same_terminal(first, again) and not _same_terminal(first, second)
        assert not _same_terminal(None, first) and not _same_terminal(null, first)
    os.close(master), os.close(other_master)


def test_help_says_what_batch_size_and_rate_take():
    """--batch-size said "Inputs decoded together" with no default: it is the segments decoded together, 8 unless
    given; --rate said nothing of the one rate that modes a and v take (the README and the contract do)."""
    for command in ("transcribe", "evaluate"):
        shown = " ".join(invoke(command, "--help").stdout.split())
        assert "--batch-size INTEGER RANGE Segments decoded together" in shown and "[default: 8; x>=1]" in shown
    shown = " ".join(invoke("transcribe", "--help").stdout.split())
    assert "A in mode a, V in mode v" in shown


@pytest.mark.parametrize("command", ["transcribe", "evaluate"])
@pytest.mark.parametrize("beam", ["65", "5000", "100000"])
def test_a_huge_beam_is_a_usage_error_before_anything_is_read(command, beam):
    """--beam 5000 held 17 GB and ran on for minutes on a 10 s clip, --beam 100000 ended in a MemoryError traceback:
    a beam over MAX_BEAM is refused at once, exit 2, one line giving the range."""
    from mome_cli.options import MAX_BEAM

    target = ["examples/demo.mp4"] if command == "transcribe" else ["--dataset", "examples"]
    result = invoke(command, *target, "--beam", beam)
    assert result.exit_code == ExitCode.USAGE, explain(result)
    assert f"'--beam': {beam} is not in the range 1<=x<={MAX_BEAM}" in result.stderr, explain(result)
    assert invoke(command, "--help").exit_code == 0 and f"at most {MAX_BEAM}" in invoke(command, "--help").stdout


def test_the_readme_names_every_module_and_only_files_that_exist():
    """The README's map of the code ("The model in code") left out training, evaluation and the CLI: a reader
    looking for them found no pointer. Every module is named, and every repository path it names exists."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:mome_cli|scripts|examples|recipes|benchmarks|completions)/[\w./-]+)`", readme))
    assert {path for path in named if not (ROOT / path).exists()} == set()
    modules = {f"mome_cli/{p.name}" for p in (ROOT / "mome_cli").glob("*.py") if not p.name.startswith("__")}
    assert modules - named == set()


def test_an_empty_input_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    """`mome transcribe ""` (an unset variable in `mome transcribe "$CLIP"`) transcribed every media file in the
    current folder: pathlib reads "" as "."."""
    (tmp_path / "x.wav").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for args in ([""], ["x.wav", ""]):
        result = invoke("transcribe", *args, "--model", "nosuchmodel")
        assert result.exit_code == ExitCode.USAGE and "'': an empty name is no file or folder" in result.stderr, \
            explain(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]
