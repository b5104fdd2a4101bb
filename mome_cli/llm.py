"""The frozen causal LLM: loading it, and tiny stand-ins built locally from configs.

`load_llm(name)` takes a hub id (e.g. meta-llama/Llama-3.2-1B), a local directory saved with save_pretrained, or the
name of a tiny model built here from a config with a fixed seed (tiny, tiny-llama, tiny-qwen2, tiny-mistral): tiny
models need no download, are the same on every machine, and exist for tests and smoke runs. Their tokenizer is
byte-level (one token per byte), so any text round-trips.

LLM_SHAPES holds the published shapes of the real backbones so that they can be built on the meta device (no
weights, no download) for parameter accounting.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from .rng import seeded

# Published architecture shapes of the real backbones (their config.json), enough to build them on the meta device.
LLM_SHAPES = {
    "meta-llama/Llama-3.2-1B": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
    ),
    "meta-llama/Llama-3.2-3B": dict(
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
    ),
    "meta-llama/Llama-3.1-8B": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
    ),
}

# Tiny decoder-only LMs for tests and smoke runs, built with TINY_SEED. initializer_range 0.15 (not transformers'
# 0.02) gives the tied embeddings a trained model's scale: with 0.02 no logit can exceed ~1.3 after the final norm,
# so no output can ever be confident and adapters on the frozen random LM barely learn.
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
                  initializer_range=0.15)
# The demo model's LM (trained on the synthetic corpus's text by pretrain.py), byte-level like the tiny ones.
DEMO_SHAPE = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                  initializer_range=0.02)
TINY_LLMS = {"tiny": "llama", "tiny-llama": "llama", "tiny-qwen2": "qwen2", "tiny-mistral": "mistral"}
TINY_SEED = 0

# Special tokens of the byte-level tokenizer, named as Llama 3 names its own.
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + BOS/EOS/PAD) built locally: no vocabulary file to download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins, one per byte
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    return tokenizer


def llm_config(model_type: str, **shape):
    """A transformers config of the given family and shape."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **shape)


def bpe_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer of vocab_size tokens learnt from texts (an iterable of strings): the 256 bytes,
    BOS/EOS/PAD and the most frequent merges, so frequent words are one token each and any text still round-trips.
    Every word, the first of a text too, is read with the space before it (add_prefix_space), so a word has one
    spelling wherever it stands. The same texts give the same tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def build_byte_llm(model_type: str, shape: dict, seed: int = TINY_SEED, tokenizer=None):
    """A random LM of a family and shape with the byte tokenizer (or the tokenizer given), drawn from seed (on the
    CPU, in fp32)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or byte_tokenizer()
    config = llm_config(
        model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape,
    )
    with seeded(seed):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def build_tiny_llm(name: str = "tiny"):
    """A tiny random LM and its byte tokenizer, identical on every machine (seeded, built on the CPU in fp32)."""
    if name not in TINY_LLMS:
        raise ValueError(f"unknown tiny LLM {name!r}; choose from {', '.join(TINY_LLMS)}")
    return build_byte_llm(TINY_LLMS[name], TINY_SHAPE)


def build_on_meta(name: str) -> nn.Module:
    """The real backbone's module tree with no weights (meta device), for counting parameters."""
    from transformers import AutoModelForCausalLM

    if name in TINY_LLMS:
        shape = dict(TINY_SHAPE, vocab_size=len(byte_tokenizer()))
        config = llm_config(TINY_LLMS[name], **shape)
    elif name in LLM_SHAPES:
        config = llm_config(**LLM_SHAPES[name])
    else:
        raise ValueError(f"no built-in shape for {name!r}; known: {', '.join(LLM_SHAPES)}")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@contextlib.contextmanager
