"""Llama for inference in plain PyTorch: the same weights and the same numbers as transformers', without its import.

On a CPU, importing transformers' modeling code (it pulls in torch._dynamo, scipy.optimize and torch.distributed)
takes longer than transcribing a 10 s clip with the demo model: 2 to 3 s on 2 cores (benchmarks/RESULTS.md, issue #8).
This module reads a transformers Llama checkpoint folder (config.json, model.safetensors or a sharded index,
tokenizer.json, tokenizer_config.json) with torch, safetensors and tokenizers alone, and runs it with the interface
mome's model and decoders use: `model(input_ids | inputs_embeds, attention_mask, position_ids, past_key_values,
use_cache, logits_to_keep).logits`, `get_decoder().layers[i].self_attn` (where MoME hooks in), a growing KV cache
with `batch_repeat_interleave` and `reorder_cache` for beam search. tests/test_llama.py checks its logits and
decoded text against transformers' LlamaForCausalLM on the same weights.

What it runs: model_type llama with SiLU MLPs, no attention or MLP biases, and rotary embeddings of type default or
llama3 (every Llama 3.x). `LlamaConfig.from_dict` refuses anything else (NotSupported), and the caller falls back to
transformers.

Notation for shapes: B rows, T new positions, S cached + new positions, H hidden width, N query heads, K key/value
heads, d head width, F MLP width, V vocabulary.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import llama_kernels


class NotSupported(Exception):
    """A checkpoint this module does not run (the caller uses transformers instead)."""


@dataclass
class LlamaConfig:
    hidden_size: int  # H
    intermediate_size: int  # F
    num_hidden_layers: int
    num_attention_heads: int  # N
    num_key_value_heads: int  # K
    head_dim: int  # d
    vocab_size: int  # V
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"  # default | llama3
    rope_scaling: dict | None = None  # llama3's factor, low/high_freq_factor, original_max_position_embeddings
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """From a transformers config.json (either the v4 keys rope_theta/rope_scaling or v5's rope_parameters)."""
        if d.get("model_type") != "llama":
            raise NotSupported(f"model_type {d.get('model_type')!r} (only llama)")
        if d.get("hidden_act", "silu") != "silu" or d.get("attention_bias") or d.get("mlp_bias"):
            raise NotSupported("a Llama with another activation or with biases")
        if d.get("pretraining_tp", 1) != 1:
            raise NotSupported("pretraining_tp != 1")
        if d.get("quantization_config"):
            raise NotSupported("a quantized checkpoint")
        check_fields(d, whole=("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"),
                     positive=("rms_norm_eps", "rope_theta"))
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise NotSupported(f"rope_type {rope_type!r}")
        if rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) != 1.0:
            raise NotSupported("partial rotary embeddings")
        if rope_type == "llama3" and not {"factor", "low_freq_factor", "high_freq_factor"} <= set(rope):
            raise NotSupported("llama3 rotary parameters incomplete")
        if rope_type == "llama3":  # the pre-training context: a top-level value first, then max_position_embeddings
            rope["original_max_position_embeddings"] = d.get("original_max_position_embeddings") or rope.get(
                "original_max_position_embeddings") or d["max_position_embeddings"]
        heads = d["num_attention_heads"]
        return cls(
            hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads, vocab_size=d["vocab_size"],
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_type=rope_type,
            rope_scaling=rope if rope_type == "llama3" else None,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        )


def read_json(path: Path | str) -> dict:
    """A JSON file of a checkpoint folder (config, tokenizer settings, index: each an object); ValueError naming the
    file if it cannot be read or holds something else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object of settings (a {type(data).__name__})")
    return data


def check_fields(d: dict, whole: tuple[str, ...] = (), positive: tuple[str, ...] = ()) -> None:
    """ValueError naming the first field of d, among those it has, that is not a whole number >= 1 (whole) or a
    number > 0 (positive): a hand-edited or damaged config.json ("hidden_size": "64") would otherwise fail deep in
    the model's build, with a TypeError from torch.empty. A field d lacks is for its reader to default or refuse."""
    for name in whole:
        value = d.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    for name in positive:
        value = d.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
            raise ValueError(f"{name} must be a number > 0, got {value!r}")


