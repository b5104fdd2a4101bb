"""`mome train`: MoME modules and projectors trained on frozen encoders and a frozen LLM, every rate pair at once.

One process (the CPU, or one GPU):

    mome train --config recipes/tiny.toml --train data/train.jsonl --valid data/valid.jsonl -o runs/tiny

One process per GPU with torchrun (several nodes: --nnodes N --node_rank I --rdzv-endpoint HOST:PORT instead of
--standalone); `mome` is the same program as `python -m mome_cli`:

    torchrun --standalone --nproc_per_node 8 -m mome_cli train --config recipes/mome-1b-lrs3.toml \\
        --train $MOME_DATA/lrs3/train.csv --valid $MOME_DATA/lrs3/valid.csv -o runs/mome-1b-lrs3

Continue a run that stopped (crash, kill, pre-emption) exactly where its last save left it: the same command with
--resume, or just `mome train -o DIR --resume`.

The output directory is a checkpoint directory (`--model DIR` for transcribe and evaluate):

    config.json, model.safetensors   the latest save, or the mean of the last K saves with average_last = K
    train_config.json                the resolved TrainConfig (recipe + flags)
    trainer_state.pt                 what --resume needs, in one file written atomically (the commit point of a save):
                                     trainable tensors, optimiser, scheduler, step, data position (epoch, batch
                                     index), RNG states; plain containers of tensors and numbers (weights_only load)
    snapshots/step-000100/           the last keep_last saves, each a checkpoint directory
    log.jsonl                        one JSON object per logged step ("train"), validation ("eval") and save ("save");
                                     "done" closes a run that has nothing left (a --resume of it returns at once)

This module is the recipe (Trainer: setup, train, cleanup; DDP; saving and resuming). The settings - TrainConfig,
recipes, flags, what a resume may change - are in train_config.py. A step is one batch per process; train_data.py
makes the batches (the same number for every process), keeps the frozen encoders' features and augments raw inputs
with randomness from (seed, step, rank), so resuming needs no augmentation state.

Test hook: with MOME_TRAIN_DIGEST_DIR set, every process writes rank-<rank>.sha256 there at the end: the SHA-256 of
its trainable tensors (see tensor_digest), so a test can check that data-parallel processes agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CONFIG_NAME as CHECKPOINT_CONFIG, CheckpointError, read_config, save_checkpoint
from .configuration import ModelConfig
from .files import atomic_write, atomic_write_text, remove_folders, writable_folder
from .hub import human_size, mome_home
from .outputs import counted, one_line
from .recognizer import build_recognizer, cached_commit
from .train_config import (CONFIG_NAME, LOCK_NAME, LOG_NAME, SNAPSHOTS, STATE_NAME, ConfigError, TrainConfig,
                           save_leftover)
from .train_data import TrainingData

STATE_FORMAT = 1  # bumped when trainer_state.pt changes layout
DIGEST_ENV = "MOME_TRAIN_DIGEST_DIR"
END_SETTINGS = ("average_last", "valid", "eval_limit")  # what the end of a run reads: a resume changing one redoes it


def _log_record(line: str) -> dict | None:
    """A log.jsonl line's record; None for a line that is not one (torn by a full disk or a crash, as the log is
    appended to)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _finite(value):
    """value with each NaN or infinity in it None, as report.json writes them: json.dumps wrote a WER with no reference
    words as Infinity, which is not JSON (strict parsers refuse the line)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _first_line(e: BaseException) -> str:
    """What an error says, on one line: its first (torch's run over many), or its kind when it says nothing."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class TrainingError(RuntimeError):
    """Training went wrong after it started (the CLI exits 1)."""


# ---- distributed helpers -----------------------------------------------------------------------------------------


def distributed_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) for a plain launch."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return distributed_env()[0] == 0


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def average_tensors(snapshots: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several state dicts with the same keys (computed in fp32, returned in their dtype)."""
    return {k: torch.stack([s[k].float() for s in snapshots]).mean(dim=0).to(snapshots[0][k].dtype)
            for k in snapshots[0]}


def _rng_state() -> dict:
    """Python, numpy and torch RNG states as plain lists and tensors (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the recipe --------------------------------------------------------------------------------------------------


class Trainer:
    """setup() builds everything (or restores it with resume), train() runs the loop, cleanup() ends the process
    group. Only the main process (rank 0) logs and writes.

    home is mome's cache ($MOME_HOME by default): backbones, preprocessed clips, features. face-alignment finds its
    weights as in every command ($TORCH_HOME if set, else mome's cache: preprocess.face_alignment_weights)."""

    def __init__(self, config: TrainConfig, resume: bool = False, quiet: bool = False, home: Path | None = None,
                 verbose: int = 0):
        self.config, self.resume, self.home = config, resume, Path(home) if home else mome_home()
        self.verbose = 0 if quiet else verbose  # -v: the model, each stage's time and each save
        self.rank, self.local_rank, self.world = distributed_env()
        self.main = self.rank == 0
        self.out = Path(config.output)
        self.quiet = quiet or not self.main
        self.console = None
        if not self.quiet:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
        self.step = self.epoch = self.index = 0
        self.saved_step = None  # the step of the run's last save (in trainer_state.pt)
        self._lock = None  # the run folder's, held by the main process (_lock_folder)
        self.elapsed = 0.0
        self.meter, self.meter_steps = None, 0  # summed losses since the last log line
        self._stop, self._ending = None, False  # the stop request while train() runs; past the last step
        self.complete = False  # a resumed run that has nothing left: its last step and its end are done
        self._validated_at_end = False  # the final validation is done (before a stop in the averaging)

    # -- messages --------------------------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(one_line(message), markup=False)

    def detail(self, message: str) -> None:
        if self.verbose:
            self.say(message)

    def record(self, kind: str, **values) -> None:
        if self.main:
            with open(self.out / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(_finite({"kind": kind, "step": self.step, **values}), allow_nan=False) + "\n")

    # -- setup -----------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        self._state = self._read_state() if self.resume else None
        if self._state is not None:  # what can be refused before the data is prepared, is
            self._check_state(self._state, cfg.steps)
            self.complete = self._is_complete(self._state)
            if self.complete:  # nothing to prepare: on LRS3 that is hours of features for nothing
                self.step = self._state["step"]
                return
        self.device = self._init_device()
        self.data = TrainingData(cfg, self.home, self.rank, self.world, self.say)  # manifests; DataError: exit 1 or 4
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        # The frozen encoders and LLM from the cache (never downloaded here; MissingModelError: exit 4) and new
        # trainable modules drawn from the seed: the same initial weights on every process and in every run.
        dtype = torch.bfloat16 if self.device.type == "cuda" and cfg.precision == "bf16" else torch.float32
        started = time.perf_counter()
        self.recognizer = build_recognizer(self._pinned(cfg.model_config()), self.home, str(self.device), dtype=dtype,
                                           name=str(self.out), seed=cfg.seed, source=cfg.model)
        self.model = self.recognizer.model
        self.detail(f"model: {self.recognizer.describe()}; built in {time.perf_counter() - started:.2f} s")
        if hasattr(self.recognizer.audio_encoder, "graphs"):  # no CUDA graphs here: a capture that failed would
            self.recognizer.audio_encoder.graphs = False  # leave CUDA's random generator unusable for dropout
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.init and not self.resume:
            self._warm_start(Path(cfg.init))
        made = []  # the folders made for the run: removed again if it cannot start
        if self.main:
            try:
                made = writable_folder(self.out)
            except OSError as e:
                raise TrainingError(f"cannot write to {self.out}: {e.strerror or e}") from e
            self._lock_folder(made)
            if not self.resume:  # traces of an earlier attempt that never saved
                (self.out / LOG_NAME).unlink(missing_ok=True)
                shutil.rmtree(self.out / SNAPSHOTS, ignore_errors=True)
                self._remove_save_leftovers()
        try:
            self._setup_run()
        except BaseException:
            if made:  # a folder that holds no checkpoint and no run to resume is not left behind
                for name in (LOG_NAME, LOCK_NAME):
                    (self.out / name).unlink(missing_ok=True)
                remove_folders(made)  # those still empty
            raise
        if self.main:  # once the run has started: a resume that could not start leaves the run's settings as they were
            atomic_write_text(self.out / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2) + "\n")

    def _lock_folder(self, made: list[Path]) -> None:
        """Hold the run folder's lock for as long as the run lasts (the system drops it when the process ends): a
        second `mome train` on the same -o, started before the first saved, would clear its log and both would write
        the same checkpoints."""
        import filelock

        self._lock = filelock.FileLock(str(self.out / LOCK_NAME))
        try:
            self._lock.acquire(timeout=0)
        except (filelock.Timeout, OSError) as e:
            if made:
                remove_folders(made)
            why = "another mome train is writing to it" if isinstance(e, filelock.Timeout) else e.strerror or e
            raise TrainingError(f"cannot train in {self.out}: {why}") from e
        if not self.resume and (self.out / STATE_NAME).exists():  # a run that began and saved since -o was checked
            raise TrainingError(f"{self.out} holds a training run already: pass --resume to continue it, or another -o")

    def _pinned(self, config: ModelConfig) -> ModelConfig:
        """config with the LLM's revision a commit: the one of the cached snapshot a branch (main) leads to, or, when
        resuming, the one the run was trained on. Its checkpoints then name the LLM they fit, which `mome download
        --revision` fetches, and a resumed run goes on with it even if the branch has moved since."""
        if config.llm.startswith("tiny") or Path(config.llm).exists():
            return config
        saved = [p / CHECKPOINT_CONFIG for p in (self.out, *reversed(self.snapshots()))]
        if self.resume and any(path.is_file() for path in saved):
            try:
                trained = read_config(next(path for path in saved if path.is_file()).parent)
            except CheckpointError as e:
                raise TrainingError(f"{e}; the run cannot be resumed without it") from e
            return dataclasses.replace(config, llm_revision=trained.llm_revision)
        commit = cached_commit(config.llm, config.llm_revision, self.home)
        return config if commit is None else dataclasses.replace(config, llm_revision=commit)

    def _setup_run(self) -> None:
        cfg = self.config
        started = time.perf_counter()
        self.data.prepare(self.recognizer, self.device)
        self.detail(f"data prepared in {time.perf_counter() - started:.1f} s")
        self.per_epoch = len(self.data.epoch_batches(0))
        self.total = cfg.steps or sum(len(self.data.epoch_batches(e)) for e in range(cfg.epochs))
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_fraction * self.total)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor(self.warmup, self.total,
                                                                                        cfg.min_lr_ratio))
        if self.resume:
            self._restore()
        self.ddp = EveryMode(self.model, cfg.modes)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Inputs are moved to the device here (device_ids=None). A run whose modes leave a modality out (a, v)
            # never reads that modality's projectors: DDP is told to leave them alone, rather than to look for unused
            # tensors, which walks the graph at every step.
            unread = [name for name, _ in self.ddp.named_parameters()
                      if any(name.startswith(f"model.{m}.") for m in ("audio", "video") if m[0] not in cfg.data_mode)]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.ddp, unread)
            self.ddp = DistributedDataParallel(self.ddp, device_ids=None, broadcast_buffers=False)
        counts = self.model.parameter_counts()
        self.say(f"training {counts['trainable']:,} parameters ({cfg.model} backbones, rates "
                 f"{'; '.join(f'{a},{v}' for a, v in cfg.rates)}) on {self.device} x {self.world}; "
                 f"{counted(len(self.data.kept), 'utterance')}, {counted(self.per_epoch, 'step')}/epoch, "
                 f"{counted(self.total, 'step')}"
                 + (f", resuming at step {self.step}" if self.resume else ""))
        if cfg.eval_every and not cfg.valid:
            self.say(f"warning: eval_every {cfg.eval_every} but no validation manifest: give --valid MANIFEST to "
                     "measure WER as it trains")

    def _warm_start(self, path: Path) -> None:
        """Initial values for some trainable tensors (e.g. projectors trained with the backbones, `init` in the
        recipe), the others keep their seeded ones. Every tensor in the file must fit one of the model's."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            given = load_file(path)
        except (OSError, SafetensorError) as e:
            raise ConfigError(f"init: cannot read {path}: {e}") from e
        own = self.model.trainable_state_dict()
        misfits = [k for k, t in given.items() if k not in own or own[k].shape != t.shape]
        if misfits or not given:
            raise ConfigError(f"init: {path} holds tensors this model does not train or that have other shapes "
                              f"({', '.join(misfits[:3]) or 'none at all'}); the model's rates and projector width "
                              "must match the file's")
        with torch.no_grad():
            for name, tensor in given.items():
                own[name].copy_(tensor)
        self.say(f"{len(given)} tensors initialised from {path}")

    def _init_device(self) -> torch.device:
        cfg = self.config
        cuda = cfg.device == "cuda" or cfg.device == "auto" and torch.cuda.is_available()
        if cuda and not torch.cuda.is_available():
            raise ConfigError("device cuda: no CUDA device is available")
        device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        if self.world > 1 and not torch.distributed.is_initialized():
            from datetime import timedelta

            # Long timeout: the first epoch's preprocessing and encoding happen between collectives.
            torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=3))
        if cfg.precision == "bf16" and not cuda:
            self.say("note: bf16 autocast is for CUDA; training in fp32 on the CPU")
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.precision == "bf16"
                         else contextlib.nullcontext())
        return device

    @staticmethod
    def _lr_factor(warmup: int, total: int, floor: float):
        """LambdaLR's factor after `step` optimiser steps: linear warmup, then a cosine from 1 down to floor."""

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    # -- the loop --------------------------------------------------------------------------------------------------

    def train(self) -> None:
        """The loop, to the last step. SIGINT or SIGTERM (Ctrl-C, a scheduler's pre-emption, `timeout`) stops it
        after the step under way, saved: TrainingStopped; a second signal stops the process at once."""
        if self.complete:
            self.say(f"{self.out} is complete: {self.step} steps, saved, its end done; nothing to do (a larger "
                     f"--steps or --epochs trains on)")
            return
        with _stop_signals(self.say) as stop:
            self._stop = stop
            try:
                self._loop(stop)
            finally:
                self._stop = None

    def _loop(self, stop: "_StopRequest") -> None:
        cfg = self.config
        started = time.monotonic() - self.elapsed
        names = [name for _, _, name in self._cells()]
        while self.step < self.total:
            batches = self.data.epoch_batches(self.epoch)
            if self.index >= len(batches):  # only after resuming with another number of processes
                self.epoch, self.index = self.epoch + 1, 0
                continue
            features, texts = self.data.inputs(batches[self.index], self.step)
            self.model.train()
            self.model.llm.eval()  # frozen backbone: no dropout
            with self.autocast:
                outs = self.ddp(features, texts)
            loss, lm_loss, lb_loss = (torch.stack([getattr(o, k) for o in outs]).mean()
                                      for k in ("loss", "lm_loss", "lb_loss"))
            loss.backward()  # DDP: gradients averaged over the processes
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip or math.inf)  # same on every rank
            if not torch.isfinite(norm):  # every process stops here together
                raise TrainingError(f"non-finite gradients at step {self.step + 1} (loss {loss.item():.4g}); "
                                    f"try a lower lr than {cfg.lr}")
            self.optimizer.step()
            self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            rate_losses = [v for o in outs for v in o.rate_losses.values()]
            losses = torch.stack([loss, lm_loss, lb_loss, norm, *rate_losses]).detach()
            self.meter = losses if self.meter is None else self.meter + losses
            self.meter_steps += 1
            self.step, self.index = self.step + 1, self.index + 1
            if self.index == len(batches):
                self.epoch, self.index = self.epoch + 1, 0
            self.elapsed = time.monotonic() - started
            if self.step % cfg.log_every == 0 or self.step == self.total:
                self._log(names)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.validate()
            saved = self.step % cfg.save_every == 0 or self.step == self.total
            if saved:
                self.save()
            # after the last step too, when its end has work left (validation, averaging), which can take minutes
            if stop.agreed(self.world, self.device) and (self.step < self.total or self._end_left()):
                if not saved:
                    self.save(snapshot=False)
                raise TrainingStopped(stop.signal, self.step, self.total, self.out, self._end_left(), self.world)
        self._ending = True  # the steps are done and saved: a stop between the end's stages loses nothing
        if self._final_validation_due():
            self.validate()
            self._validated_at_end = True
        self._finish()

    def _stop_if_asked(self) -> None:
        """At the end of a run (its last step saved, before each validation cell and the averaging): TrainingStopped
        if a stop signal came; `--resume` does what was left."""
        if self._ending and self._stop is not None and self._stop.agreed(self.world, self.device):
            raise TrainingStopped(self._stop.signal, self.step, self.total, self.out, self._end_left(),
                                  self.world)

    def _final_validation_due(self) -> bool:
        """Whether the run's end validates: there is a validation set, and neither the last step nor the end (before a
        stop) did."""
        cfg = self.config
        return (bool(self.data.valid_clips) and not (cfg.eval_every and self.step % cfg.eval_every == 0)
                and not self._validated_at_end)

    def _end_left(self) -> list[str]:
        """What the end of the run does after its last step, and a resumed run that is at it does again."""
        left = ["the final validation"] if self._final_validation_due() else []
        if self.config.average_last:
            left.append("the averaging" + " and its validation" * bool(self.data.valid_clips))
        return left

    def _cells(self) -> list[tuple]:
        """(mode, rate, name) of everything a step trains, in EveryMode's order; names are "4,2", or "av 4,2" when
        several modes are trained."""
        modes = self.config.modes
        return [(mode, rate, _rate_name(rate, mode if len(modes) > 1 else None)) for mode in modes
                for rate in self.model.config.rates_for(mode)]

    def _log(self, names: list[str]) -> None:
        mean = self.meter / self.meter_steps
        if self.world > 1:
            torch.distributed.all_reduce(mean)
            mean /= self.world
        loss, lm, lb, norm, *per_rate = mean.tolist()
        lr = self.lr
        rate_losses = dict(zip(names, per_rate))
        epochs = self.epoch + self.index / max(1, len(self.data.order[1]))
        self.record("train", epoch=round(epochs, 4), loss=loss, lm_loss=lm, lb_loss=lb, rate_losses=rate_losses, lr=lr,
                    grad_norm=norm, seconds=round(self.elapsed, 3))
        self.say(f"step {self.step}/{self.total}  loss {loss:.4f} (lm {lm:.4f}, lb {lb:.4f})  lr {lr:.2e}  "
                 f"{self.elapsed:.0f} s")
        self.meter, self.meter_steps = None, 0

    def validate(self, averaged: list[int] | None = None) -> dict:
        """Greedy transcripts of the valid clips at every trained rate, through transcribe's path; WER per rate.
        averaged: the model is the mean of the saves at these steps (the checkpoint written at the end)."""
        from .recognizer import RecognizeOptions
        from .scoring import WordErrors, score, wer_percent

        valid = self.data.valid_clips
        if not valid:
            return {}
        cfg, began = self.config, time.monotonic()
        mine = valid[self.rank :: self.world]
        self.model.eval()
        result = {}
        for mode, rate, name in self._cells():
            self._stop_if_asked()
            options = RecognizeOptions(mode=mode, rate=rate, beam=1, batch_size=cfg.eval_batch_size)
            hyps = [t.text for t in self.recognizer.transcribe_many([c for _, c in mine], options)] if mine else []
            errors = score([self.data.valid_utterances[i].text for i, _ in mine], hyps)
            counts = torch.tensor([getattr(errors, f.name) for f in fields(WordErrors)], dtype=torch.float64,
                                  device=self.device)  # NCCL reduces CUDA tensors only
            if self.world > 1:
                torch.distributed.all_reduce(counts)
            result[name] = WordErrors(*(int(c) for c in counts.tolist())).wer
        seconds = time.monotonic() - began
        extra = {} if averaged is None else {"averaged_steps": averaged}
        self.record("eval", wer=result, utterances=len(valid), seconds=round(seconds, 3), **extra)
        what = f"step {self.step}" if averaged is None else "final model (the mean)"
        self.say(f"{what}  valid WER " + "  ".join(f"{r} {wer_percent(w)}" for r, w in result.items()))
        return result

    # -- saving and resuming ---------------------------------------------------------------------------------------

    def save(self, snapshot: bool = True) -> None:
        """A snapshot, then trainer_state.pt (the commit), then the top-level checkpoint; main process only. A stop
        between saves (snapshot=False) keeps the snapshots as they are, so that average_last still averages the
        saves of the schedule."""
        if not self.main:
            return
        with self._writing(f"step {self.step}"):
            self._save(snapshot)

    @contextlib.contextmanager
    def _writing(self, what: str):
        """A save that fails (a full disk, which torch.save says as a RuntimeError) is one line: a TrainingError."""
        from safetensors import SafetensorError

        try:
            yield
        except (OSError, RuntimeError, SafetensorError) as e:
            free, last = human_size(shutil.disk_usage(self.out).free), self.saved_step
            then = f"--resume goes on from step {last}, its last save" if last is not None else "nothing was saved"
            raise TrainingError(f"cannot save {what} in {self.out} ({free} free there): {_first_line(e)}; {then}") \
                from e

    def _save(self, snapshot: bool) -> None:
        extra = {"training": {"step": self.step, "epoch": self.epoch}}
        path = self.out / SNAPSHOTS / f"step-{self.step:06d}" if snapshot else self.out
        if snapshot:
            save_checkpoint(self.model, path, extra)
        state = {
            "format": STATE_FORMAT, "step": self.step, "epoch": self.epoch, "index": self.index,
            "elapsed": self.elapsed, "world": self.world, "total": self.total, "warmup": self.warmup,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(), "meter_steps": self.meter_steps,
            "meter": None if self.meter is None else self.meter.cpu(),
        }
        atomic_write(self.out / STATE_NAME, lambda tmp: torch.save(state, tmp))
        self.saved_step = self.step  # the commit: what --resume goes on from
        save_checkpoint(self.model, self.out, extra)
        if snapshot:
            keep = max(self.config.keep_last, self.config.average_last or 0)
            for old in self.snapshots()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.record("save", path=str(path))
        self.detail(f"saved step {self.step}: {path}")

    def snapshots(self) -> list[Path]:
        folder = self.out / SNAPSHOTS
        if not folder.is_dir():
            return []
        done = [p for p in folder.glob("step-*") if (p / "config.json").is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))  # by step: step-1000000 after step-999999

    def _is_complete(self, state: dict) -> bool:
        """Whether a resumed run has nothing left to do: as long as it was (no larger --steps or --epochs given), its
        end asked for as it was done (no other average_last, valid or eval_limit: those redo it), and its log
        closes with the record the end of a run writes last, at the step it is at."""
        cfg = self.config
        try:
            saved = json.loads((self.out / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in cfg.to_dict().items() if k in END_SETTINGS):
            return False
        if cfg.steps is not None:
            if cfg.steps != state["step"]:
                return False
        elif saved.get("epochs") != cfg.epochs or state.get("total") != state["step"]:
            return False
        try:
            lines = (self.out / LOG_NAME).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return False
        records = [r for r in map(_log_record, lines) if r is not None]
        return bool(records) and records[-1].get("kind") == "done" and records[-1]["step"] == state["step"]

    def _read_state(self) -> dict:
        """The run's saved state, read before anything long starts: a damaged file is said at once."""
        path = self.out / STATE_NAME
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except OSError as e:
            raise TrainingError(f"{path}: cannot read it: {e.strerror or e}") from e
        except Exception as e:  # truncated, not torch's format, or holding what weights_only refuses
            raise TrainingError(f"{path}: damaged, the run cannot be resumed from it ({_first_line(e)})") from e

    def _check_state(self, state: dict, total: int | None) -> None:
        """A saved state this mome cannot read, or a run asked to be shorter than it is already: ConfigError."""
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"{self.out / STATE_NAME}: format {state.get('format')}, this mome reads {STATE_FORMAT}")
        if total is not None and total < state["step"]:
            raise ConfigError(f"{self.out} is at step {state['step']}: a resumed run cannot be shorter than that "
                              f"({total} steps asked)")

    def _restore(self) -> None:
        state, self._state = self._state, None
        self._check_state(state, self.total)  # --epochs: the steps they make are known now
        if state["world"] != self.world:
            self.say(f"warning: the run had {counted(state['world'], 'process', 'processes')}, now {self.world}: the "
                     "data order changes")
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if params.keys() != state["model"].keys():
            raise ConfigError(f"{self.out / STATE_NAME}: its tensors do not fit this model")
        with torch.no_grad():
            for name, tensor in state["model"].items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.index = state["step"], state["epoch"], state["index"]
        self.saved_step = self.step
        if state.get("total", self.total) != self.total:
            self._stretch_schedule(state["total"], state["warmup"])
        _set_rng_state(state["rng"])
        self.elapsed = state["elapsed"]
        meter = state["meter"]
        self.meter, self.meter_steps = (None if meter is None else meter.to(self.device)), state["meter_steps"]
        # What the stopped run did after its last save is done again: its traces are forgotten. At the run's end that
        # is the averaging and its validation, not the final validation before them (every process reads that here).
        log, kept, at_end = self.out / LOG_NAME, [], self.step == self.total
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else ():
            record = _log_record(line)
            if record is None or record["step"] > self.step or record.get("kind") == "done":
                continue
            if at_end and record["step"] == self.step:
                if record.get("kind") == "average" or "averaged_steps" in record:
                    continue
                self._validated_at_end |= record.get("kind") == "eval"
            kept.append(line)
        if self.main:
            for snapshot in (self.out / SNAPSHOTS).glob("step-*"):  # complete or not
                if int(snapshot.name.split("-")[1]) > self.step:
                    shutil.rmtree(snapshot, ignore_errors=True)
            self._remove_save_leftovers(*(self.out / SNAPSHOTS).glob("*"))
            if log.is_file():
                atomic_write_text(log, "".join(line + "\n" for line in kept))

    def _remove_save_leftovers(self, *more_folders: Path) -> None:
        """A killed save's temporary files in the run folder (and in more_folders); a user's own files are kept."""
        for folder in (self.out, *more_folders):
            for tmp in folder.iterdir() if folder.is_dir() else ():
                if save_leftover(tmp.name) and tmp.is_file():
                    tmp.unlink(missing_ok=True)

    def _stretch_schedule(self, total: int, warmup: int) -> None:
        """A run resumed with another length (--steps, --epochs): the warmup stays as it was, the cosine is stretched
        or shrunk to the new length from the step it is at, and the learning rate of the next step follows it."""
        self.warmup = warmup
        factor = self._lr_factor(warmup, self.total, self.config.min_lr_ratio)
        self.scheduler.lr_lambdas = [factor] * len(self.optimizer.param_groups)
        before = self.optimizer.param_groups[0]["lr"]
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        after = self.optimizer.param_groups[0]["lr"]
        self.say(f"the run now lasts {self.total} steps, not {total}: its learning-rate schedule is stretched to the "
                 f"new length (learning rate at step {self.step}: {before:.3g} -> {after:.3g})")

    def _finish(self) -> None:
        cfg = self.config
        digest_dir = os.environ.get(DIGEST_ENV)
        if digest_dir:
            Path(digest_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(digest_dir) / f"rank-{self.rank}.sha256",
                              tensor_digest(self.model.trainable_state_dict()) + "\n")
        if cfg.average_last:
            self._stop_if_asked()
            steps = self.average(cfg.average_last) if self.main else None
            if self.world > 1:  # every process validates the model that was saved
                with torch.no_grad():  # into the parameters themselves (their version counters move)
                    for p in self.trainable:
                        torch.distributed.broadcast(p, src=0)
            if self.data.valid_clips:
                self.validate(averaged=steps)
        if self.world > 1:  # all leave together: a process that tears down gloo while another works can abort
            torch.distributed.barrier()
        self.record("done")  # last: a --resume of this run has nothing left to do
        self.say(f"done: {self.step} steps in {self.elapsed:.0f} s; checkpoint in {self.out}")

    def average(self, k: int) -> list[int]:
        """The final checkpoint = the element-wise mean of the last k snapshots' trainable tensors; the steps of the
        snapshots averaged."""
        from safetensors.torch import load_file

        from .checkpoint import WEIGHTS_NAME

        chosen = self.snapshots()[-k:]
        if len(chosen) < k:
            self.say(f"warning: average_last {k} but only {len(chosen)} saves exist: averaging those")
        mean = average_tensors([load_file(p / WEIGHTS_NAME) for p in chosen])
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in mean.items():
                params[name].copy_(tensor)
        steps = [int(p.name.split("-")[1]) for p in chosen]
        with self._writing("the final model (the mean)"):
            save_checkpoint(self.model, self.out, {"training": {"step": self.step, "averaged_steps": steps}})
        self.record("average", steps=steps)
        self.say(f"final model: mean of the saves at steps {', '.join(map(str, steps))}")
        return steps

    def cleanup(self) -> None:
        if self._lock is not None:  # no process waits for it (a second run is refused at once): nothing left behind
            (self.out / LOCK_NAME).unlink(missing_ok=True)
            self._lock.release()
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class TrainingStopped(Exception):
    """The run was stopped by a signal after a step, and saved there: `--resume` continues it."""

    def __init__(self, signal_number: int, step: int, total: int, out: Path, end_left: list[str] = (),
                 world: int = 1):
        self.signal_number = signal_number
        name = signal.Signals(signal_number).name
        resume = f"`mome train -o {out} --resume`"
        if world > 1:  # a plain `mome` would go on in one process: another data order and global batch
            resume = f"`torchrun ... -m mome_cli train -o {out} --resume` with the {world} processes the run had"
        if step < total:
            super().__init__(f"stopped by {name} after step {step} of {total}, saved: continue with {resume}")
        else:
            left = " and ".join(end_left) or "nothing"
            super().__init__(f"stopped by {name} after the last step ({step}), saved; {left} left: "
                             f"{resume} does {'it' if len(end_left) < 2 else 'them'}")


