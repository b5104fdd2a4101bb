"""What --model names and what it takes, from configs alone: no weights read, and torch-free.

A preset (tiny, demo, mome-1b, mome-3b, mome-8b) or a checkpoint directory written by `mome train`, with an optional
adapter: `model_config` gives its ModelConfig and where its weights are; `rate_for` and `segment_limit` check --rate,
--mode and --max-segment against it; `check_options` does all of that for a run that loads no model (a `mome
transcribe` whose outputs all exist), so that a mistyped option is refused there too, at no cost. recognizer.py
re-exports all of it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .checkpoint import CheckpointError, read_config
from .configuration import TINY_WIDTH, ModelConfig, MoMEConfig
from .hub import PRESETS, MissingModelError, UnusableModelError
from .media import MAX_SEGMENT_SECONDS
from .options import RecognizeOptions, UsageProblem

BUNDLED = Path(__file__).parent / "models"  # checkpoints that ship inside the package (demo)


def tiny_config() -> ModelConfig:
    """The `tiny` preset: random tiny backbones built from configs, MoME modules that change nothing yet."""
    return ModelConfig(llm="tiny", audio_encoder="tiny", video_encoder="tiny", audio_dim=TINY_WIDTH,
                       video_dim=TINY_WIDTH, projector_hidden=64,
                       mome=MoMEConfig(num_routed=4, num_shared=1, top_k=2, bottleneck=8))



def preset_config(name: str) -> ModelConfig:
    preset = PRESETS[name]
    return ModelConfig(llm=preset.llm.repo_id, llm_revision=preset.llm.revision, audio_encoder=preset.audio.repo_id,
                       audio_encoder_revision=preset.audio.revision, video_encoder="avhubert-large")



def rate_for(config: ModelConfig, mode: str, rate: tuple | None, any_rate: bool = False) -> tuple:
    """Recognizer.rate_for from the config alone."""
    lacking = [name for name, letter in (("audio", "a"), ("video", "v"))
               if letter in mode and letter not in config.inputs]
    if lacking:
        modes = config.modes
        raise UsageProblem(f"--mode {mode}: this model was trained for mode{'s' * (len(modes) > 1)} "
                           f"{', '.join(modes)} and has no {lacking[0]} encoder; pass --mode {modes[0]}")
    trained = config.rates_for(mode)
    if rate is None:
        return trained[0]
    if mode == "a":
        rate = (rate[0], None)
    elif mode == "v":
        rate = (None, rate[-1])
    elif len(rate) != 2:
        raise UsageProblem(f"mode av needs an audio and a video rate, A,V (e.g. {trained[0][0]},{trained[0][1]}), "
                           f"got {','.join(map(str, rate))}")
    if rate not in trained and not any_rate:
        shown = "; ".join(",".join(str(r) for r in t if r is not None) for t in trained)
        raise UsageProblem(f"rate {','.join(str(r) for r in rate if r is not None)} was not trained for mode {mode}; "
                           f"trained: {shown} (or pass --any-rate)")
    return rate



def segment_limit(asked: float | None, most: float) -> float:
    """--max-segment checked against the longest segment a model takes (most); UsageProblem if it cannot be."""
    if asked is None:
        return most
    if not asked > 0:  # NaN too
        raise UsageProblem(f"--max-segment {asked:g}: the limit must be a positive number of seconds")
    if asked > most:
        raise UsageProblem(f"--max-segment {asked:g}: this model takes segments of at most {most:g} s (its audio "
                           f"encoder's window, and never over {MAX_SEGMENT_SECONDS:g} s)")
    return asked



def longest_segment(config: ModelConfig) -> float:
    """Recognizer.max_segment_seconds from the configs alone: 20 s, or the audio encoder's window where it is shorter,
    as the chunk_length of its folder's preprocessor_config.json says (8 s for the demo model). A hub encoder (Whisper's
    30 s), tiny, or a window that cannot be read here (said when the model loads): 20 s."""
    folder = config.audio_encoder
    if not folder or folder == "tiny" or not Path(folder).is_dir():
        return MAX_SEGMENT_SECONDS
    try:
        chunk = json.loads((Path(folder) / "preprocessor_config.json").read_text(encoding="utf-8"))["chunk_length"]
    except (OSError, ValueError, KeyError, TypeError):
        return MAX_SEGMENT_SECONDS
    if isinstance(chunk, bool) or not isinstance(chunk, (int, float)) or not chunk > 0:
        return MAX_SEGMENT_SECONDS
    return min(MAX_SEGMENT_SECONDS, float(chunk))


def check_options(model: str, adapter: str | None, device: str | None, options: RecognizeOptions) -> None:
    """What load_recognizer and its checks refuse, from the configs alone (no weights loaded): before a run prints or
    reads anything, and in a run that has nothing left to transcribe, so that a mistyped option fails there too
    rather than pass unseen. device None: not checked (it needs torch; a run that loads the model checks it then)."""
    try:
        config, _ = model_config(model, adapter)
    except CheckpointError as e:
        raise UnusableModelError(str(e)) from e
    if device == "cuda":
        from .recognizer import resolve_device  # imports torch: only to find out whether there is a GPU

        resolve_device(device)
    rate_for(config, options.mode, options.rate, options.any_rate)
    segment_limit(options.max_segment, longest_segment(config))



def shadowed_preset(model: str) -> str | None:
    """A warning when --model names a preset and a folder of that name is here too: the folder is what loads (as a
    local folder does for transformers' from_pretrained), which is easy to miss."""
    if model in PRESETS and Path(model).is_dir():
        return (f"warning: --model {model}: loading the checkpoint folder ./{model}, not the {model} preset "
                f"(run from another folder to use the preset, or pass --model ./{model} to say it is the folder)")
    return None



def model_config(model: str, adapter: str | None = None) -> tuple[ModelConfig, Path | None]:
    """The ModelConfig of --model (and --adapter), and the checkpoint folder whose weights load into it (None: the
    fresh modules of a preset); no weights read. MissingModelError, UsageProblem or CheckpointError if it cannot be."""
    weights = None
    if Path(model).is_dir():
        config, weights = read_config(model), model
    elif model == "tiny":
        config = tiny_config()
    elif model == "demo":
        if not (BUNDLED / "demo").is_dir():
            raise MissingModelError("the demo model does not ship with this build yet (issue #7); use --model DIR "
                                    "with a checkpoint from `mome train`, or --model tiny for a smoke run")
        config, weights = read_config(BUNDLED / "demo"), BUNDLED / "demo"
    elif model in PRESETS:
        if adapter is None:
            raise MissingModelError(f"{model} needs a trained MoME adapter and none is published yet: train one with "
                                    f"`mome train` and pass it with --adapter DIR")
        config = preset_config(model)
    else:
        raise UsageProblem(f"--model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
    if adapter is not None:
        if not Path(adapter).is_dir():
            raise UsageProblem(f"--adapter {adapter!r}: no such checkpoint directory")
        adapter_config = read_config(adapter)
        if adapter_config.llm != config.llm:  # said now, before a missing LLM of the model's asks for a download
            raise CheckpointError(f"{adapter}: checkpoint does not fit this model (llm: checkpoint "
                                  f"{adapter_config.llm!r}, model {config.llm!r})")
        # the LLM at the revision the adapter was trained on (`mome download --revision`)
        revision = adapter_config.llm_revision or config.llm_revision
        config = dataclasses.replace(adapter_config, llm=config.llm, llm_revision=revision)
        weights = adapter
    return config, None if weights is None else Path(weights)


__all__ = ["BUNDLED", "tiny_config", "preset_config", "model_config", "rate_for", "segment_limit", "longest_segment",
           "check_options", "shadowed_preset"]