def rope_frequencies(config: LlamaConfig) -> torch.Tensor:
    """(d/2,) inverse frequencies of the rotary embedding, in float32; llama3 stretches the low ones (Llama 3.1)."""
    d = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    if config.rope_type == "llama3":
        s = config.rope_scaling
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        context = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        stretched = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelen - low) / (high - low)
        blended = (1 - smooth) * stretched / factor + smooth * stretched
        medium = (wavelen >= context / high) & (wavelen <= context / low)
        inv_freq = torch.where(medium, blended, stretched)
    return inv_freq


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (..., d) vectors by angles broadcast to them, the halves-rotated layout of Llama
    checkpoints: x * cos + [-x2, x1] * sin. sin comes with its first half negated ([-sin, sin]), so that the rotated
    halves are x rolled by d/2: three kernels (mul, roll, addcmul) instead of five."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


class Embedding(nn.Embedding):
    """nn.Embedding without the random draw at construction: its weights always come from a checkpoint. (Built on the
    meta device, that draw goes through torch's Python reference kernels, whose import of torch._dynamo costs a
    second of start-up on a CPU.)"""

    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised and scaled in float32, then cast (transformers casts before scaling: the same in float32, within
        # a bf16 rounding otherwise); one fused kernel on CUDA instead of eight.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class KVCache:
    """Keys and values of every layer for the rows being decoded, grown by one step at a time."""

    def __init__(self):
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: (B, K, S, d) keys, values

    def get_seq_length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def update(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, K, T, d) keys and values to layer `index`'s; returns all of them, (B, K, S, d) each."""
        if index == len(self.layers):
            self.layers.append((keys, values))
        else:
            old_k, old_v = self.layers[index]
            self.layers[index] = (torch.cat([old_k, keys], dim=2), torch.cat([old_v, values], dim=2))
        return self.layers[index]

    def batch_repeat_interleave(self, n: int) -> None:
        """Each row becomes n consecutive rows (beams)."""
        self.layers = [(k.repeat_interleave(n, dim=0), v.repeat_interleave(n, dim=0)) for k, v in self.layers]

    def reorder_cache(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i]."""
        self.layers = [(k[rows], v[rows]) for k, v in self.layers]


class StaticKVCache:
    """Keys and values in buffers of a fixed length S, so that every decoding step has the same shapes and buffers
    (a step can be captured as a CUDA graph and replayed). A forward of T > 1 positions (the prefill) writes slots
    0..T-1; a forward of one position writes the slot held in `slot`, a (1,) tensor that the caller advances.
    Attention reads all S slots: the caller's (B, 1, T, S) mask says which hold keys a query may see."""

    def __init__(self, config: LlamaConfig, batch: int, length: int, dtype: torch.dtype, device,
                 slot: torch.Tensor | None = None):
        shape = (batch, config.num_key_value_heads, length, config.head_dim)  # (B, K, S, d)
        self.layers = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                       for _ in range(config.num_hidden_layers)]
        self.slot = slot if slot is not None else torch.zeros(1, dtype=torch.long, device=device)  # (1,)

    def update(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, K, T, d) keys and values into layer `index`'s buffers; returns the buffers, (B, K, S, d) each."""
        k, v = self.layers[index]
        if keys.shape[2] == 1:
            k.index_copy_(2, self.slot, keys)
            v.index_copy_(2, self.slot, values)
        else:
            k[:, :, : keys.shape[2]] = keys
            v[:, :, : keys.shape[2]] = values
        return k, v


def fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, list[int]]:
    """One weight for several bias-free linears of the same input: their weights concatenated (sum of outputs, in),
    each linear's weight becoming a view of its rows (the same values, no extra memory). Returns it with the
    weights' addresses, which tell `fused` whether the views are still the linears' weights."""
    with torch.no_grad():
        weight = torch.cat([m.weight for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(weight[start : start + rows], requires_grad=m.weight.requires_grad)
        start += rows
    return weight, [m.weight.data_ptr() for m in linears]


def fused(weight: torch.Tensor | None, addresses: list[int], linears: list[nn.Linear]) -> bool:
    """Whether `weight` (from fuse) still holds the linears' weights: not once a parameter was replaced or moved
    (.to() to another device or dtype, load_state_dict with assign=True), which rebinds it elsewhere."""
    if weight is None:
        return False
    if torch.compiler.is_compiling():  # a traced step cannot read addresses; _fuse_again keeps the tensor current
        return True
    return addresses == [m.weight.data_ptr() for m in linears]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of (B, N, T, d) queries over (B, K, S, d) keys and values, query head n reading key/value head
    n // G (G = N / K); mask (B or 1, 1, T, S), True or 0 where a query may look. The G query heads of a key/value
    head are run as G*T queries of that head (a view for T = 1): no copies of the keys and values, and SDPA's fused
    kernels, which do not take grouped heads with a mask, still apply."""
    B, N, T, d = q.shape
    K, S = k.shape[1], k.shape[2]
    G = N // K
    if G > 1:
        q = q.reshape(B, K, G * T, d)  # (B, K, G*T, d): row g*T + t is query head k*G + g at position t
        if mask is not None and T > 1:  # one position's (B, 1, 1, S) mask applies to all G rows as it is
            mask = mask.unsqueeze(2).expand(-1, -1, G, -1, -1).reshape(mask.shape[0], 1, G * T, S)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, K, G*T, d)
    return out.reshape(B, N, T, d)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, index: int):
        super().__init__()
        H, N, K, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.index, self.heads, self.kv_heads, self.head_dim = index, N, K, d
        self.q_proj = nn.Linear(H, N * d, bias=False)
        self.k_proj = nn.Linear(H, K * d, bias=False)
        self.v_proj = nn.Linear(H, K * d, bias=False)
        self.o_proj = nn.Linear(N * d, H, bias=False)
        self.qkv, self.qkv_addresses = None, []  # ((N + 2K) * d, H) once fuse_projections() ran

    def projections_fused(self) -> bool:
        return fused(self.qkv, self.qkv_addresses, [self.q_proj, self.k_proj, self.v_proj])

    def forward(self, hidden_states: torch.Tensor, rope: tuple, mask: torch.Tensor, cache) -> torch.Tensor:
        B, T, _ = hidden_states.shape
        N, K, d = self.heads, self.kv_heads, self.head_dim
        if self.projections_fused():
            qkv = F.linear(hidden_states, self.qkv).view(B, T, N + 2 * K, d)
            if isinstance(cache, StaticKVCache) and llama_kernels.applies(hidden_states):  # a decoding step
                k, v = cache.layers[self.index]  # (B, K, S, d)
                q = llama_kernels.attempt(llama_kernels.rope_cache, qkv, *rope, k, v, cache.slot, N)  # (B, N, 1, d)
                if q is not None:  # rotated, and this position's keys and values written into the cache
                    out = llama_kernels.attempt(llama_kernels.attend, q, k, v, mask)  # (B, N, 1, d)
                    return self.o_proj((attend(q, k, v, mask) if out is None else out).reshape(B, T, N * d))
            qk, v = rotate(qkv[:, :, : N + K], *rope), qkv[:, :, N + K :]  # (B, T, N+K, d), (B, T, K, d)
            q, k = qk[:, :, :N], qk[:, :, N:]
        else:
            q = rotate(self.q_proj(hidden_states).view(B, T, N, d), *rope)  # (B, T, N, d)
            k = rotate(self.k_proj(hidden_states).view(B, T, K, d), *rope)  # (B, T, K, d)
            v = self.v_proj(hidden_states).view(B, T, K, d)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, N or K, T, d)
        if cache is not None:
            k, v = cache.update(self.index, k, v)  # (B, K, S, d)
        out = attend(q, k, v, mask)  # (B, N, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, N * d))  # (B, T, H)


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up, self.gate_up_addresses = None, []  # (2F, H) once fuse_projections() ran

    def projections_fused(self) -> bool:
        return fused(self.gate_up, self.gate_up_addresses, [self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.projections_fused():
            gate_up = F.linear(x, self.gate_up)  # (B, T, 2F)
            if llama_kernels.applies(x):
                act = llama_kernels.attempt(llama_kernels.silu_mul, gate_up)  # (B, T, F)
                if act is not None:
                    return self.down_proj(act)
            gate, up = gate_up.chunk(2, dim=-1)  # (B, T, F) each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, index: int):
        super().__init__()
        self.self_attn = Attention(config, index)  # (in transformers' order of parameters)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: torch.Tensor, rope: tuple, mask: torch.Tensor, cache) -> torch.Tensor:
        a = self.self_attn(self.input_layernorm(h), rope, mask, cache)
        norm = self.post_attention_layernorm
        both = (llama_kernels.attempt(llama_kernels.add_rms_norm, h, a, norm.weight, norm.eps)
                if llama_kernels.applies(h) else None)  # h + a and its norm in one kernel at decoding steps
        h, x = both if both is not None else (h + a, None)
        return h + self.mlp(norm(h) if x is None else x)


@dataclass
class Output:
    last_hidden_state: torch.Tensor | None = None  # (B, T, H)
    logits: torch.Tensor | None = None  # (B, T or logits_to_keep, V)


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and final norm: hidden states (transformers' `model.model`)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self._inv_freq: torch.Tensor | None = None  # (d/2,), made on first use where the weights are

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) positions -> cos and [-sin, sin] (B, T, 1, d) for `rotate`, computed in float32, cast to dtype."""
        if self._inv_freq is None or self._inv_freq.device != position_ids.device:
            self._inv_freq = rope_frequencies(self.config).to(position_ids.device)
        angles = position_ids.float().unsqueeze(-1) * self._inv_freq  # (B, T, d/2)
        cos, sin = angles.cos(), angles.sin()
        return (torch.cat((cos, cos), dim=-1).unsqueeze(2).to(dtype),
                torch.cat((-sin, sin), dim=-1).unsqueeze(2).to(dtype))

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | StaticKVCache | None = None, use_cache: bool = False) -> Output:
        """attention_mask: (B, S) with 1 for real positions (over the cached and new ones, as transformers takes it),
        or a (B, 1, T, S) mask already made (True or 0 where a query may look), which a StaticKVCache needs: its S
        slots are not all filled, and only the caller knows which are."""
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        B, T, _ = h.shape
        cache = past_key_values if use_cache else None
        if attention_mask is not None and attention_mask.dim() == 4:
            if position_ids is None:
                raise ValueError("a (B, 1, T, S) attention mask needs position_ids")
            mask = attention_mask
        elif isinstance(cache, StaticKVCache):
            raise ValueError("a StaticKVCache needs a (B, 1, T, S) attention mask")
        else:
            past = cache.get_seq_length() if cache is not None else 0
            S = past + T
            at = torch.arange(S, device=h.device)
            if position_ids is None:
                position_ids = at[past:].unsqueeze(0).expand(B, T)
            # Query i (at S - T + i) sees key j when j <= its position and key j is real (attention_mask, 1 = real).
            # It always sees itself, so that the rows of left padding stay finite (their outputs are never read).
            query_at = at[past:].view(T, 1)  # (T, 1)
            allowed = at.view(1, S) <= query_at  # (T, S)
            if attention_mask is not None:
                allowed = allowed & attention_mask[:, None, :S].bool()  # (B, T, S)
            mask = (allowed | (at.view(1, S) == query_at)).view(-1, 1, T, S)  # (B or 1, 1, T, S)
        rope = self.rope(position_ids, h.dtype)
        for layer in self.layers:
            h = layer(h, rope, mask, cache)
        return Output(last_hidden_state=self.norm(h))


class LlamaForCausalLM(nn.Module):
    """LlamaModel + the LM head; parameter names are those of transformers' checkpoints."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_load_state_dict_post_hook(lambda module, keys: module._fuse_again())

    def fuse_projections(self) -> "LlamaForCausalLM":
        """Each layer's q/k/v weights and gate/up weights become views of one tensor each, run as one matmul (the
        same parameters under the same names, no extra memory): 3 fewer kernels a layer and a step. For inference
        (a fused layer's projections get no gradients, and safetensors will not save tensors that share memory).
        Moving or casting the model (.to, .float, ...) or loading weights with assign=True fuses them again."""
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv, attn.qkv_addresses = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            mlp.gate_up, mlp.gate_up_addresses = fuse([mlp.gate_proj, mlp.up_proj])
        return self

    def _fuse_again(self) -> None:
        """Fuse the projections again if they were fused and some weight is now another tensor. (A traced step,
        under torch.compile, cannot check the weights' addresses itself, so a fused tensor must never be stale.)"""
        parts = [part for layer in self.model.layers for part in (layer.self_attn, layer.mlp)]
        if any(layer.self_attn.qkv is not None for layer in self.model.layers) and not all(
                part.projections_fused() for part in parts):
            self.fuse_projections()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._fuse_again()
        return self

    def get_decoder(self) -> LlamaModel:
        return self.model

    def get_input_embeddings(self) -> Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | StaticKVCache | None = None, use_cache: bool = False,
                logits_to_keep: int = 0) -> Output:
        out = self.model(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache)
        h = out.last_hidden_state
        out.logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)  # (B, T or kept, V)
        return out


