"""The ``mome`` command line: transcribe, evaluate, train, download.

The contract is in CLI-CONTRACT.md. This module imports only click and rich: command bodies import library code
(torch, transformers, numpy) inside the function, so ``mome --help`` and TAB completion never load them.
"""

import contextlib
import gc
import os
import signal
import sys
from dataclasses import dataclass

import click
import click.shell_completion
from rich.console import Console

from . import __version__
from .options import MAX_BEAM
from .outputs import one_line
from .report import ExitCode

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt", "jsonl", "all")
MODES = ("a", "v", "av")

# Messages, warnings and progress go to stderr; rich honours NO_COLOR and drops colour when stderr is not a terminal.
stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)  # ":a:" in a message is text


class _FishComplete(click.shell_completion.FishComplete):
    """Click's fish script splits each completion at every comma: a description was cut at its first one ("--mode
    Audio" for "Audio, video or both."). Only the comma after the kind is a separator."""

    source_template = click.shell_completion.FishComplete.source_template.replace(
        'string split "," $completion', 'string split -m 1 "," $completion')


click.shell_completion.add_completion_class(_FishComplete, "fish")


@dataclass
class GlobalOptions:
    """What the group's options leave in ``ctx.obj`` for every command."""

    quiet: bool = False  # only errors on stderr
    verbose: int = 0  # number of -v given: more detail


def _parse_rate(text: str) -> tuple[int, ...] | None:
    """Parse "4,2" into (4, 2) and "4" into (4,); None unless one or two positive integers."""
    try:
        rate = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        return None
    return rate if 1 <= len(rate) <= 2 and min(rate) >= 1 else None


class RateParam(click.ParamType):
    """``--rate A,V``: audio and video compression rates, or one rate (``--rate 4``) in mode a or v."""

    name = "rate"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        rate = _parse_rate(value)
        if rate is None:
            self.fail(f"{value!r}: expected A,V such as 4,2 (or one rate such as 4 in mode a or v)", param, ctx)
        return rate


class RateListParam(click.ParamType):
    """``--rates "4,2;4,5"``: rate pairs separated by ';'. With ``allow_all``, "all" gives None (every trained pair)."""

    name = "rates"

    def __init__(self, allow_all: bool = False):
        self.allow_all = allow_all

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        if self.allow_all and value.strip().lower() == "all":  # any case, as --snr takes "clean"
            return None
        rates = [_parse_rate(part) for part in value.split(";") if part.strip()]
        if not rates or None in rates:
            # evaluate's --rates (allow_all) takes one rate each in mode a or v; train's takes pairs in every mode
            expected = "'all', or A,V pairs" if self.allow_all else "A,V pairs"
            single = " (in mode a or v, one rate each will do: \"4;16\")" if self.allow_all else ""
            self.fail(f"{value!r}: expected {expected} separated by ';' such as \"4,2;4,5\"{single}", param, ctx)
        return tuple(rates)


INTERRUPTED = 128 + 2  # 128 + SIGINT


class OrderedGroup(click.Group):
    """Lists commands in the order they are defined (the order of the contract), not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        """Ctrl-C ends any command with 130, as a shell reports a process ended by SIGINT (click's own "Aborted!"
        exits 1, the code of a batch where nothing succeeded). What was written before it is complete: every file
        is written under a temporary name first. In the `mome` program, more Ctrl-Cs while it exits are ignored:
        they would turn 130 into a death by SIGINT or a traceback. (Not when the CLI is called in-process, by a
        test's runner or a notebook, whose later Ctrl-Cs, and the processes it starts, must still get SIGINT.)"""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if _in_program:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every process gets it: rank 0 says it
                click.echo("\ninterrupted", err=True)
            ctx.exit(INTERRUPTED)


@click.group(cls=OrderedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mome", message="%(prog)s %(version)s")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (also after the subcommand).")
@click.option("-v", "--verbose", count=True, help="Print more detail: the model, each file's times (transcribe), "
              "each rate and SNR as it is scored (evaluate), stage times and saves (train), where each part lies "
              "(download); -vv adds each segment's text (also after the subcommand).")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: int):
    """Audio-visual speech recognition with a Mixture of Matryoshka Experts (MoME)."""
    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose cannot be used together.")
    ctx.obj = GlobalOptions(quiet=quiet, verbose=verbose)


