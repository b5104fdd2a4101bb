"""Small backbones trained from scratch on a corpus: what the `demo` preset stands on, where no pretrained ones exist.

    python -m mome_cli.pretrain backbones --train DATA/train.jsonl -o B0 --steps 1500 --seed 0
    python -m mome_cli.pretrain reader --train DATA/train.jsonl --init B0 -o R --steps 1500
    python -m mome_cli.pretrain backbones --train DATA/train.jsonl --init R --match --babble 0.3 -o B1
    python -m mome_cli.pretrain backbones --train DATA/train.jsonl --init B1 --only audio --match -o BACKBONES
    mome train --config recipes/demo.toml ...            # MoME on the frozen BACKBONES (recipes/demo.toml)
    python -m mome_cli.pretrain bundle CHECKPOINT --backbones BACKBONES -o mome_cli/models/demo
    python -m mome_cli.pretrain projectors BACKBONES/projectors.safetensors --rates 4,2 -o P  # a baseline's --init
    python -m mome_cli.pretrain standins --train DATA/train.jsonl --init BUNDLE --audio-units phonemes -o S
    python -m mome_cli.pretrain reader --train DATA/train.jsonl --init S --vocab 1024 --standins none -o R2

Real MoME models stand on Whisper, AV-HuBERT and Llama, pretrained on other data and frozen. None of them can be
fetched where this project is built, so the demo model's three backbones are trained here first, from random weights,
on the synthetic corpus (synth.py), and then frozen for `mome train --model BACKBONES`:

- audio: a Whisper encoder (encoders.DEMO_WHISPER: 128 wide, 3 layers, an 8 s window; the shipped one grown to 6
  with --audio-layers) with its real feature extractor;
- video: an AV-HuBERT encoder of the same structure as Large at small widths (AVHubertConfig.demo());
- LLM: a Llama (llm.DEMO_SHAPE: 192 wide, 3 layers) with a byte-level tokenizer, or a BPE one (`reader --vocab`).

`backbones` trains them together end to end, as one speech recogniser (AVSRModel with its own projectors and MoME
modules, thrown away afterwards): every step transcribes its batch in one of the modes a, v, av at one (audio, video)
rate pair, taken in turn so that every mode meets every pair; both encoders also carry a character CTC loss (a linear
head each, thrown away too), which makes them learn their inputs much sooner than through the LM alone.

Trained that way alone, a small LM learns the text long before it learns to read the encoder tokens. Two more stages
teach the reading apart, through stand-ins for perfect encoders (StandIn): the corpus's alignments give each 50 Hz
audio frame the letter being spoken and each 25 Hz video frame the viseme of the sounding phoneme, and a stand-in maps
those ids to features of the encoder's width.

- `reader` trains the LM, projectors, MoME modules and stand-ins on the stand-ins' features alone (some rows with
  up to 70% of their ids replaced at random, so that the LM learns to weigh one modality against the other). No clip
  is read and no encoder runs: thousands of steps take minutes.
- `backbones --match` then trains the encoders (and projectors, MoME) with the LM and stand-ins frozen, adding the
  distance of each encoder's features to its stand-in's; with --babble, part of the audio is mixed with babble while
  the targets stay clean, so that the audio encoder learns to hear through it.
- `backbones --only audio` (or video) trains one encoder alone on its CTC loss (and with --match its stand-in
  distance): neither the LM nor the other encoder runs, so a step costs a fifth of a whole one. With --audio-layers N
  the audio encoder grows deeper first: the layers it had stay at the bottom and the new ones on top start as
  identities (their output matrices zero), so training resumes from the same function with more capacity.

The audio stand-in reads letters by default: each word's letters spread evenly over its span, which no encoder can
hear (spelling is not in the sound), so real encoders reproduce it only roughly. With --audio-units phonemes it reads
the phoneme sounding at each frame instead, which the sound does carry, and the LM has to learn the spelling; a
`reader` run that switches units keeps everything but the audio stand-in, and --standins audio keeps the video
stand-in (and an encoder already matched to it) as it is.

The backbones of a bundle (the shipped `demo`) come without their stand-ins. `standins` fits new ones to the frozen
encoders (the distance of --match the other way round: the stand-ins move, the encoders stay), and `reader --vocab N`
then trains a new LM on them whose tokenizer is a byte-level BPE of N tokens learnt from the sentences it reads: one
token for each frequent word instead of one per byte, so that it does not have to spell them out letter by letter.

The result is written as

    BACKBONES/audio_encoder/   WhisperEncoder + WhisperFeatureExtractor (save_pretrained: config.json, safetensors)
    BACKBONES/video_encoder/   config.json + model.safetensors (avhubert.save_avhubert)
    BACKBONES/llm/             LlamaForCausalLM + its tokenizer (save_pretrained)
    BACKBONES/backbones.json   the ModelConfig fields that describe them (paths relative to BACKBONES)
    BACKBONES/log.jsonl        losses per logged step
    BACKBONES/pretrain_state.safetensors   every trained tensor, heads included (--init BACKBONES continues from it)
    BACKBONES/projectors.safetensors       the projectors alone, as `mome train --init` takes them
    BACKBONES/run.json         the stage and its arguments, the step saved and whether the run finished

each folder written under a temporary name and renamed into place. Same corpus, seed and settings: the same weights.
Since every save replaces the whole folder, a stage writes only to a new or empty one, or over one where a run of the
same stage was cut short (run.json: not finished), which starts again; anything else is refused before it begins.

`bundle` makes a checkpoint directory that carries its backbones (what ships as the `demo` preset): the checkpoint's
tensors, its config with the backbone paths made relative (llm, audio_encoder, video_encoder), and the three folders.
`projectors` keeps the projectors of some rate pairs: a per-rate baseline (one model per pair) starts from its own.

Notation for shapes: B utterances, T frames, C characters (blank first), D encoder width.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import BACKBONE_FIELDS, BACKBONES_NAME, CONFIG_NAME, WEIGHTS_NAME
from .compression import compress
from .model import DEFAULT_RATES, MODES, AVSRModel, Features, ModelConfig
from .mome import MoMEConfig
from .report import ExitCode
from .rng import seeded

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # CTC targets; index 0 is the blank, so characters are 1..28
PROJECTOR_HIDDEN = 256
BABBLE_SNR = (-5, 0, 5, 10, 20)  # dB, one drawn per noisy utterance (--babble)
PROJECTORS_NAME = "projectors.safetensors"  # the projectors alone, named as in AVSRModel (mome train --init)
RUN_NAME = "run.json"  # how the folder was made: the stage's arguments, the step saved, whether it was the last
STATE_NAME = "pretrain_state.safetensors"  # every tensor of Backbones, projectors and CTC heads too: what --init loads
SAVED = (*BACKBONE_FIELDS, BACKBONES_NAME, "log.jsonl", STATE_NAME, PROJECTORS_NAME, RUN_NAME)  # a stage's folder
BUNDLED = (*BACKBONE_FIELDS, CONFIG_NAME, WEIGHTS_NAME)  # a bundle's
# Keys transformers 5 writes into tokenizer_config.json from how the tokenizer was loaded (a local folder, offline),
# not what it is: a release must not carry them.
LOAD_TIME_KEYS = ("is_local", "local_files_only")


class PretrainError(Exception):
    """A stage that cannot run on what it was given; str() names the file and the problem, main() prints it as one
    line and exits with exit_code."""

    exit_code = ExitCode.FAILURE


def ctc_targets(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Character ids (concatenated, 1-based) and their lengths; characters outside ALPHABET are dropped."""
    ids = [[ALPHABET.index(ch) + 1 for ch in t.lower() if ch in ALPHABET] for t in texts]
    return torch.tensor([i for row in ids for i in row]), torch.tensor([len(row) for row in ids])


# ---- frame targets: what a perfect encoder would know at each frame ------------------------------------------------

VISEME_NAMES = ("rest", "closed", "labiodental", "dental", "sibilant", "postalveolar", "w", "oo", "o", "open", "spread",
                "mid", "schwa", "coronal", "dorsal")  # synth.VISEMES, in a fixed order: the video stand-in's ids