class Tokenizer:
    """What mome asks of a transformers tokenizer, on the tokenizers library's Tokenizer read from tokenizer.json."""

    def __init__(self, core, bos_token: str | None, eos_token: str | None, pad_token: str | None = None):
        self.core = core
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token or eos_token

    @classmethod
    def from_folder(cls, folder) -> "Tokenizer":
        from tokenizers import Tokenizer as Core

        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise NotSupported(f"{folder} has no tokenizer.json")
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            settings = read_json(folder / "tokenizer_config.json")
        # As transformers 5 reads them: special_tokens_map.json's tokens win over tokenizer_config.json's unless
        # the latter lists its added tokens (added_tokens_decoder), then the map is not read.
        if "added_tokens_decoder" not in settings and (folder / "special_tokens_map.json").is_file():
            settings.update(read_json(folder / "special_tokens_map.json"))
        try:
            core = Core.from_file(os.fspath(folder / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises plain Exceptions for a damaged file
            raise ValueError(f"{folder / 'tokenizer.json'}: unreadable ({e})") from e
        # transformers 5 ignores clean_up_tokenization_spaces for BPE vocabularies (Llama's); for others it would
        # change the decoded text, which this class does not do.
        if settings.get("clean_up_tokenization_spaces") and type(core.model).__name__ != "BPE":
            raise NotSupported("a non-BPE tokenizer with clean_up_tokenization_spaces")
        name = lambda key: (settings.get(key) or {}).get("content") if isinstance(settings.get(key), dict) \
            else settings.get(key)  # noqa: E731 (a plain string, or an AddedToken saved as a dict)
        tokenizer = cls(core, name("bos_token"), name("eos_token"), name("pad_token"))
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise NotSupported(f"{folder}: no BOS or EOS token found in tokenizer_config.json")
        return tokenizer

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.core.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    def __len__(self) -> int:
        return self.core.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = self.core.encode(text, add_special_tokens=add_special_tokens).ids
        return _Encoding(ids)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.core.decode(list(ids), skip_special_tokens=skip_special_tokens)


@dataclass
class _Encoding:
    input_ids: list[int]


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists (ValueError naming
    the file if one cannot be read)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e!r})") from e
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise NotSupported(f"{folder} has no safetensors weights")
    from safetensors import SafetensorError

    weights = {}
    for shard in shards:
        try:
            weights.update(load_file(os.fspath(folder / shard)))
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{folder / shard}: unreadable ({e})") from e
    return weights