def _subcommand_verbosity(ctx: click.Context, param, value):
    """-q and -v given after the subcommand (`mome transcribe x.mp4 -v`) count as they do before it."""
    if not value:
        return
    options = ctx.find_object(GlobalOptions)
    if param.name == "quiet":
        options.quiet = True
    else:
        options.verbose += value
    if options.quiet and options.verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose cannot be used together.", ctx)


def say(message: str) -> None:
    """A message on stderr as it is (no markup), on one line: a file's name in it may hold a newline or ESC."""
    stderr.print(one_line(message), markup=False, highlight=False)


def verbosity_options(f):
    """-q/--quiet and -v/--verbose on a subcommand too, with the group's meaning."""
    f = click.option("-v", "--verbose", count=True, expose_value=False, callback=_subcommand_verbosity,
                     help="Print more detail (as `mome -v`).")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_subcommand_verbosity,
                        help="Print nothing but errors (as `mome -q`).")(f)


def _name_pattern(ctx: click.Context, param, value):
    """--glob matches file names, in the folder or, with -r, in every sub-folder: a path pattern ('/', '**') or a
    name no file has ('', '.', '..') is refused."""
    if value is not None and ("/" in value or "\\" in value or "**" in value or value.strip(".") == ""):
        raise click.BadParameter(f"{value!r}: PATTERN matches file names, such as '*.mp4' (-r looks for them in "
                                 f"every sub-folder too)", ctx, param)
    return value


def _named_inputs(ctx: click.Context, param, value):
    """An empty INPUT ("", as an unset shell variable gives) names no file: pathlib reads it as ".", and the run
    transcribed every media file in the current folder into it. "-" is standard input, as for ffmpeg (a file of
    that name is ./-)."""
    if any(argument == "" for argument in value):
        raise click.BadParameter("'': an empty name is no file or folder", ctx, param)
    return tuple("/dev/stdin" if argument == "-" and os.path.exists("/dev/stdin") else argument for argument in value)


def _complete_model(ctx, param, incomplete):
    """Preset names, then directories (checkpoints)."""
    from click.shell_completion import CompletionItem

    from .hub import PRESETS

    return [CompletionItem(name) for name in PRESETS if name.startswith(incomplete)] + [
        CompletionItem(incomplete, type="dir")]


def model_options(f):
    """--model, --adapter, --mode, --device, --beam, --batch-size: shared by transcribe and evaluate."""
    options = [
        click.option("--model", default="demo", show_default=True, shell_complete=_complete_model,
                     help="Preset (tiny, demo, mome-1b, mome-3b, mome-8b) or checkpoint directory."),
        click.option("--adapter", type=click.Path(file_okay=False), help="MoME adapter checkpoint directory."),
        click.option("--mode", type=click.Choice(MODES), default="av", show_default=True, help="Audio, video or both."),
        click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True),
        click.option("--beam", type=click.IntRange(1, MAX_BEAM), default=1, show_default=True,
                     help=f"Beam size (1: greedy; at most {MAX_BEAM}: memory and time grow as beam x batch size, "
                          "gains stop long before)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Segments decoded together."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(), callback=_named_inputs)
@click.option("-r", "--recursive", is_flag=True, help="Look into sub-folders of folder inputs.")
@click.option("--glob", metavar="PATTERN", callback=_name_pattern,
              help="Only files of folder inputs whose name matches PATTERN, ignoring case (e.g. '*.mp4'; files "
                   "named as INPUT are always taken).")
@model_options
@click.option("--rate", type=RateParam(), metavar="A,V",
              help="Compression rates: A,V in mode av, A in mode a, V in mode v (or a pair: its half) [the "
                   "model's first trained pair].")
@click.option("--any-rate", is_flag=True, help="Accept a rate the model was not trained on.")
@click.option("--roi", is_flag=True, help="Videos are already mouth crops: skip face detection.")
@click.option("--max-segment", type=click.FloatRange(min=1.0), metavar="SECONDS",
              help="Cut inputs at pauses into segments of at most this long [20, or the model's audio window].")
@click.option("--pack", is_flag=True, help="Cut at pauses only to keep segments within --max-segment, not at each one.")
@click.option("-o", "--output-dir", type=click.Path(), default=".", show_default=True)
@click.option("-f", "--format", "formats", type=click.Choice(OUTPUT_FORMATS), multiple=True, default=("txt",),
              show_default=True, help="Output format (repeatable).")