def no_progress_bars():
    """Hide transformers' "Loading weights" bar (a few hundred tensors load in well under a second); its warnings,
    missing or unexpected keys among them, still show."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


@contextlib.contextmanager
def unreadable_as(error: type[Exception], source: str):
    """transformers' errors for a folder it cannot load as `error`, on one line that names the folder: OSError for a
    file it lacks (no weights, no preprocessor_config.json), ValueError for one it cannot make sense of (no tokenizer
    it can build), StrictDataclassError for a config field of the wrong type. Its messages run over several lines,
    and a traceback is not what a user needs to see."""
    from huggingface_hub.errors import StrictDataclassError  # a config field of the wrong type ("hidden_size": "64")

    try:
        yield
    except (OSError, ValueError, StrictDataclassError) as e:
        raise error(f"{source}: {' '.join(str(e).split())}") from e


def load_with_transformers(source: str, revision: str | None, dtype: torch.dtype | None):
    """(model, tokenizer) through transformers' Auto classes: for the families llama.py does not run, with
    MOME_NATIVE=0, and in training. The config is checked before any weight is read: a JSON object (transformers
    fails on any other with a TypeError) that makes a Llama-style LM, whose decoder layers MoME hooks into, not GPT-2
    or Whisper's decoder (their weights would load with a report of hundreds of keys, and fail after). CheckpointError,
    naming the folder or its config.json, for what cannot be loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .checkpoint import CheckpointError
    from .llama import read_json
    from .mome import decoder_layers

    config_file = os.path.join(source, "config.json")
    if os.path.isfile(config_file):
        try:
            read_json(config_file)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    with unreadable_as(CheckpointError, source), no_progress_bars():
        config = AutoConfig.from_pretrained(source, revision=revision)
        with torch.device("meta"):  # its module tree, no weights
            skeleton = AutoModelForCausalLM.from_config(config)
        try:
            decoder_layers(skeleton)
        except TypeError as e:  # decoder_layers' word for a model without Llama-style layers
            raise CheckpointError(f"{config_file}: model_type {config.model_type!r}: {e}") from None
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, config=config, revision=revision, dtype=dtype)
    return model, tokenizer


def load_llm(name: str, revision: str | None = None, dtype: torch.dtype | None = None, device: str = "cpu",
             native: bool = False):
    """(model, tokenizer) for a tiny name, a local directory or a hub id; frozen, in eval mode.

    native: a local Llama folder runs on mome's own Llama and tokenizer wrapper (llama.py), which need no transformers
    import; transformers' classes are used for what llama.py does not run (other families, other rotary types).
    """
    model = tokenizer = None
    if dtype is None and name not in TINY_LLMS:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if native and name not in TINY_LLMS and os.path.isdir(name):
        from .checkpoint import CheckpointError
        from .llama import NotSupported, load_llama

        try:
            model, tokenizer = load_llama(name, dtype=dtype, device=device)
        except NotSupported:
            pass
        except ValueError as e:  # weights that cannot be read or do not fit the config
            raise CheckpointError(str(e)) from e
    if model is None and name in TINY_LLMS:
        model, tokenizer = build_tiny_llm(name)
    elif model is None:
        model, tokenizer = load_with_transformers(os.fspath(name), revision, dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    if dtype is not None:
        cast_parameters(model, dtype)
    model = model.to(device)
    if hasattr(model, "fuse_projections"):  # llama.py's model, now where it runs
        model.fuse_projections()
    return model, tokenizer


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """The weights to dtype, in place (tied ones stay tied); buffers stay as they are. `model.to(dtype)` would also
    round transformers' rotary inverse frequencies (a float32 buffer, as from_pretrained(dtype=...) leaves it) to
    bf16: rotation angles off by about 0.4%, a whole radian a few hundred positions in."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


__all__ = ["LLM_SHAPES", "TINY_LLMS", "byte_tokenizer", "bpe_tokenizer", "build_byte_llm", "build_tiny_llm",
           "build_on_meta", "no_progress_bars", "unreadable_as", "load_with_transformers", "load_llm",
           "cast_parameters"]