class _StopRequest:
    """The signal that asked the loop to stop (0: none), and the processes' agreement on it."""

    def __init__(self):
        self.signal = 0

    def agreed(self, world: int, device: torch.device) -> bool:
        """Whether any process was asked to stop: every one stops after the same step (one all-reduce a step)."""
        if world == 1:
            return self.signal != 0
        flag = torch.tensor([self.signal], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = int(flag.item())
        # A signal handled after the flag was made (while this process waited in the all-reduce, where a worker
        # spends much of a step) is kept for the next step's all-reduce: overwriting it with this step's 0 lost it.
        if agreed:
            self.signal = agreed
        return agreed != 0


@contextlib.contextmanager
def _stop_signals(say):
    """SIGINT and SIGTERM ask the loop to stop after its step (then their usual handlers come back, so that a second
    one acts at once); the handlers are the process's again on leaving. Outside the main thread: no handlers."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    before = {n: signal.getsignal(n) or signal.SIG_DFL for n in (signal.SIGINT, signal.SIGTERM)}  # None: set in C

    def ask(number, frame):
        stop.signal = number
        for n, handler in before.items():
            signal.signal(n, handler)
        say(f"{signal.Signals(number).name}: stopping after this step and saving there (send it again to stop at once)")

    for n in before:
        signal.signal(n, ask)
    try:
        yield stop
    finally:
        for n, handler in before.items():
            signal.signal(n, handler)


class EveryMode(torch.nn.Module):
    """The model's losses in each trained mode, at all of that mode's rates: one forward for DDP, which allows no
    more than one per backward."""

    def __init__(self, model, modes: list[str]):
        super().__init__()
        self.model, self.modes = model, list(modes)

    def forward(self, features, texts: list[str]) -> list:
        return [self.model(features, texts, self.model.config.rates_for(mode), mode) for mode in self.modes]


def _rate_name(rate, mode: str | None = None) -> str:
    """"4,2"; with a mode (runs that train several): "av 4,2"."""
    name = ",".join(str(r) for r in rate if r is not None)
    return f"{mode} {name}" if mode else name


def run(config: TrainConfig, resume: bool = False, quiet: bool = False, verbose: int = 0) -> Trainer:
    """Set up, train and clean up: what `mome train` calls once it has a config."""
    trainer = Trainer(config, resume=resume, quiet=quiet, verbose=verbose)
    try:
        trainer.setup()
        trainer.train()
    finally:
        trainer.cleanup()
    return trainer


__all__ = ["Trainer", "TrainingError", "TrainingStopped", "run", "tensor_digest", "average_tensors",
           "distributed_env", "is_main_process"]