@click.option("--stdout", is_flag=True, help="Print '<input>\\t<text>' lines; alone (no -o, no -f), instead of files.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs instead of skipping their inputs.")
@click.option("--detector", type=click.Choice(("sfd", "blazeface")), default="sfd", show_default=True,
              help="Face detector (blazeface is faster, sfd finds smaller faces).")
@click.option("--no-cache", is_flag=True, help="Don't reuse or store preprocessed clips.")
@verbosity_options
@click.pass_context
def transcribe(ctx: click.Context, inputs, recursive, glob, model, adapter, mode, device, beam, batch_size, rate,
               any_rate, roi, max_segment, pack, output_dir, formats, stdout, overwrite, detector, no_cache):
    """Transcribe media files or folders (voice and lips, or either alone)."""
    from pathlib import Path

    from . import transcribe as library
    from .hub import HubError, mome_home
    from .options import RecognizeOptions, UsageProblem
    from .outputs import collect_inputs
    from .preprocess import PreprocessOptions

    if rate is not None and mode == "av" and len(rate) != 2:
        raise click.BadParameter("mode av takes an audio and a video rate, e.g. --rate 4,2", param_hint="--rate")
    empty = []
    found = collect_inputs(list(inputs), recursive=recursive, glob=glob, empty=empty)
    hint = "" if recursive else " (use -r to search sub-folders)"
    if not found:
        matching = f" named {glob!r}" if glob else ""
        raise click.UsageError(one_line(f"no media files{matching} found in {', '.join(inputs)}{hint}; a folder is "
                                        "searched by extension (mp4, wav, ...: see README, Media), a file of another "
                                        "kind is read when named itself"))
    quiet = ctx.obj.quiet
    log = say
    quiet_log = (lambda message: log(message) if message.startswith("error") else None) if quiet else log
    for folder in empty:  # beside inputs that have some: said, not an error
        quiet_log(f"warning: {folder}: no media files found{hint}")
    default = click.core.ParameterSource.DEFAULT
    files = not stdout or any(ctx.get_parameter_source(name) != default for name in ("output_dir", "formats"))
    job = library.TranscribeJob(
        inputs=found, output_dir=Path(output_dir), formats=library.expand_formats(formats) if files else [],
        overwrite=overwrite,
        stdout=stdout, model=model, adapter=adapter, device=device,
        cache_dir=None if no_cache else mome_home() / "cache" / "clips", verbose=ctx.obj.verbose,
    )
    prep = PreprocessOptions(mode=mode, roi=roi, detector=detector, device=device)
    recog = RecognizeOptions(mode=mode, rate=rate, any_rate=any_rate, beam=beam, batch_size=batch_size,
                             max_segment=max_segment, pack=pack)
    try:
        with _progress(len(found), "transcribing", enabled=stderr.is_terminal and not quiet) as advance:
            report = library.run(job, prep, recog, quiet_log, advance)
    except HubError as e:
        say(f"mome transcribe: {e}")
        ctx.exit(e.exit_code)
    except UsageProblem as e:
        raise click.UsageError(one_line(e)) from e
    except (library.StdoutError, library.OutputFolderError) as e:
        say(f"mome transcribe: {e}")
        ctx.exit(ExitCode.FAILURE)
    if not quiet:
        wrote = files and (report.ok or report.skipped)  # when every input failed, there is nothing to point to
        log(report.summary() + (f" (outputs in {output_dir})" if wrote else ""))
    ctx.exit(report.return_code)


@cli.command()
@click.option("--dataset", required=True, metavar="lrs3|lrs2|PATH", help="Name, manifest (.jsonl, .csv) or folder.")
@click.option("--data-root", type=click.Path(file_okay=False), envvar="MOME_DATA", help="Dataset folder [$MOME_DATA].")
@click.option("--split", default="test", show_default=True,
              help="Split of lrs3 or lrs2, or of a folder holding <split>.jsonl or <split>.csv.")
@model_options
@click.option("--rates", type=RateListParam(allow_all=True), default="all", metavar="all|A,V[;A,V...]",
              help="Rate pairs [all trained].")
@click.option("--any-rate", is_flag=True, help="Accept rates the model was not trained on.")
@click.option("--snr", default="clean", show_default=True, metavar="clean|DB[,...]",
              help="Comma-separated SNRs in dB, 'clean' for no noise.")