def build_from_weights(build, weights: dict[str, torch.Tensor], folder: Path, family: str) -> nn.Module:
    """build() on the meta device with weights' tensors as its parameters (no random initialisation), frozen and in
    eval mode, after checking that weights, read from folder, has each of its parameters, no other tensor and the
    shapes it makes (ValueError)."""
    with torch.device("meta"):
        module = build()
    expected = dict(module.named_parameters())
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit its {family} config (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{folder}: {name} is {tuple(tensor.shape)}, its config makes it "
                             f"{tuple(expected[name].shape)}")
    module.load_state_dict(weights, strict=False, assign=True)  # not strict: a tied parameter is listed once
    return module.requires_grad_(False).eval()


def llama_from_weights(config: LlamaConfig, weights: dict[str, torch.Tensor], folder) -> LlamaForCausalLM:
    """LlamaForCausalLM of config with transformers-named weights (from folder), frozen, in eval mode: the copy of
    a tied LM head and the rotary frequencies old files hold are left out (ValueError as build_from_weights)."""
    weights = {n: t for n, t in weights.items()
               if "rotary_emb" not in n and not (config.tie_word_embeddings and n == "lm_head.weight")}
    model = build_from_weights(lambda: LlamaForCausalLM(config), weights, folder, "Llama")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def load_llama(folder, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(LlamaForCausalLM, Tokenizer) from a transformers checkpoint folder; frozen, in eval mode. NotSupported for
    what this module does not run; ValueError, naming the file, for a file that cannot be read or weights that do
    not fit the config."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise NotSupported(f"{folder} has no config.json")
    settings = read_json(folder / "config.json")
    try:
        config = LlamaConfig.from_dict(settings)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{folder / 'config.json'}: not a Llama config ({e!r} missing or wrong)") from e
    except ValueError as e:  # check_fields: a field of the wrong type
        raise ValueError(f"{folder / 'config.json'}: not a Llama config: {e}") from e
    tokenizer = Tokenizer.from_folder(folder)
    model = llama_from_weights(config, read_weights(folder), folder)
    return model.to(device=device, dtype=dtype), tokenizer


__all__ = ["NotSupported", "LlamaConfig", "KVCache", "StaticKVCache", "LlamaModel", "LlamaForCausalLM", "Tokenizer",
           "read_json", "check_fields", "build_from_weights", "llama_from_weights", "load_llama"]