# synth.py's English phonemes (espeak-ng mnemonics) but the pauses: the ids of the audio stand-in with
# --audio-units phonemes (1-based; 0 is silence).
PHONEMES = ("p", "b", "m", "f", "v", "T", "D", "s", "z", "S", "Z", "tS", "dZ", "r", "r-", "R", "w", "w#", "W", "u:",
            "U", "U@", "u", "0", "O:", "O@", "O2", "O", "o@", "oU", "OI", "a", "aa", "A:", "A@", "a#", "V", "VR", "A",
            "aI", "aI2", "aI3", "aI@", "aU", "i:", "i", "I", "I2", "I#", "IR", "eI", "i@", "i@3", "j", "E", "e@", "3:",
            "e", "@", "@2", "@5", "@-", "3", "@L", "t", "t#", "t[", "t2", "d", "n", "n-", "l", "k", "g", "N", "h",
            "?", "x")
AUDIO_UNITS = ("letters", "phonemes")  # what the audio stand-in is made of (--audio-units)
ALIGNED = {"duration", "frames", "speech", "phonemes", "words"}  # what the stand-ins read of an alignment row
BPE_LEAST = 256 + 3  # the smallest `reader --vocab`: every byte, BOS, EOS and PAD (llm.bpe_tokenizer)


def load_alignments(path: str | Path) -> dict[str, dict]:
    """id -> that clip's alignment row (synth.py's alignments.jsonl: phoneme and word start times)."""
    with open(path, encoding="utf-8") as f:
        return {row["id"]: row for row in map(json.loads, f)}


def word_spans(alignment: dict, text: str) -> list[tuple[float, float, str]]:
    """(start, end, word) for each word of text; words that espeak-ng's events skip or split share their neighbours'.

    The events name words as spoken ("it" for "it's", nothing for some "a"s), so text words are matched to them in
    order; an unmatched word starts halfway between its neighbours' starts. Each word lasts until the next one starts,
    the last one until the speech ends."""
    events = [(t, w.lower()) for t, w in alignment["words"]]
    words = text.lower().split()
    starts: list[float | None] = []
    j = 0
    for w in words:
        if j < len(events) and (w.startswith(events[j][1]) or events[j][1].startswith(w)):
            starts.append(events[j][0])
            j += 1
        else:
            starts.append(None)
    begin, end = alignment["speech"]
    known = [(i, t) for i, t in enumerate(starts) if t is not None] or [(0, begin)]
    filled = []
    for i, t in enumerate(starts):
        if t is None:
            before = max(((k, s) for k, s in known if k < i), default=(-1, begin))
            after = min(((k, s) for k, s in known if k > i), default=(len(words), end))
            t = before[1] + (after[1] - before[1]) * (i - before[0]) / (after[0] - before[0])
        filled.append(max(begin, min(end, t)))
    filled = list(np.maximum.accumulate(filled)) if filled else []
    return [(s, e, w) for s, e, w in zip(filled, filled[1:] + [end], words)]