@click.option("--noise", type=click.Path(exists=True, dir_okay=False),
              help="Noise file [babble from the dataset's own utterances].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Picks the babble talkers and noise windows.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate the first N utterances only.")
@click.option("--max-segment", type=click.FloatRange(min=1.0), metavar="SECONDS",
              help="Cut inputs at pauses into segments of at most this long [20, or the model's audio window].")
@click.option("--pack/--every-pause", default=None,
              help="Cut utterances at pauses only to keep segments within --max-segment, or at each pause as "
                   "transcribe does [--pack for auto_avsr CSV manifests (LRS2/LRS3: whole), else --every-pause].")
@click.option("--roi/--no-roi", default=None,
              help="Videos are mouth crops: skip face detection [on for auto_avsr CSV manifests, else off].")
@click.option("--detector", type=click.Choice(("sfd", "blazeface")), default="sfd", show_default=True,
              help="Face detector when videos are not mouth crops.")
@click.option("--no-cache", is_flag=True, help="Don't reuse or store preprocessed clips.")
@click.option("-o", "--output-dir", type=click.Path(), default="mome-eval", show_default=True)
@verbosity_options
@click.pass_context
def evaluate(ctx: click.Context, dataset, data_root, split, model, adapter, mode, device, beam, batch_size, rates,
             any_rate, snr, noise, seed, limit, max_segment, pack, roi, detector, no_cache, output_dir):
    """Word error rate on a dataset, per rate pair and SNR."""
    from pathlib import Path

    from . import evaluate as library
    from .data import DataError
    from .files import remove_folders, writable_folder
    from .hub import HubError, mome_home
    from .options import UsageProblem

    try:
        snrs = library.parse_snrs(snr)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--snr") from e
    quiet = ctx.obj.quiet
    log = say
    quiet_log = (lambda message: log(message) if message.startswith("error") else None) if quiet else log
    job = library.EvaluateJob(
        dataset=dataset, output_dir=Path(output_dir), data_root=Path(data_root) if data_root else None, split=split,
        model=model, adapter=adapter, device=device, mode=mode, rates=rates, any_rate=any_rate, snrs=snrs,
        noise=Path(noise) if noise else None, seed=seed, limit=limit, beam=beam, batch_size=batch_size, roi=roi,
        max_segment=max_segment, pack=pack, detector=detector,
        cache_dir=None if no_cache else mome_home() / "cache" / "clips", verbose=ctx.obj.verbose,
    )
    enabled = stderr.is_terminal and not quiet
    try:  # before the evaluation, not after it
        made = writable_folder(job.output_dir)
    except OSError as e:
        say(f"mome evaluate: cannot write to {output_dir}: {e.strerror or e}")
        ctx.exit(ExitCode.FAILURE)
    try:
        evaluation = library.run(job, quiet_log, lambda total, what: _progress(total, what, enabled))
    except (DataError, HubError, UsageProblem, KeyboardInterrupt) as e:
        remove_folders(made)  # nothing was written: no empty folders left behind
        if isinstance(e, KeyboardInterrupt):
            raise  # the group says "interrupted" and exits 130
        if isinstance(e, UsageProblem):
            raise click.UsageError(one_line(e)) from e
        say(f"mome evaluate: {e}")
        ctx.exit(e.exit_code)
    if evaluation.cells:
        click.echo(evaluation.table())  # first: the figures are not lost if the files cannot be written
    earlier = (job.output_dir / library.REPORT_FILE).is_file()  # replaced by this run's: said, not asked
    try:
        written = library.write_outputs(evaluation, job.output_dir)
    except OSError as e:
        say(f"mome evaluate: cannot write to {output_dir}: {e.strerror or e}")
        ctx.exit(ExitCode.FAILURE)
    if not written:
        quiet_log(f"warning: nothing was scored: the report of an earlier run in {output_dir} is left as it was")
    if not quiet:
        where = f" (report in {output_dir}{', replacing an earlier run' * earlier})" if written else ""
        log(f"{evaluation.evaluated} evaluated, {len(evaluation.failed)} failed{where}")
    ctx.exit(evaluation.return_code)


@cli.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML recipe; the options below "
              "override it (recipes/tiny.toml, recipes/demo.toml, recipes/mome-1b-lrs3.toml).")
