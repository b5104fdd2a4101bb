"""What `mome train` feeds the model: clips from a manifest, their frozen encoders' features, batches, augmentation.

A step is one batch per process: utterances grouped by padded length (batch_frames video frames, length buckets),
each epoch's batch order shuffled with (seed, epoch) and dealt out to the processes, each taking every world-th
batch, so every process makes the same number of steps. The encoders are frozen: without raw-input augmentation each
utterance is encoded once and its features are kept (in memory, or on disk under $MOME_HOME/cache/features).
Augmentation changes raw inputs, which are then encoded again at every step, but only what it changed: a time mask
or a random crop of the lips changes its modality in every utterance, babble the audio of the utterances it hits
(babble_prob); the features of the rest come from the store. The augmentation's randomness is drawn from (seed, step,
rank), so resuming needs no augmentation state.

Preprocessed clips are cached under $MOME_HOME/cache/clips, as for transcribe and evaluate; face-alignment's weights
(when videos are not mouth crops) come from $TORCH_HOME if set, else mome's cache (preprocess.face_alignment_weights).

Notation for shapes: B utterances in a batch, S audio samples, T frames, R ROI side, D encoder width.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import DataError, UtteranceError, frame_batches, load_manifest, split_manifest
from .files import atomic_write
from .media import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, MediaError
from .model import Features
from .outputs import counted
from .noise import add_babble
from .preprocess import PREPROCESS_VERSION
from .train_config import TrainConfig


def _stamp(backbone: str) -> list:
    """What tells one local backbone folder's weights from another's (features cached on disk are keyed by it)."""
    folder = Path(backbone)
    if not folder.is_dir():
        return []  # a hub id with its revision, or a built-in name: the rest of the tag says it
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.glob("*.safetensors"))]


# ---- one utterance -----------------------------------------------------------------------------------------------


def load_clip(u, mode: str, preprocessors: dict):
    """An utterance's Clip in a mode; a separate audio file (auto_avsr layout) joins its video's ROIs.

    preprocessors: a Preprocessor per mode (the utterance's mode, and a and v for separate files). MediaError, or
    UtteranceError (its transcript missing or unreadable), when it cannot be used."""
    from .preprocess import Clip

    u.check()
    if u.video is None and "v" in mode:
        raise MediaError(u.media, f"no video (mode {mode} needs one)")
    if u.audio is None or mode == "v":
        clip = preprocessors[mode](u.video if mode == "v" else u.media)
        if clip.mode != mode:
            raise MediaError(u.media, "; ".join(clip.warnings) or f"no {mode} input")
        return clip
    audio = preprocessors["a"](u.audio)
    if mode == "a":
        return audio
    video = preprocessors["v"](u.video)
    return Clip(path=str(u.video), duration=max(audio.duration, video.duration), mode="av", audio=audio.audio,
                rois=video.rois)


def clip_frames(clip) -> int:
    """Length in video frames (25 fps): what batches are measured in."""
    return len(clip.rois) if clip.rois is not None else -(-len(clip.audio) // SAMPLES_PER_FRAME)


def time_mask(x: np.ndarray, rate: float, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """A copy of x (T, ...) with random spans zeroed: one per mask_every_seconds, each up to mask_max_seconds."""
    x = x.copy()
    T = len(x)
    longest = int(config.mask_max_seconds * rate)
    for _ in range(max(1, math.ceil(T / (config.mask_every_seconds * rate)))):
        span = int(rng.integers(0, longest + 1))
        if 0 < span < T:
            start = int(rng.integers(0, T - span + 1))
            x[start : start + span] = 0
    return x


def random_crop(rois: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W) mouth ROIs -> (T, C, C), C = 88: one window at a random offset for the whole utterance, as the
    predecessors crop in training (torchvision RandomCrop(88) over the clip); transcribe and evaluate read the centre
    one (lips.normalised_crops, which takes an 88 x 88 ROI whole)."""
    from .lips import CROP_SIZE

    T, H, W = rois.shape
    top, left = int(rng.integers(0, H - CROP_SIZE + 1)), int(rng.integers(0, W - CROP_SIZE + 1))
    return np.ascontiguousarray(rois[:, top : top + CROP_SIZE, left : left + CROP_SIZE])


# ---- features ----------------------------------------------------------------------------------------------------


def collate(items: list[dict], device) -> Features:
    """Per-utterance features {"audio": (Ta, Da), "video": (Tv, Dv)} -> one padded Features batch on device."""
    from torch.nn.utils.rnn import pad_sequence

    features = Features()
    for name in ("audio", "video"):
        if items[0].get(name) is not None:
            seqs = [item[name] for item in items]
            setattr(features, name, pad_sequence(seqs, batch_first=True).to(device))  # (B, T, D)
            setattr(features, f"{name}_lengths", torch.tensor([len(s) for s in seqs], device=device))  # (B,)
    return features


def split_features(features: Features) -> list[dict]:
    """A padded batch -> per-utterance CPU tensors (plain tensors, even from an inference-mode encoder)."""
    items = [{} for _ in range(features.batch_size)]
    for name in ("audio", "video"):
        x, lengths = getattr(features, name), getattr(features, f"{name}_lengths")
        if x is not None:
            for i, n in enumerate(lengths.tolist()):
                items[i][name] = x[i, :n].clone().cpu()  # (T_i, D)
    return items


def _whole(path: Path) -> bool:
    """Whether a file torch.save wrote ends as it does, with a zip archive's end record: one cut short or emptied does
    not. 22 bytes read, not a torch.load (2 ms a file: ten minutes at every start for LRS3's 300,000 utterances)."""
    try:
        with open(path, "rb") as f:
            f.seek(-22, os.SEEK_END)
            return f.read(4) == b"PK\x05\x06"
    except OSError:  # not there, or shorter than the record
        return False


class FeatureStore:
    """Encoded utterances: in memory, or one file each under a cache folder keyed by input files and encoders."""

    def __init__(self, folder: Path | None, tag: str):
        self.folder, self.tag, self.memory = folder, tag, {}
        self.sound: set[Path] = set()  # files known whole: written here, or checked once

    def key(self, u) -> str:
        files = [p for p in (u.video, u.audio) if p is not None]
        stamp = [(str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
        return hashlib.sha256(json.dumps([stamp, self.tag]).encode()).hexdigest()

    def path(self, u) -> Path:
        return self.folder / f"{self.key(u)}.pt"

    def has(self, i: int, u) -> bool:
        if self.folder is None:
            return i in self.memory
        try:
            path = self.path(u)
        except OSError:  # an input file that is gone or unreadable: not stored (reading it says why, and skips it)
            return False
        if path not in self.sound:
            if not _whole(path):  # missing; or cut short (a copy interrupted) or emptied: made again, written over
                return False
            self.sound.add(path)
        return True

    def put(self, i: int, u, item: dict) -> None:
        if self.folder is None:
            self.memory[i] = item
        else:
            path = self.path(u)
            atomic_write(path, lambda tmp: torch.save(item, tmp))
            self.sound.add(path)

    def get(self, i: int, u, mmap: bool = False) -> dict:
        if self.folder is None:
            return self.memory[i]
        return torch.load(self.path(u), map_location="cpu", weights_only=True, mmap=mmap)


class ClipStore:
    """Training clips kept for augmentation, by utterance index: in memory, or (folder given: feature_cache "disk") one
    file each, read back memory-mapped when a batch needs it, so that a large corpus (LRS3: some 400 GB of mouth
    crops and audio) is not held in RAM by every process. Behaves as a read-only mapping once filled."""

    def __init__(self, utterances: list, folder: Path | None, tag: str):
        self.utterances, self.files = utterances, FeatureStore(folder, tag)
        self.indices: list[int] = []  # sorted

    def __setitem__(self, i: int, clip) -> None:
        arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in (("audio", clip.audio), ("rois", clip.rois))
                  if v is not None}
        self.files.put(i, self.utterances[i], {**arrays, "meta": [clip.path, clip.duration, clip.mode]})

    def has(self, i: int) -> bool:
        return self.files.has(i, self.utterances[i])

    def index(self, indices) -> None:
        """The utterances stored (by this process or another): the ones a step may read."""
        self.indices = sorted(i for i in indices if self.has(i))

    def __getitem__(self, i: int):
        from .preprocess import Clip

        item = self.files.get(i, self.utterances[i], mmap=True)
        path, duration, mode = item["meta"]
        return Clip(path=path, duration=duration, mode=mode, audio=item["audio"].numpy() if "audio" in item else None,
                    rois=item["rois"].numpy() if "rois" in item else None)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ---- one process's data ------------------------------------------------------------------------------------------


VALID_SPLITS = ("valid", "val", "dev")  # the names a corpus folder's validation manifest goes by


class TrainingData:
    """The manifests (read when built), then after prepare(): this process's batches and their inputs, and the
    validation clips. Utterances are named by their index in `utterances`; `kept` lists those that prepared."""

    def __init__(self, config: TrainConfig, home: Path, rank: int = 0, world: int = 1,
                 say: Callable[[str], None] = lambda message: None):
        self.config, self.home, self.rank, self.world, self.say = config, Path(home), rank, world, say
        # --train / --valid: a manifest, a folder of media with transcripts, or a corpus folder, read through its
        # train.jsonl (valid.jsonl, ...; .csv too) as evaluate reads its test.jsonl. DataError: exit 1 or 4
        fix = "give the manifest itself"
        self.utterances = load_manifest(split_manifest(Path(config.train), ("train",), fix))
        valid = load_manifest(split_manifest(Path(config.valid), VALID_SPLITS, fix)) if config.valid else []
        self.valid_utterances = valid[: config.eval_limit]
        self.order = (None, [])  # (epoch, its batches): the last epoch_batches() result

    # -- preparing -------------------------------------------------------------------------------------------------

    def prepare(self, recognizer, device: torch.device) -> None:
        """Lengths of the training utterances and their features (or raw clips when augmenting); valid clips."""
        cfg, n = self.config, len(self.utterances)
        self.recognizer, self.device = recognizer, device
        self.reused = self._reusable()
        if not self.reused:
            how = "augmented: encoded at every step"
        else:
            how = f"features cached in {cfg.feature_cache}" + (": augmented ones encoded again" * cfg.augmenting)
        self.say(f"preparing {counted(n, 'training utterance')} ({how})")
        # Those without a transcript are left out here, not where clips are read: a cache may hold their clips.
        usable = [i for i, u in enumerate(self.utterances) if u.problem is None]
        for u in self.utterances:
            if u.problem is not None:
                self.say(f"warning: training utterance {u.id} skipped: {u.problem}")
        model = recognizer.model.config
        clips = [f"clips{PREPROCESS_VERSION}", cfg.data_mode, cfg.mouth_crops, cfg.detector]
        tag = ["v1", *clips, _stamp(model.audio_encoder), _stamp(model.video_encoder), model.audio_encoder,
               model.audio_encoder_revision, model.video_encoder, model.video_encoder_revision,
               device.type]  # encoders: bf16 on CUDA
        disk = cfg.feature_cache == "disk"
        self.features = FeatureStore(self.home / "cache" / "features" if disk else None, json.dumps(tag))
        self.clips = {}
        if cfg.augmenting:  # the raw clips, read again at every step
            self.clips = ClipStore(self.utterances, self.home / "cache" / "train-clips" if disk else None,
                                   json.dumps(clips))
            share = usable[self.rank :: self.world] if disk and self.world > 1 else usable  # on disk: shared
            self._load_clips(self.utterances, [i for i in share if not self.clips.has(i)], "training", self.clips)
            if disk and self.world > 1:
                torch.distributed.barrier()
            self.clips.index(usable)
        kept = list(self.clips) if cfg.augmenting else usable
        if self.reused:  # encoded once into the store: all of it, or what augmentation leaves unchanged
            loaded = self.clips or None  # without augmentation the clips are read as they are encoded
            if disk and self.world > 1:  # each process fills its share of the disk cache first
                self._encode(kept[self.rank :: self.world], loaded)
                torch.distributed.barrier()
            kept = self._encode(kept, loaded)
        if not kept:
            none = "its one utterance could not" if n == 1 else f"none of its {n} utterances could"
            raise DataError(f"{cfg.train}: {none} be prepared")
        if len(kept) < n:
            self.say(f"warning: {n - len(kept)} of {n} training utterances skipped")
        self.kept = kept  # indices into self.utterances
        self.lengths = [clip_frames(self.clips[i]) if self.clips else self._feature_frames(i) for i in kept]
        self.valid_clips = list(self._load_clips(self.valid_utterances, range(len(self.valid_utterances)),
                                                 "validation").items())
        if self.valid_utterances and not self.valid_clips:  # the run goes on, without validation: said, not silent
            valid = counted(len(self.valid_utterances), "validation utterance")
            self.say(f"warning: none of the {valid} in {cfg.valid} could be prepared: the run is not validated "
                     "(no WER)")

    def _preprocessors(self) -> dict:
        from .preprocess import PreprocessOptions, Preprocessor

        cfg = self.config
        cache = self.home / "cache" / "clips"
        device = str(self.device)
        return {m: Preprocessor(PreprocessOptions(mode=m, roi=cfg.mouth_crops, detector=cfg.detector, device=device),
                                cache_dir=cache) for m in {cfg.data_mode, "a", "v"}}

    def _load_clips(self, utterances, indices, what: str, into: ClipStore | None = None) -> dict | ClipStore:
        """{index: Clip} of the utterances that preprocess and fit the audio encoder's window (or those put into a
        ClipStore, one at a time); the others are skipped with one warning line each."""
        preprocessors, clips = self._preprocessors(), {} if into is None else into
        encoder = self.recognizer.audio_encoder if "a" in self.config.data_mode else None
        window = encoder.max_seconds if encoder is not None else math.inf
        for i in indices:
            try:
                clip = load_clip(utterances[i], self.config.data_mode, preprocessors)
            except (MediaError, UtteranceError) as e:
                self.say(f"warning: {what} utterance {utterances[i].id} skipped: {e}")
                continue
            seconds = 0 if clip.audio is None else len(clip.audio) / SAMPLE_RATE
            if seconds > window:
                self.say(f"warning: {what} utterance {utterances[i].id} skipped: {seconds:.1f} s of audio, longer "
                         f"than the audio encoder's {window:g} s window")
                continue
            clips[i] = clip
        return clips

    def _feature_frames(self, i: int) -> int:
        item = self.features.get(i, self.utterances[i], mmap=True)
        return len(item["video"]) if "video" in item else -(-len(item["audio"]) // 2)  # audio features: 50 Hz

    def _reusable(self) -> tuple[str, ...]:
        """The modalities whose stored features a step can use: all when not augmenting; else those that no time
        mask or random crop changes in every utterance (babble changes only the audio of the utterances it hits)."""
        cfg, mode = self.config, self.config.data_mode
        masked = {"audio": cfg.mask_audio, "video": cfg.mask_video or cfg.crop_video}
        return tuple(name for name in ("audio", "video") if name[0] in mode and not masked[name])

    def _encode(self, indices, loaded: dict | None = None) -> list[int]:
        """Encode (in groups of similar length) the utterances not in the store yet, from their clips (loaded: those
        already in memory); the indices now in it."""
        cfg, todo = self.config, [i for i in indices if not self.features.has(i, self.utterances[i])]
        chunk = 16 * cfg.encode_batch  # preprocessed clips held at once
        for at in range(0, len(todo), chunk):
            part = todo[at : at + chunk]
            clips = ({i: loaded[i] for i in part} if loaded is not None
                     else self._load_clips(self.utterances, part, "training"))
            order = sorted(clips, key=lambda i: clip_frames(clips[i]))
            for b in range(0, len(order), cfg.encode_batch):
                group = order[b : b + cfg.encode_batch]
                features = self._features([clips[i] for i in group])
                for i, item in zip(group, split_features(features)):
                    self.features.put(i, self.utterances[i], item)
        return [i for i in indices if self.features.has(i, self.utterances[i])]

    def _features(self, clips) -> Features:
        mode = self.config.data_mode
        return self.recognizer.features([c.audio for c in clips] if "a" in mode else None,
                                        [c.rois for c in clips] if "v" in mode else None)

    # -- the data order --------------------------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches (indices into self.kept) of an epoch: every world-th of the shuffled order."""
        cfg = self.config
        if self.order[0] == epoch:
            return self.order[1]
        batches = frame_batches(self.lengths, cfg.batch_frames, shuffle=True, seed=cfg.seed + epoch, bucket=cfg.bucket)
        n = len(batches) // self.world
        if n == 0:
            raise DataError(f"{cfg.train}: {counted(len(batches), 'batch', 'batches')} an epoch cannot feed "
                            f"{self.world} processes; lower batch_frames ({cfg.batch_frames}) or add utterances")
        self.order = (epoch, batches[self.rank :: self.world][:n])
        return self.order[1]

    def inputs(self, batch: list[int], step: int) -> tuple[Features, list[str]]:
        """A batch's features on the device and its transcripts; augmented with randomness from (seed, step, rank)."""
        utterances = [self.kept[j] for j in batch]
        texts = [self.utterances[i].text for i in utterances]
        if not self.config.augmenting:
            return collate([self.features.get(i, self.utterances[i]) for i in utterances], self.device), texts
        rng = np.random.default_rng([self.config.seed, step, self.rank])
        augmented = [self._augment(i, rng) for i in utterances]  # [(clip, the modalities it changed)]
        if not self.reused:  # every utterance changed in every modality: the batch is encoded as it is
            features = self._features([clip for clip, _ in augmented])
            for name in ("audio", "audio_lengths", "video", "video_lengths"):  # plain tensors, not inference-mode ones
                if getattr(features, name) is not None:
                    setattr(features, name, getattr(features, name).clone())
            return features, texts
        items = [dict(self.features.get(i, self.utterances[i])) for i in utterances]  # {"audio": (Ta, Da), ...}
        for name in ("audio", "video"):  # encode again only what augmentation changed
            changed = [k for k, (_, names) in enumerate(augmented) if name in names]
            if changed:
                inputs = [augmented[k][0].audio if name == "audio" else augmented[k][0].rois for k in changed]
                encoded = self.recognizer.features(*((inputs, None) if name == "audio" else (None, inputs)))
                for k, item in zip(changed, split_features(encoded)):
                    items[k][name] = item[name]
        return collate(items, self.device), texts

    def _augment(self, i: int, rng: np.random.Generator):
        """The clip augmented, and the modalities changed ("audio", "video")."""
        cfg, clip = self.config, self.clips[i]
        audio, rois, changed = clip.audio, clip.rois, set()
        n = len(self.kept)
        if cfg.babble_prob > 0 and rng.random() < cfg.babble_prob and n > 1:
            me = bisect.bisect_left(self.kept, i)  # kept is sorted
            picks = rng.choice(n - 1, size=min(cfg.babble_speakers, n - 1), replace=False)  # anyone but me
            others = [self.clips[self.kept[p + (p >= me)]].audio for p in picks.tolist()]
            audio = add_babble(audio, others, float(rng.choice(cfg.babble_snr)), rng)
            changed.add("audio")
        if cfg.mask_audio:
            audio = time_mask(audio, SAMPLE_RATE, cfg, rng)
            changed.add("audio")
        if cfg.crop_video:
            rois = random_crop(rois, rng)
            changed.add("video")
        if cfg.mask_video:
            rois = time_mask(rois, VIDEO_FPS, cfg, rng)
            changed.add("video")
        return dataclasses.replace(clip, audio=audio, rois=rois), changed  # config checks: only modalities of the mode


__all__ = ["TrainingData", "FeatureStore", "ClipStore", "load_clip", "clip_frames", "time_mask", "random_crop",
           "collate", "split_features"]