def char_frames(alignment: dict, text: str, n_frames: int, fps: float) -> torch.Tensor:
    """(n_frames,) character id of each frame (ALPHABET index + 1; 0 outside speech): each word's letters and the
    space after it (but the last) spread evenly over its span."""
    ids = torch.zeros(n_frames, dtype=torch.long)
    spans = word_spans(alignment, text)
    for k, (start, end, word) in enumerate(spans):
        letters = [ALPHABET.index(c) + 1 for c in word + (" " if k + 1 < len(spans) else "") if c in ALPHABET]
        a, b = int(round(start * fps)), max(int(round(start * fps)) + 1, int(round(end * fps)))
        for k in range(a, min(b, n_frames)):
            ids[k] = letters[min(len(letters) - 1, (k - a) * len(letters) // (b - a))]
    return ids


def _sounding(alignment: dict, n_frames: int, fps: float, id_of) -> torch.Tensor:
    """(n_frames,) id_of(phoneme) of the phoneme sounding at each frame; 0 before the first one and after speech."""
    ids = torch.zeros(n_frames, dtype=torch.long)
    phonemes = [(t, p) for t, p in alignment["phonemes"] if p != ";"]  # ';' marks palatalisation, not a sound
    ends = [t for t, _ in phonemes[1:]] + [alignment["speech"][1]]
    for (start, name), end in zip(phonemes, ends):
        a, b = int(round(start * fps)), int(round(end * fps))
        ids[a:min(b, n_frames)] = id_of(name)
    return ids


def viseme_frames(alignment: dict, n_frames: int, fps: float) -> torch.Tensor:
    """(n_frames,) viseme id (VISEME_NAMES) of the phoneme sounding at each frame: what the lips show."""
    from .synth import viseme_of

    return _sounding(alignment, n_frames, fps, lambda name: VISEME_NAMES.index(viseme_of(name)))


def phoneme_frames(alignment: dict, n_frames: int, fps: float) -> torch.Tensor:
    """(n_frames,) id of the phoneme sounding at each frame (PHONEMES index + 1; 0 for pauses and silence): what a
    perfect audio encoder hears, spelling aside."""
    from .synth import viseme_of

    def id_of(name: str) -> int:
        if name in PHONEMES:
            return PHONEMES.index(name) + 1
        return 0 if viseme_of(name) == "rest" else PHONEMES.index("@") + 1  # an unlisted vowel or consonant

    return _sounding(alignment, n_frames, fps, id_of)


class StandIn(torch.nn.Module):
    """A perfect encoder's stand-in: frame ids (characters or visemes, from the alignments) -> features of the
    encoder's width. The LM learns to read these first (`reader`); then the real encoders learn to produce them."""

    def __init__(self, n_ids: int, dim: int, kernel: int):
        super().__init__()
        self.embed = torch.nn.Embedding(n_ids, 64)
        self.conv = torch.nn.Conv1d(64, dim, kernel, padding=kernel // 2)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        x = self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2)
        return self.out(F.gelu(x))


def corrupt(ids: torch.Tensor, n_ids: int, generator: torch.Generator, p: float = 0.3) -> torch.Tensor:
    """ids with, for a share p of the rows, a random fraction (up to 70%) of frames replaced by random ids: a stand-in
    for an encoder's confusions (noise, ambiguity), so that the LM learns to lean on the other modality and on text."""
    B, T = ids.shape
    rows = torch.rand(B, 1, generator=generator) < p
    fraction = torch.rand(B, 1, generator=generator) * 0.7
    hit = rows & (torch.rand(B, T, generator=generator) < fraction)
    return torch.where(hit, torch.randint(0, n_ids, (B, T), generator=generator), ids)


def ctc_loss(head: torch.nn.Linear, states: torch.Tensor, lengths: torch.Tensor, texts: list[str]) -> torch.Tensor:
    log_probs = head(states).float().log_softmax(-1).transpose(0, 1)  # (T, B, C)
    targets, target_lengths = ctc_targets(texts)
    return F.ctc_loss(log_probs, targets, lengths.cpu(), target_lengths, zero_infinity=True)


def turn(step: int) -> tuple[str, tuple]:
    """(mode, rate) of a training step: the modes in turn, and the rate pairs in turn over whole rounds of modes, so
    every mode meets every pair; the rate keeps only the mode's modalities ((4, None) in mode a)."""
    mode, (a, v) = MODES[step % len(MODES)], DEFAULT_RATES[step // len(MODES) % len(DEFAULT_RATES)]
    return mode, (a if "a" in mode else None, v if "v" in mode else None)


def _masked_nmse(x: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean squared error of x (B, T, D) to target over each row's first lengths[b] frames, over target's power."""
    real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T)
    target = target[:, : x.shape[1]]
    return ((x - target)[real] ** 2).mean() / (target[real] ** 2).mean().clamp(min=1e-6)


class Backbones(torch.nn.Module):
    """The three backbones, trainable, with the throw-away AVSRModel and CTC heads that train them."""

    def __init__(self, seed: int, audio_layers: int | None = None, audio_units: str = "letters", tokenizer=None):
        super().__init__()
        if audio_units not in AUDIO_UNITS:
            raise ValueError(f"audio_units must be one of {', '.join(AUDIO_UNITS)}, got {audio_units!r}")
        self.audio_units = audio_units
        from .avhubert import AVHubertConfig, AVHubertVideoEncoder
        from .encoders import DEMO_WHISPER, DEMO_WINDOW, build_whisper
        from .llm import DEMO_SHAPE, build_byte_llm

        shape = {**DEMO_WHISPER, "encoder_layers": audio_layers or DEMO_WHISPER["encoder_layers"]}
        self.audio_encoder = build_whisper(shape, seed=seed, window=DEMO_WINDOW)
        with seeded(seed + 1):
            self.video_encoder = AVHubertVideoEncoder(AVHubertConfig.demo())
        llm, tokenizer = build_byte_llm("llama", DEMO_SHAPE, seed=seed + 2, tokenizer=tokenizer)
        D = DEMO_WHISPER["d_model"]
        self.config = ModelConfig(llm="llm", audio_encoder="audio_encoder", audio_dim=D, video_encoder="video_encoder",
                                  video_dim=self.video_encoder.dim, projector_hidden=PROJECTOR_HIDDEN,
                                  mome=MoMEConfig(num_routed=4, num_shared=1, top_k=2, bottleneck=8),
                                  modes=list(MODES))
        with seeded(seed + 3):
            self.avsr = AVSRModel(self.config, llm, tokenizer)
            self.audio_ctc = torch.nn.Linear(D, len(ALPHABET) + 1)
            self.video_ctc = torch.nn.Linear(self.video_encoder.dim, len(ALPHABET) + 1)
            self.audio_standin = StandIn(self.n_audio_ids, D, kernel=9)  # 50 Hz: 180 ms of context
            self.video_standin = StandIn(len(VISEME_NAMES), self.video_encoder.dim, kernel=5)  # 25 Hz: 200 ms
        self.requires_grad_(True)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def n_audio_ids(self) -> int:
        return len(ALPHABET) + 1 if self.audio_units == "letters" else len(PHONEMES) + 1

    def audio_ids(self, alignment: dict, text: str, n_frames: int) -> torch.Tensor:
        """(n_frames,) ids of the audio stand-in at 50 Hz: letters spread over their words, or sounding phonemes."""
        if self.audio_units == "letters":
            return char_frames(alignment, text, n_frames, 50.0)
        return phoneme_frames(alignment, n_frames, 50.0)

    def train_only(self, *names: str) -> list[torch.nn.Parameter]:
        """Freeze every parameter but those of the named submodules; returns the trainable ones."""
        self.requires_grad_(False)
        for name in names:
            self.get_submodule(name).requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def frame_ids(self, modality: str, alignments: list[dict], texts: list[str], lengths) -> torch.Tensor:
        """(B, T) stand-in ids of one modality, zero-padded, from the alignments: the audio's at 50 Hz (audio_ids),
        the video's visemes at 25 Hz; lengths[b] frames for row b."""
        if modality == "audio":
            ids = [self.audio_ids(al, t, int(n)) for al, t, n in zip(alignments, texts, lengths)]
        else:
            ids = [viseme_frames(al, int(n), 25.0) for al, n in zip(alignments, lengths)]
        return torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(self.device)

    def standin_features(self, alignments: list[dict], texts: list[str], generator: torch.Generator | None = None,
                         max_words: int | None = None) -> tuple[Features, torch.Tensor, list[str]]:
        """The stand-ins' features of whole clips, their (B, Ta) letter ids and their texts. With a generator, ids
        are corrupted (corrupt) and, with max_words too, each row is cut down to a random run of 1..max_words
        consecutive words and their frames."""
        rows = []
        for al, text in zip(alignments, texts):
            a_ids = self.audio_ids(al, text, math.ceil(al["duration"] * 50))
            v_ids = viseme_frames(al, al["frames"], 25.0)
            spans, words = word_spans(al, text), text.split()
            if generator is not None and max_words and len(spans) == len(words) > 1:
                n = int(torch.randint(1, min(max_words, len(words)) + 1, (), generator=generator))
                i = int(torch.randint(0, len(words) - n + 1, (), generator=generator))
                start, end = spans[i][0], spans[i + n - 1][1]
                a_ids = a_ids[int(start * 50):math.ceil(end * 50)]
                v_ids = v_ids[int(start * 25):math.ceil(end * 25)]
                text = " ".join(words[i:i + n])
            rows.append((a_ids, v_ids, text))
        pad = torch.nn.utils.rnn.pad_sequence
        a_ids, v_ids = pad([r[0] for r in rows], True), pad([r[1] for r in rows], True)  # (B, Ta), (B, Tv)
        a_lengths, v_lengths = torch.tensor([len(r[0]) for r in rows]), torch.tensor([len(r[1]) for r in rows])
        a_in, v_in = a_ids, v_ids
        if generator is not None:  # drawn on the CPU, so that a seed gives the same rows on any device
            a_in, v_in = corrupt(a_ids, self.n_audio_ids, generator), corrupt(v_ids, len(VISEME_NAMES), generator)
        d = self.device
        f = Features(self.audio_standin(a_in.to(d)), a_lengths.to(d), self.video_standin(v_in.to(d)), v_lengths.to(d))
        return f, a_ids.to(d), [r[2] for r in rows]

    def read(self, alignments: list[dict], texts: list[str], mode: str, rate: tuple, generator: torch.Generator,
             max_words: int | None = None):
        """Stage `reader`: the LM transcribes the stand-ins' (corrupted) features at one rate of one mode, rows cut
        to runs of words with max_words (standin_features); no encoder runs."""
        f, a_ids, texts = self.standin_features(alignments, texts, generator, max_words)
        losses = {f"lm_{mode}": self.avsr(f, texts, [rate], mode).lm_loss}
        if rate[0] is not None and self.audio_units == "letters":  # audio tokens towards the letters' own LLM
            # embeddings, pooled the same way
            tokens, n = self.avsr.audio(f.audio, f.audio_lengths, rate[0])  # (B, N, H)
            with torch.no_grad():
                table = self.avsr.llm.get_input_embeddings().weight  # (V, H)
                letters = table[self._letter_tokens.to(table.device)[a_ids]]  # (B, Ta, H); silence -> zeros
                target, _ = compress(letters, f.audio_lengths, rate[0], "avgpool")
            losses["embed_a"] = _masked_nmse(tokens, target, n)
        return losses

    @functools.cached_property
    def _letter_tokens(self) -> torch.Tensor:
        """(C,) LLM token id of each character id; silence (0) maps to the padding row, which is kept at zero."""
        tok = self.avsr.tokenizer
        return torch.tensor([tok.pad_token_id] + [tok(c, add_special_tokens=False).input_ids[0] for c in ALPHABET])

    def copy(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The LM alone copies each text from a mode-a prefix that holds the text's own bytes instead of audio tokens:
        a cheap task that gives it the heads that look a transcript up in its prefix, before it meets the stand-ins."""
        avsr, tok = self.avsr, self.avsr.tokenizer
        opening, closing = avsr._tags["audio"]
        rows = []
        for text in texts:
            prefix = [tok.bos_token_id, *opening, *tok(text, add_special_tokens=False).input_ids, *closing,
                      *avsr._prompts["a"]]
            rows.append((prefix, avsr.encode_targets([text])[0]))
        L = max(len(p) + len(t) for p, t in rows)
        ids = torch.full((len(rows), L), tok.pad_token_id)
        labels = torch.full((len(rows), L), -100)
        for i, (prefix, target) in enumerate(rows):
            ids[i, : len(prefix) + len(target)] = torch.tensor(prefix + target)
            labels[i, len(prefix): len(prefix) + len(target)] = torch.tensor(target)
        ids, labels = ids.to(self.device), labels.to(self.device)
        return {"copy": avsr.llm(input_ids=ids, attention_mask=(labels != -100) | (ids != tok.pad_token_id),
                                 labels=labels).loss}

    def encode(self, audio: list, rois: list) -> Features:
        f = Features()
        f.audio, f.audio_lengths = self._audio_states(audio)  # (B, Ta, D)
        f.video, f.video_lengths = self._video_states(rois)  # (B, Tv, D)
        return f

    def _audio_states(self, audio: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Ta, D) audio encoder states; (B,) lengths, on the device as the losses want them."""
        states, lengths = self.audio_encoder(audio)
        return states, lengths.to(self.device)

    def _video_states(self, rois: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tv, D) video encoder states of the clips' 96x96 mouth crops, centre-cropped to 88x88; (B,) lengths."""
        from .lips import normalised_crops

        frames, lengths = normalised_crops(rois, self.device)  # (B, Tv, 88, 88)
        states, lengths = self.video_encoder(frames, lengths)
        return states, lengths.to(self.device)

    def forward(self, audio: list, rois: list, texts: list[str], mode: str, rate: tuple,
                alignments: list[dict] | None = None) -> dict[str, torch.Tensor]:
        """Losses of one batch: CTC on both encoders, the LM at one rate of one mode and, given the alignments, the
        distance of each encoder's features to its stand-in's (normalised mean squared error over real frames)."""
        f = self.encode(audio, rois)
        losses = {"ctc_a": ctc_loss(self.audio_ctc, f.audio, f.audio_lengths, texts),
                  "ctc_v": ctc_loss(self.video_ctc, f.video, f.video_lengths, texts),
                  f"lm_{mode}": self.avsr(f, texts, [rate], mode).lm_loss}
        if alignments is not None:
            a_ids = self.frame_ids("audio", alignments, texts, f.audio_lengths)  # (B, Ta)
            v_ids = self.frame_ids("video", alignments, texts, f.video_lengths)  # (B, Tv)
            with torch.no_grad():
                a_target, v_target = self.audio_standin(a_ids), self.video_standin(v_ids)  # (B, Ta, D), (B, Tv, D)
            losses["match_a"] = _masked_nmse(f.audio, a_target, f.audio_lengths)
            losses["match_v"] = _masked_nmse(f.video, v_target, f.video_lengths)
        return losses

    def encoder_alone(self, modality: str, inputs: list, texts: list[str],
                      alignments: list[dict] | None = None) -> dict[str, torch.Tensor]:
        """Losses of one encoder alone (`backbones --only`): its CTC and, given the alignments, its distance to its
        stand-in. Neither the LM nor the other encoder runs, so a step costs a fraction of a whole one."""
        if modality == "audio":
            states, lengths = self._audio_states(inputs)  # (B, Ta, D)
            head, standin = self.audio_ctc, self.audio_standin
        else:
            states, lengths = self._video_states(inputs)  # (B, Tv, D)
            head, standin = self.video_ctc, self.video_standin
        key = modality[0]
        losses = {f"ctc_{key}": ctc_loss(head, states, lengths, texts)}
        if alignments is not None:
            with torch.no_grad():
                target = standin(self.frame_ids(modality, alignments, texts, lengths))  # (B, T, D)
            losses[f"match_{key}"] = _masked_nmse(states, target, lengths)
        return losses

    def load(self, directory: Path, new_llm: bool = False) -> None:
        """An earlier run's weights: all of them from its state file, else its three backbones (heads stay new).
        A state whose audio stand-in reads other units (letters, phonemes) gives all but that stand-in, which
        starts afresh; a shallower audio encoder grows (_grow). With new_llm the LM, projectors and MoME modules
        (everything under avsr) stay as built: a new LM, with its own tokenizer, learns to read the same stand-ins."""
        from safetensors.torch import load_file

        path = directory / STATE_NAME
        if path.is_file():
            state = load_file(path)
            other_units = saved_units(directory) != self.audio_units
            if other_units:
                state = {k: t for k, t in state.items() if not k.startswith("audio_standin.")}
            if new_llm:
                state = {k: t for k, t in state.items() if not k.startswith("avsr.")}
            tied = ("avsr.llm.lm_head.weight", "avsr.llm.model.embed_tokens.weight")  # one tensor, stored once
            for name, twin in (tied, tied[::-1]):
                if name not in state and twin in state:
                    state[name] = state[twin]
            missing, unexpected = self.load_state_dict(state, strict=False)
            missing = [k for k in missing if not (other_units and k.startswith("audio_standin."))
                       and not (new_llm and k.startswith("avsr."))]
            self._grow(path, missing, unexpected, "audio_encoder.encoder.")
            return
        self.load_encoders(directory)
        if new_llm:
            return
        missing, unexpected = self.avsr.llm.load_state_dict(load_file(directory / "llm" / "model.safetensors"),
                                                            strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embeddings
            raise ValueError(f"{directory / 'llm'}: weights do not fit ({missing[:3]}, {unexpected[:3]})")

    def _grow(self, path: Path, missing: list[str], unexpected: list[str], prefix: str) -> None:
        """After loading a shallower audio encoder's weights (keys under prefix): its layers are the bottom ones, and
        the layers it lacks start as identities (attention output and second FFN matrix zero: a pre-LN layer then
        adds nothing to its input), so the deeper encoder starts as the one it grows from. Other misfits are errors."""
        layers = self.audio_encoder.encoder.layers
        new = sorted({int(k[len(prefix):].split(".")[1]) for k in missing if k.startswith(f"{prefix}layers.")})
        grown = {f"{prefix}layers.{i}.{k}" for i in new for k in layers[i].state_dict()}
        on_top = new == list(range(len(layers) - len(new), len(layers)))
        if unexpected or not on_top or set(missing) != grown:
            raise ValueError(f"{path}: weights do not fit (missing {sorted(missing)[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]})")
        with torch.no_grad():
            for i in new:
                for linear in (layers[i].self_attn.out_proj, layers[i].fc2):
                    linear.weight.zero_()
                    if linear.bias is not None:
                        linear.bias.zero_()

    def save_projectors(self, path: Path) -> None:
        """The projectors under AVSRModel's names: what `mome train --init` starts from (the MoME modules of this
        stage have another shape than the recipe's and start again)."""
        from safetensors.torch import save_file

        state = {k: t.contiguous() for k, t in self.avsr.state_dict().items() if k.startswith(("audio.", "video."))}
        save_file(state, str(path), metadata={"format": "pt"})

    def load_encoders(self, directory: Path) -> None:
        """The audio and video encoders of the backbones in directory (the rest stays as it is)."""
        from safetensors.torch import load_file

        path = directory / "audio_encoder" / "model.safetensors"
        missing, unexpected = self.audio_encoder.encoder.load_state_dict(load_file(path), strict=False)
        self._grow(path, missing, unexpected, "")
        self.video_encoder.load_state_dict(load_file(directory / "video_encoder" / "model.safetensors"))

    def save(self, directory: Path, run: dict | None = None) -> None:
        """The three backbones into directory, written under a temporary name and renamed; run (the stage's
        arguments and progress) as run.json beside them."""
        from safetensors.torch import save_model
        from transformers.utils import logging as hf_logging

        from .avhubert import save_avhubert

        directory = directory.resolve()  # a link to the folder stays one, to the new folder
        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the log at every save
        try:
            self.audio_encoder.encoder.save_pretrained(tmp / "audio_encoder")
            self.avsr.llm.save_pretrained(tmp / "llm")
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.audio_encoder.feature_extractor.save_pretrained(tmp / "audio_encoder")
        save_avhubert(self.video_encoder, tmp / "video_encoder")
        save_model(self, str(tmp / STATE_NAME), metadata={"format": "pt", "audio_units": self.audio_units})  # heads
        # too; the tied LM head stored once
        self.save_projectors(tmp / PROJECTORS_NAME)
        self.avsr.tokenizer.save_pretrained(tmp / "llm")
        drop_load_time_keys(tmp / "llm")
        base = ModelConfig(llm="llm", audio_encoder="audio_encoder", audio_dim=self.config.audio_dim,
                           video_encoder="video_encoder", video_dim=self.config.video_dim,
                           projector_hidden=PROJECTOR_HIDDEN)
        (tmp / BACKBONES_NAME).write_text(json.dumps(base.to_dict(), indent=2) + "\n", encoding="utf-8")
        if run is not None:
            (tmp / RUN_NAME).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        if (directory / "log.jsonl").exists():
            shutil.copy(directory / "log.jsonl", tmp / "log.jsonl")
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)


def _preprocess(job):
    """A worker's clip, or the message of the MediaError that makes it unusable: the error itself does not come back
    from a worker process (unpickling calls MediaError(message), which wants a path and a problem)."""
    preprocess, path = job
    from .media import MediaError

    try:
        return preprocess(path)
    except MediaError as e:
        return str(e)


def usable(manifest, say) -> list:
    """The utterances of a manifest that can be learnt from: one whose transcript is missing or unreadable is left
    out with a warning (it came back with an empty text)."""
    from .data import load_manifest

    listed = []
    for u in load_manifest(manifest):
        if u.problem is not None:
            say(f"warning: {u.id} skipped: {u.problem}")
        else:
            listed.append(u)
    return listed


def load_clips(manifest: str, home: Path, say, workers: int = 2, listed: list | None = None) -> tuple[list, list]:
    """(utterances, clips) of a manifest of mouth-crop videos, through the media stage (cached), in worker processes;
    listed: its usable utterances when they were read already."""
    from concurrent.futures import ProcessPoolExecutor

    from .preprocess import PreprocessOptions, Preprocessor

    preprocess = Preprocessor(PreprocessOptions(mode="av", roi=True, device="cpu"), cache_dir=home / "cache" / "clips")
    listed = usable(manifest, say) if listed is None else listed
    utterances, clips, started = [], [], time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        for n, (u, clip) in enumerate(zip(listed, pool.map(_preprocess, [(preprocess, u.media) for u in listed],
                                                           chunksize=16)), 1):
            if isinstance(clip, str):
                say(f"warning: {u.id} skipped: {clip}")
            elif clip.mode == "av":
                utterances.append(u)
                clips.append(clip)
            else:  # sound alone (mode av falls back to a): the stages learn from both
                say(f"warning: {u.id} skipped: no video stream")
            if n % 500 == 0:
                say(f"{manifest}: {n}/{len(listed)} clips read, {time.monotonic() - started:.0f} s")
    return utterances, clips


def _train(model: Backbones, params: list, args, out: Path, batches, loss_of, say) -> None:
    """The optimiser loop both stages share: AdamW, warmup then cosine (training.Trainer's schedule), clipping, a
    log line every args.log_every steps (also to out/log.jsonl) and a save every args.save_every steps and at the end.
    batches(epoch) yields one step's batch at a time; loss_of(batch, step) gives that step's named losses."""
    from .training import Trainer

    say(f"{sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,} parameters train")
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Trainer._lr_factor(max(1, args.steps // 20), args.steps,
                                                                                0.0))
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.jsonl").unlink(missing_ok=True)
    last = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    step, epoch, started, meter, counts = 0, 0, time.monotonic(), {}, {}
    while step < last:
        epoch_batches = batches(epoch)
        if not epoch_batches:  # else this loop would go round for ever, saying nothing
            raise PretrainError(f"{args.train}: no batch to train on")
        for batch in epoch_batches:
            losses = loss_of(batch, step)
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            for k, v in losses.items():
                meter[k] = meter.get(k, 0.0) + v.item()
                counts[k] = counts.get(k, 0) + 1
            if step % args.log_every == 0 or step == last:
                mean = {k: round(v / counts[k], 4) for k, v in sorted(meter.items())}
                seconds = time.monotonic() - started
                with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "epoch": epoch, "seconds": round(seconds, 1), **mean}) + "\n")
                say(f"step {step}/{args.steps}  " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items())
                    + f"  {seconds:.0f} s")
                meter, counts = {}, {}
            if step % args.save_every == 0 or step == last:
                model.save(out, {"args": vars(args), "step": step, "finished": step == last})
            if step == last:
                break
        epoch += 1


def _setup(args, say, tokenizer=None) -> tuple[Path, Backbones]:
    """The output folder and the Backbones to train: seeded, from --init (and --encoders) where given. The LM keeps
    the tokenizer of --init's LM; a tokenizer given here means a new LM (bpe_tokenizer, `reader --vocab`)."""
    for flag, folder in (("--init", args.init), ("--encoders", getattr(args, "encoders", None))):
        lacking = [name for name in BACKBONE_FIELDS if folder and not (Path(folder) / name).is_dir()]
        if lacking:
            raise PretrainError(f"{flag} {folder}: not a folder of backbones (no {', '.join(lacking)}; an earlier "
                                "stage's -o, or a bundle)")
    out = Path(args.output)  # made by _train: a stage that fails before leaves no folder behind
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    source = getattr(args, "encoders", None) or args.init  # where the audio encoder comes from, if anywhere
    units = args.audio_units or (saved_units(Path(args.init)) if args.init else "letters")
    new_llm = tokenizer is not None
    if not new_llm and args.init and (Path(args.init) / "llm" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(Path(args.init) / "llm")
    model = Backbones(args.seed, getattr(args, "audio_layers", None) or (source and _audio_depth(Path(source))), units,
                      tokenizer)
    if args.init:
        _load(lambda: model.load(Path(args.init), new_llm), args.init)
        say(f"starting from {args.init}")
    if getattr(args, "encoders", None):
        _load(lambda: model.load_encoders(Path(args.encoders)), args.encoders)
        say(f"encoders from {args.encoders}")
    from .recognizer import UsageProblem, resolve_device

    try:
        model.to(resolve_device(getattr(args, "device", "cpu")))
    except UsageProblem as e:
        raise SystemExit(f"pretrain: {e}") from e
    say(f"training on {model.device}")
    model.train()
    return out, model


def _load(load, folder) -> None:
    """Run load() (Backbones.load or load_encoders of folder), weights that do not fit a PretrainError of one line."""
    from safetensors import SafetensorError

    try:
        load()
    except ValueError as e:  # _grow's or load's, naming the file
        raise PretrainError(str(e)) from e
    except (RuntimeError, SafetensorError) as e:  # load_state_dict's misfits (a line each), a damaged file
        raise PretrainError(f"{folder}: weights that cannot be loaded ({str(e).splitlines()[0]})") from e


def saved_units(backbones: Path) -> str:
    """What the audio stand-in of a saved state reads (letters before the choice was recorded)."""
    from safetensors import safe_open

    if not (backbones / STATE_NAME).is_file():
        return "letters"
    with safe_open(str(backbones / STATE_NAME), "pt") as f:
        return (f.metadata() or {}).get("audio_units", "letters")


def _audio_depth(backbones: Path) -> int:
    """Layers of the audio encoder saved in a backbones folder."""
    return json.loads((backbones / "audio_encoder" / "config.json").read_text(encoding="utf-8"))["encoder_layers"]


def read_alignments(path: str | Path, hint: str) -> dict[str, dict]:
    """load_alignments, with a file that is not there a missing dataset (exit 4: hint says where it comes from) and
    one that is not made of alignment rows an error naming it."""
    from .data import DatasetMissing

    path = Path(path)
    if not path.is_file():
        raise DatasetMissing(f"{path}: no such file ({hint})")
    try:
        alignments = load_alignments(path)
        bad = next((a["id"] for a in alignments.values() if not ALIGNED <= a.keys()), None)
    except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable, not JSON, a row that is not an object
        raise PretrainError(f"{path}: not an alignments file as mome_cli.synth writes them ({e!r})") from e
    if bad is not None:
        raise PretrainError(f"{path}: not an alignments file as mome_cli.synth writes them (row {bad} lacks one of "
                            f"{', '.join(sorted(ALIGNED))})")
    return alignments


def _alignments_of(args) -> dict[str, dict]:
    return read_alignments(args.alignments or Path(args.train).parent / "alignments.jsonl", "mome_cli.synth writes "
                           "alignments.jsonl beside its manifests; --alignments names one kept elsewhere")


def _aligned(alignments: dict[str, dict], utterances: list, manifest, args) -> list[dict]:
    """The alignment rows of a manifest's utterances, in order; one that has none is an error naming both files."""
    missing = [u.id for u in utterances if u.id not in alignments]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        path = args.alignments or Path(args.train).parent / "alignments.jsonl"
        raise PretrainError(f"{path}: no alignment for {missing[0]}{more} of {manifest}")
    return [alignments[u.id] for u in utterances]


def _clip_batches(args, say, listed: list, by_id: dict[str, dict] | None):
    """(utterances, clips, alignments or None, batches) of the stages that read clips: the clips of the utterances
    listed in --train (usable) through the media stage, their alignments if by_id (_alignments_of) is given, and
    batches(epoch) of about --batch-frames video frames each."""
    from .data import frame_batches
    from .hub import mome_home
    from .train_data import clip_frames

    utterances, clips = load_clips(args.train, mome_home(), say, listed=listed)
    if not clips:
        raise PretrainError(f"{args.train}: no clip to train on (each one skipped, as the warnings above say)")
    alignments = None if by_id is None else _aligned(by_id, utterances, args.train, args)
    lengths = [clip_frames(c) for c in clips]
    say(f"{len(clips)} utterances, {sum(lengths) / 25 / 3600:.2f} h")

    def batches(epoch):
        return frame_batches(lengths, args.batch_frames, shuffle=True, seed=args.seed + epoch, bucket=400)

    return utterances, clips, alignments, batches


def pretrain(args) -> None:
    """Stage `backbones`: the encoders (and with --match, their distance to the stand-ins) under the LM loss."""
    from .noise import add_babble

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    listed = usable(args.train, say)  # a manifest or alignments not there is said before anything is built or read
    by_id = _alignments_of(args) if args.match else None
    out, model = _setup(args, say)
    utterances, clips, alignments, batches = _clip_batches(args, say, listed, by_id)
    if args.only:  # one encoder and its CTC head; everything else stays as it is
        params = model.train_only(f"{args.only}_encoder", f"{args.only}_ctc")
    elif args.match:  # the LM already reads the stand-ins (`reader`): it and they stay as they are
        params = model.train_only("audio_encoder", "video_encoder", "audio_ctc", "video_ctc", "avsr.audio",
                                  "avsr.video", "avsr.mome")
    else:  # everything but the stand-ins, the LLM included
        params = model.train_only("audio_encoder", "video_encoder", "audio_ctc", "video_ctc", "avsr")
    rng = np.random.default_rng(args.seed)

    def noisy(i: int, x: np.ndarray) -> np.ndarray:  # up to four other utterances' voices under utterance i's
        if len(clips) < 2:
            return x
        others = [j + (j >= i) for j in rng.choice(len(clips) - 1, min(4, len(clips) - 1), replace=False).tolist()]
        return add_babble(x, [clips[j].audio for j in others], float(rng.choice(BABBLE_SNR)), rng).astype(np.float32)

    def loss_of(batch, step):
        mode, rate = turn(step)
        audio = [clips[i].audio for i in batch]
        if args.babble > 0:  # noisy input, clean targets: the audio encoder learns to hear through babble
            audio = [noisy(i, x) if rng.random() < args.babble else x for i, x in zip(batch, audio)]
        texts, aligned = [utterances[i].text for i in batch], [alignments[i] for i in batch] if alignments else None
        if args.only:
            return model.encoder_alone(args.only, audio if args.only == "audio" else [clips[i].rois for i in batch],
                                       texts, aligned)
        return model(audio, [clips[i].rois for i in batch], texts, mode, rate, aligned)

    _train(model, params, args, out, batches, loss_of, say)
    say(f"backbones written to {out}")


def fit_standins(args) -> None:
    """Stage `standins`: the stand-ins learn to produce what the frozen encoders of --init produce at each frame (the
    distance of --match, the other way round), for backbones that come without their stand-ins, such as the shipped
    demo bundle. A `reader` run can then teach a new LM (`--vocab`) to read these encoders, through the stand-ins,
    on text that has no clip."""
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    listed = usable(args.train, say)  # a manifest or alignments not there is said before anything is built or read
    by_id = _alignments_of(args)
    out, model = _setup(args, say)
    utterances, clips, alignments, batches = _clip_batches(args, say, listed, by_id)
    params = model.train_only("audio_standin", "video_standin")
    model.audio_encoder.eval()
    model.video_encoder.eval()

    def loss_of(batch, step):
        texts, aligned = [utterances[i].text for i in batch], [alignments[i] for i in batch]
        with torch.no_grad():
            f = model.encode([clips[i].audio for i in batch], [clips[i].rois for i in batch])  # (B, T, D) each
        a_ids = model.frame_ids("audio", aligned, texts, f.audio_lengths)  # (B, Ta)
        v_ids = model.frame_ids("video", aligned, texts, f.video_lengths)  # (B, Tv)
        return {"fit_a": _masked_nmse(model.audio_standin(a_ids), f.audio, f.audio_lengths),
                "fit_v": _masked_nmse(model.video_standin(v_ids), f.video, f.video_lengths)}

    _train(model, params, args, out, batches, loss_of, say)
    say(f"stand-ins written to {out}")


def reader(args) -> None:
    """Stage `reader`: the LM (with projectors and MoME) learns to transcribe the stand-ins' features, which only need
    the alignments: no clip is read and no encoder runs, so thousands of steps take minutes on a CPU."""
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    utterances = usable(args.train, say)
    alignments = _alignments_of(args)
    rows = list(zip(_aligned(alignments, utterances, args.train, args), [u.text for u in utterances]))
    valid = []
    if args.valid:  # read now: a manifest that is not there is said before the training, not after it
        utterances = usable(args.valid, say)[: args.valid_limit]
        valid = list(zip(_aligned(alignments, utterances, args.valid, args), [u.text for u in utterances]))
    if args.reading:  # sentences spoken for their timings only (mome_cli.synth --reading)
        extra = list(read_alignments(args.reading, "mome_cli.synth --reading writes reading.jsonl").values())
        if any(not isinstance(record.get("text"), str) for record in extra):
            raise PretrainError(f"{args.reading}: not a reading set (mome_cli.synth --reading): rows with no text")
        say(f"{len(rows)} utterances of {args.train} and {len(extra)} reading sentences of {args.reading}")
        rows += [(record, record["text"]) for record in extra]
    tokenizer = None
    if args.vocab:  # a new LM, its BPE vocabulary learnt from the text it is to read (never valid or test)
        from .llm import bpe_tokenizer

        tokenizer = bpe_tokenizer([text for _, text in rows], args.vocab)
        say(f"a new LM with a BPE vocabulary of {len(tokenizer)} tokens learnt from {len(rows)} sentences")
    out, model = _setup(args, say, tokenizer)
    standins = {"both": ("audio_standin", "video_standin"), "audio": ("audio_standin",), "none": ()}[args.standins]
    params = model.train_only("avsr", *standins)  # the LLM, projectors, MoME, stand-ins
    generator = torch.Generator().manual_seed(args.seed)
    # Whole batches of --batch rows, an epoch's last few rows left for the next epoch's shuffle; fewer rows than
    # --batch make one batch of them all, read at every step.
    size = min(args.batch, len(rows))
    if size < args.batch:
        say(f"note: {len(rows)} rows, fewer than --batch {args.batch}: each step reads them all")

    def batches(epoch):
        order = np.random.default_rng(args.seed + epoch).permutation(len(rows))
        return [order[i:i + size] for i in range(0, len(order) - size + 1, size)]

    def loss_of(batch, step):
        if step < args.copy:
            return model.copy([rows[i][1] for i in batch])
        step -= args.copy
        mode, rate = turn(step)
        words = 1 + int(step / max(1, args.curriculum) * 20) if step < args.curriculum else None
        return model.read([rows[i][0] for i in batch], [rows[i][1] for i in batch], mode, rate, generator, words)

    _train(model, params, args, out, batches, loss_of, say)
    if valid:
        from .scoring import wer_percent

        for mode, rate, wer in read_wer(model, valid):
            say(f"valid {mode} {rate}: WER {wer_percent(wer)}")
    say(f"reader written to {out}")


@torch.no_grad()
def read_wer(model: Backbones, rows: list[tuple[dict, str]], batch: int = 16):
    """(mode, rate, WER) of greedy transcripts of the stand-ins' (uncorrupted) features, for every mode and rate."""
    from .decoding import decode
    from .scoring import score

    model.eval()
    results = []
    for mode in MODES:
        for rate in model.config.rates_for(mode):
            hyps = []
            for i in range(0, len(rows), batch):
                chunk = rows[i:i + batch]
                f, _, _ = model.standin_features([r[0] for r in chunk], [r[1] for r in chunk])
                hyps += [r.text for r in decode(model.avsr, f, rate, mode)]
            results.append((mode, rate, score([r[1] for r in rows], hyps).wer))
    model.train()
    return results


def drop_load_time_keys(llm: Path) -> None:
    """Remove LOAD_TIME_KEYS from llm/tokenizer_config.json (written by a save whose tokenizer was loaded from disk)."""
    path = llm / "tokenizer_config.json"
    if not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if any(key in data for key in LOAD_TIME_KEYS):
        path.write_text(json.dumps({k: v for k, v in data.items() if k not in LOAD_TIME_KEYS}, indent=2,
                                   ensure_ascii=False) + "\n", encoding="utf-8")


def bundle(checkpoint: str | Path, backbones: str | Path, output: str | Path) -> Path:
    """A self-contained checkpoint directory: checkpoint's tensors and config + the backbones it was trained on."""
    from .checkpoint import backbones_config, read_config

    checkpoint, backbones, output = Path(checkpoint), Path(backbones), Path(output).resolve()
    read_config(checkpoint)  # a checkpoint of this mome's, its config complete (else a CheckpointError says why)
    if not (checkpoint / WEIGHTS_NAME).is_file():
        raise PretrainError(f"{checkpoint}: incomplete checkpoint (no {WEIGHTS_NAME})")
    data = json.loads((checkpoint / CONFIG_NAME).read_text(encoding="utf-8"))
    used = backbones_config(backbones)
    elsewhere = []  # trained on a copy of the backbones on another machine (the lent GPU): its paths are not here
    for name in BACKBONE_FIELDS:
        recorded, given = Path(data["model"][name]), Path(getattr(used, name))
        if recorded.resolve() != given.resolve():  # the same folder named through .. or a link is the same
            if recorded.exists():
                raise PretrainError(f"{checkpoint} was trained on {recorded}, not on {given}")
            elsewhere.append(str(recorded))
        data["model"][name] = name
    if elsewhere:
        print(f"note: {checkpoint} was trained on {', '.join(elsewhere)}, not on this machine: bundled with "
              f"{backbones}, which must be a copy of them", file=sys.stderr)
    data.pop("training", None)  # the run's own bookkeeping; the bundle is a release
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in BACKBONE_FIELDS:
        shutil.copytree(backbones / name, tmp / name)
    drop_load_time_keys(tmp / "llm")  # backbones saved before they were dropped at every save
    shutil.copy(checkpoint / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
    (tmp / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return output


def rate_projectors(source: str | Path, pairs: list[tuple[int, int]], output: str | Path) -> Path:
    """The projectors of some (audio, video) rate pairs out of a projectors file (`BACKBONES/projectors.safetensors`),
    as `mome train --rates ... --init` takes them: a per-rate baseline starts from its own rates' projectors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from .files import atomic_write

    try:
        every = load_file(str(source))
    except (OSError, SafetensorError) as e:
        raise PretrainError(f"{source}: not a safetensors file ({e})") from e
    wanted = {f"{name}.projectors.{rate}." for a, v in pairs for name, rate in (("audio", a), ("video", v))
              if any(k.startswith(f"{name}.projectors.") for k in every)}  # a modality the file has projectors for
    missing = sorted(w.rstrip(".") for w in wanted if not any(k.startswith(w) for k in every))
    if missing:
        raise PretrainError(f"{source} has no {', '.join(missing)}")
    tensors = {k: t for k, t in every.items() if k.startswith(tuple(wanted))}
    atomic_write(output, lambda tmp: save_file(tensors, tmp))
    return Path(output)


def _run_record(folder: Path) -> dict | None:
    """The run.json of a stage's folder (its "args" and "finished"), None where there is none that pretrain wrote."""
    try:
        record = json.loads((folder / RUN_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none, unreadable, not UTF-8, not JSON
        return None
    ok = isinstance(record, dict) and isinstance(record.get("args"), dict) and "finished" in record
    return record if ok else None


def _is_log(path: Path) -> bool:
    """Whether a file holds log lines as _train writes them (what a run stopped before its first save leaves)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return all(isinstance(r := json.loads(line), dict) and {"step", "epoch", "seconds"} <= r.keys()
                   for line in lines)
    except (OSError, ValueError):
        return False


def output_problem(command: str, output: str) -> str | None:
    """Why `command` must not write its -o, or None. Every save replaces the whole folder (written beside it, then
    renamed), so a stage takes a new or empty folder, or one where a run of the same stage was cut short (run again,
    it starts afresh: scripts/make_demo.sh after a stop); bundle replaces only a bundle, and projectors only a
    projectors file. A finished stage is kept: its weights are what later stages start from."""
    from safetensors import SafetensorError, safe_open

    out = Path(output)
    if command == "projectors":
        if out.is_dir():
            return f"-o {out}: a folder, not a file"
        if not out.exists():
            return None
        try:
            with safe_open(str(out), "pt") as f:
                keys = list(f.keys())
        except (OSError, SafetensorError):
            keys = []
        if keys and all(k.startswith(("audio.projectors.", "video.projectors.")) for k in keys):
            return None
        return f"-o {out} is not a projectors file, and would be written over: give another -o"
    if out.is_symlink() and not out.exists():
        return f"-o {out}: a link to nothing"
    if not out.exists():
        return None
    if not out.is_dir():
        return f"-o {out}: a file, not a folder"
    if out.resolve() == Path.cwd().resolve():
        return f"-o {out} is the folder this runs in, which every save would replace: give a folder of its own"
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as e:
        return f"-o {out}: cannot list it: {e.strerror or e}"
    if command == "bundle":
        if not names or (CONFIG_NAME in names and set(names) <= set(BUNDLED)):
            return None  # empty, or an earlier bundle, replaced
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"-o {out} is not empty ({listed}): a bundle is written to a new or empty folder, or over a bundle"
    record = _run_record(out)
    if record is not None and record["args"].get("command") != command:
        return f"-o {out} holds a `{record['args'].get('command')}` run, not a `{command}` one: give another -o"
    if record is not None and record["finished"]:
        return (f"-o {out} holds a finished `{command}` run (step {record.get('step')}), which a new one would "
                "replace: remove it, or give another -o")
    if not names or (record is not None and set(names) <= set(SAVED)):
        return None  # empty, or a run of this stage that was cut short: started again
    if names == ["log.jsonl"] and _is_log(out / "log.jsonl"):
        return None  # one stopped before its first save
    theirs = [n for n in names if n not in SAVED] or names
    listed = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
    return (f"-o {out} is not empty ({listed}): a `{command}` run is written to a new or empty folder, or over one "
            "where such a run was cut short")


def value_problem(args) -> str | None:
    """Why an option's value is out of its range, or None: said before anything runs, not ignored (--stop-after 0),
    looped on (--batch 0) or half obeyed (--steps 0 wrote nothing and said it had)."""
    if args.command in ("bundle", "projectors"):
        return None
    least = {"steps": 1, "seed": 0, "threads": 0, "log_every": 1, "save_every": 1, "batch_frames": 1, "batch": 1,
             "copy": 0, "curriculum": 0, "valid_limit": 1, "audio_layers": 1, "vocab": BPE_LEAST}
    for name, low in least.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            why = " (the 256 bytes and BOS, EOS, PAD)" if name == "vocab" else ""
            return f"--{name.replace('_', '-')} must be at least {low}{why}, got {value}"
    if args.stop_after is not None and not 1 <= args.stop_after <= args.steps:
        return (f"--stop-after must be a step of the --steps {args.steps} schedule (1 to {args.steps}), got "
                f"{args.stop_after}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        return f"--lr must be a positive number, got {args.lr}"
    if not 0 <= getattr(args, "babble", 0) <= 1:  # also refuses nan
        return f"--babble is a share of the utterances, from 0 to 1, got {args.babble}"
    return None


def input_problem(args) -> str | None:
    """Why a model or file named on the command line cannot be used, or None. One that is not there is a usage error
    (as `mome train --init` and `mome transcribe --model` take it); a manifest or alignments not there is a missing
    dataset, said by the stage (exit 4)."""
    if args.command == "bundle":
        named = [("checkpoint", args.checkpoint, "folder"), ("--backbones", args.backbones, "folder")]
    elif args.command == "projectors":
        named = [("source", args.source, "file")]
    else:
        named = [("--init", args.init, "folder"), ("--encoders", getattr(args, "encoders", None), "folder")]
    for flag, path, kind in named:
        if path is not None and not Path(path).exists():
            return f"{flag} {path}: no such {kind}"
    layers = getattr(args, "audio_layers", None)
    for flag, path, _ in named if layers else ():  # an encoder grows (Backbones._grow), it is never cut down
        try:
            depth = _audio_depth(Path(path)) if path is not None else 0
        except (OSError, ValueError, KeyError, TypeError):  # not a folder of backbones: said where it is loaded
            depth = 0
        if depth > layers:
            return f"--audio-layers {layers} is fewer than the {depth} layers of the audio encoder of {flag} {path}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mome_cli.pretrain", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("bundle", help="a checkpoint directory that carries its backbones")
    packer.add_argument("checkpoint", help="output directory of `mome train --model BACKBONES`")
    packer.add_argument("--backbones", required=True, help="the BACKBONES folder it was trained on")
    packer.add_argument("-o", "--output", required=True, help="the directory to write (an earlier bundle there is "
                        "replaced)")
    picker = commands.add_parser("projectors", help="the projectors of some rate pairs (a per-rate baseline's "
                                 "--init)")
    picker.add_argument("source", help="a projectors file (BACKBONES/projectors.safetensors)")
    picker.add_argument("--rates", required=True, metavar="A,V[;A,V...]", help="the (audio, video) rate pairs to keep, as "
                        "`mome train --rates` takes them")
    picker.add_argument("-o", "--output", required=True, help="the safetensors file to write (an earlier "
                        "projectors file there is replaced)")
    trainer = commands.add_parser("backbones", help="train the three small backbones on a corpus")
    reading = commands.add_parser("reader", help="teach the LM to read the stand-ins' features (alignments only)")
    fitting = commands.add_parser("standins", help="fit the stand-ins to the frozen encoders of --init (backbones "
                                  "that came without theirs)")
    for sub, steps in ((trainer, 1500), (reading, 3000), (fitting, 600)):
        sub.add_argument("--train", required=True, help="manifest of mouth-crop videos (e.g. from mome_cli.synth)")
        sub.add_argument("-o", "--output", required=True, help="folder the backbones are written to: new or empty, "
                         "or where a run of this stage was cut short (it starts again)")
        sub.add_argument("--alignments", help="the corpus's alignments.jsonl [next to --train]")
        sub.add_argument("--steps", type=int, default=steps, help=f"optimiser steps [{steps}]")
        sub.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warmup, then cosine) [2e-3]")
        sub.add_argument("--seed", type=int, default=0, help="initial weights, batch order, noise [0]")
        sub.add_argument("--init", metavar="BACKBONES", help="start from an earlier run's weights (its "
                         f"{STATE_NAME}, else its three backbones) instead of random ones; the schedule starts again")
        sub.add_argument("--stop-after", type=int, metavar="N", help="stop after step N of the --steps schedule "
                         "(saving there), as if the run had been cut short")
        sub.add_argument("--audio-units", choices=AUDIO_UNITS, help="what the audio stand-in reads [that of --init, "
                         "else letters]: each word's letters spread over its span, or the phoneme sounding at each "
                         "frame; a run that changes it starts a fresh audio stand-in")
        sub.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
        sub.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train [auto: "
                         "the GPU if there is one]")
        sub.add_argument("--log-every", type=int, default=10, help="steps between log lines [10]")
        sub.add_argument("--save-every", type=int, default=250, help="steps between saves [250]")
    for sub in (trainer, fitting):
        sub.add_argument("--batch-frames", type=int, default=400, help="padded video frames per batch [400]")
    trainer.add_argument("--match", action="store_true", help="also pull each encoder's features towards its "
                         "stand-in's (after `reader`); the LM and the stand-ins stay frozen")
    trainer.add_argument("--encoders", metavar="BACKBONES", help="then take the two encoders from these backbones")
    trainer.add_argument("--only", choices=("audio", "video"), help="train that encoder alone, on its CTC loss "
                         "(and with --match its stand-in distance): no LM runs, so steps are several times cheaper")
    trainer.add_argument("--audio-layers", type=int, metavar="N", help="audio encoder depth [that of --encoders or "
                         "--init, else 3]; one grown from a shallower encoder gets its new top layers as identities")
    trainer.add_argument("--babble", type=float, default=0.0, help="share of utterances given babble noise, 0 to 1 [0]")
    reading.add_argument("--batch", type=int, default=24, help="utterances per step; fewer rows than that make one "
                         "batch of them all [24]")
    reading.add_argument("--copy", type=int, default=0, metavar="STEPS", help="first STEPS steps: the LM alone "
                         "copies transcripts from its prefix (Backbones.copy) [0]")
    reading.add_argument("--curriculum", type=int, default=0, metavar="STEPS", help="over the first STEPS steps, "
                         "rows are runs of words cut from the utterances, from 1 word up to 20 [0: whole rows]")
    reading.add_argument("--standins", choices=("both", "audio", "none"), default="both", help="which stand-ins "
                         "train with the LM [both]; audio keeps the video one (and so an encoder matched to it) as it "
                         "is, none keeps both (the LM learns to read more text, its encoders still match)")
    reading.add_argument("--reading", metavar="JSONL", help="also read these sentences, spoken for their timings "
                         "only (mome_cli.synth --reading: reading.jsonl)")
    reading.add_argument("--vocab", type=int, metavar="N", help="a new LM (random weights, with new projectors and "
                         f"MoME modules) whose tokenizer is a byte-level BPE of N (at least {BPE_LEAST}) tokens learnt "
                         "from the sentences it reads, instead of --init's LM; the stand-ins and encoders of --init "
                         "stay")
    reading.add_argument("--valid", help="manifest to report greedy WER on at the end")
    reading.add_argument("--valid-limit", type=int, default=100, help="its first N utterances [100]")
    args = parser.parse_args(argv)
    subcommand = {"bundle": packer, "projectors": picker, "backbones": trainer, "reader": reading, "standins": fitting}
    problem = value_problem(args) or input_problem(args) or output_problem(args.command, args.output)
    if problem:  # before anything is read or trained
        subcommand[args.command].error(problem)
    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        if args.command == "bundle":
            print(bundle(args.checkpoint, args.backbones, args.output))
        elif args.command == "projectors":
            from .train_config import ConfigError, parse_rates

            try:
                pairs = parse_rates(args.rates)
            except ConfigError as e:
                parser.error(str(e))
            print(rate_projectors(args.source, pairs, args.output))
        elif args.command == "reader":
            reader(args)
        elif args.command == "standins":
            fit_standins(args)
        else:
            pretrain(args)
    except (PretrainError, DataError, CheckpointError) as e:  # what was given cannot be used: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", ExitCode.FAILURE)
    except OSError as e:  # a file that cannot be read or written: the disk full, no permission
        print(f"error: {e.filename}: {e.strerror}" if e.filename and e.strerror else f"error: {e}", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