@click.option("--model", help="Backbones: a preset (tiny, mome-1b, mome-3b, mome-8b) or a folder from "
              "`python -m mome_cli.pretrain backbones`.")
@click.option("--mode", metavar="MODE[,MODE...]", help="a, v or av [av]; or several, comma-separated (av,a,v): "
              "one model then serves each.")
@click.option("--train", "train_manifest", metavar="MANIFEST", type=click.Path(), help="A manifest (.jsonl, or "
              "auto_avsr's .csv), a folder of media files with a same-named .txt transcript beside each, or a corpus "
              "folder holding train.jsonl (or .csv).")
@click.option("--valid", "valid_manifest", metavar="MANIFEST", type=click.Path(), help="The same, for validation "
              "(a corpus folder's valid, val or dev manifest).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Checkpoint directory to write.")
@click.option("--steps", type=click.IntRange(min=1))
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-frames", type=click.IntRange(min=1))
@click.option("--lr", type=float)
@click.option("--rates", type=RateListParam(), metavar="A,V[;A,V...]", help='Rate pairs, e.g. "4,2;4,5;16,2;16,5".')
@click.option("--experts", type=click.IntRange(min=1), help="Routed experts N_r.")
@click.option("--shared", type=click.IntRange(min=0), help="Shared experts N_s.")
@click.option("--top-k", type=click.IntRange(min=1))
@click.option("--bottleneck", type=click.IntRange(min=1))
@click.option("--position", type=click.Choice(("mhsa", "ffn", "layer")))
@click.option("--lb-coef", type=float, help="Load-balancing loss coefficient.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), help="Safetensors file of initial values for "
              "trainable tensors (e.g. BACKBONES/projectors.safetensors); the rest start from the seed.")
@click.option("--precision", type=click.Choice(("bf16", "fp32")))
@click.option("--seed", type=int)
@click.option("--save-every", type=click.IntRange(min=1))
@click.option("--eval-every", type=click.IntRange(min=1))
@click.option("--log-every", type=click.IntRange(min=1), help="Steps between log lines.")
@click.option("--average-last", type=click.IntRange(min=1), help="Final model: the mean of the last K saves.")
@click.option("--roi/--no-roi", default=None, help="Videos are mouth crops [yes for auto_avsr .csv manifests].")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), help="[auto]; torchrun: one GPU per process.")
@click.option("--resume", is_flag=True, help="Continue the run in --output exactly where its last save left it "
              "(Ctrl-C or SIGTERM stops a run after its step and saves there).")
@verbosity_options
@click.pass_context
def train(ctx: click.Context, config, resume, **flags):
    """Train MoME adapters on frozen backbones (single process, or under torchrun: one process per GPU)."""
    from . import training
    from .data import DataError
    from .hub import HubError
    from .train_config import ConfigError, resolve_config

    names = {"train_manifest": "train", "valid_manifest": "valid"}
    overrides = {names.get(k, k): v for k, v in flags.items() if v is not None}
    if "steps" in overrides and "epochs" in overrides:
        raise click.UsageError("--steps and --epochs cannot be used together.")
    try:
        train_config = resolve_config(config, overrides, resume=resume)
        training.run(train_config, resume=resume, quiet=ctx.obj.quiet, verbose=ctx.obj.verbose)
    except ConfigError as e:
        if not training.is_main_process():  # under torchrun every process meets it: rank 0 says it
            ctx.exit(ExitCode.USAGE)
        raise click.UsageError(one_line(e)) from e
    except (DataError, HubError) as e:
        if training.is_main_process():
            say(f"mome train: {e}")
        ctx.exit(e.exit_code)
    except training.TrainingError as e:
        if training.is_main_process():
            say(f"mome train: {e}")
        ctx.exit(ExitCode.FAILURE)
    except training.TrainingStopped as e:
        if training.is_main_process():
            say(f"mome train: {e}")
        ctx.exit(128 + e.signal_number)  # as a shell reports a process ended by that signal: INTERRUPTED for Ctrl-C


@cli.command()
@click.argument("names", metavar="[NAME...]", nargs=-1)
@click.option("--list", "list_cached", is_flag=True,
              help="Show what is cached, with sizes, and which presets are complete.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder [$MOME_HOME]; the other commands "
              "read $MOME_HOME: set it to this folder for them.")
@click.option("--revision", help="Branch, tag or commit of the LLM (and adapter) [the preset's]; a checkpoint trained "
              "on one loads that one.")
@click.option("--token", help="Hugging Face token, for gated models [$HF_TOKEN].")
@click.option("--offline", is_flag=True, help="Use no network: check the cache and report what is missing "
              "[$HF_HUB_OFFLINE].")
@click.option("--force-download", "force", is_flag=True, help="Download every file NAME needs again, cached or not "
              "(a damaged one that mome names when it cannot load it).")
@verbosity_options
@click.pass_context
def download(ctx: click.Context, names, list_cached, cache_dir, revision, token, offline, force):
    """Fetch the models NAME needs into the cache (presets: tiny, demo, mome-1b, mome-3b, mome-8b)."""
    from pathlib import Path

    from . import hub

    unknown = [name for name in names if name not in hub.PRESETS]
    if unknown:
        raise click.BadParameter(f"unknown preset {unknown[0]!r}; known presets: {', '.join(hub.PRESETS)}",
                                 param_hint="NAME")
    if not names and not list_cached:
        raise click.UsageError(f"name a preset to download ({', '.join(hub.PRESETS)}), or use --list.")
    home = Path(cache_dir) if cache_dir else hub.mome_home()
    if force and (list_cached or offline or hub.hub_offline()):
        raise click.UsageError("--force-download downloads: it goes with neither --list nor --offline "
                               "(HF_HUB_OFFLINE=1)")
    if list_cached:
        click.echo(hub.cache_listing(home, list(names), revision), nl=False)
        return
    quiet = ctx.obj.quiet
    log = (lambda message: None) if quiet else say
    console = stderr if stderr.is_terminal and not quiet else None
    if revision and not any(hub.PRESETS[name].llm or hub.PRESETS[name].adapter for name in names):
        log(f"warning: --revision is the LLM's (and adapter's): {', '.join(names)} fetch{'es' * (len(names) == 1)} "
            "neither, so it is not used")
    try:
        for name in names:
            resolved = hub.download_preset(name, home, revision=revision, token=token, offline=offline or None,
                                           console=console, log=log, force=force)
            if ctx.obj.verbose:  # where each part lies, as transcribe and train will load it
                for part in ("llm", "audio", "video", "face_alignment", "adapter"):
                    if (path := getattr(resolved, part)) is not None:
                        say(f"  {part.replace('_', '-')}: {path}")
    except hub.HubError as e:
        say(f"mome download: {e}")
        ctx.exit(e.exit_code)
    if cache_dir and home.resolve() != hub.mome_home().resolve():  # transcribe would not look there
        log(f"transcribe, evaluate and train read the cache in $MOME_HOME ({hub.mome_home()}): run them with "
            f"MOME_HOME={home} to use this one")


def _same_terminal(one, other) -> bool:
    """Whether two streams (None when closed) write to one terminal."""
    try:
        return one.isatty() and other.isatty() and os.fstat(one.fileno()).st_rdev == os.fstat(other.fileno()).st_rdev
    except (AttributeError, OSError, ValueError):  # closed, or not a file (a test's stand-in)
        return False


@contextlib.contextmanager
def _progress(total: int, what: str, enabled: bool):
    """Yields advance(n): a rich progress bar on stderr when enabled (a TTY, not --quiet), else nothing."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # What is printed to stdout (--stdout's lines) goes above the bar only when stdout is that terminal too: rich
    # would otherwise send it to the bar's console, stderr, and a pipe or a file given stdout would get nothing.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr, transient=True, redirect_stdout=_same_terminal(sys.stdout, sys.stderr)) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n=1: bar.advance(task, n)


_in_program = False  # True while main() runs: this process is `mome` (or `python -m mome_cli`), not a caller


def main():
    global _in_program
    _in_program = True
    try:
        cli.main(prog_name="mome")
    finally:
        _in_program = False  # main() called in-process (a test) leaves the CLI as it found it
        # Python's last garbage collection at exit walks every object the process made: after `import torch`, 0.3 s
        # on 2 cores (benchmarks/RESULTS.md, issue #8). Outputs are written and closed by now; frozen objects are
        # skipped by that walk (atexit handlers still run, and what is not in a reference cycle is still freed).
        gc.freeze()
