"""Triton kernels for llama.py's decoding step: fewer, fused launches where one token per row goes through a layer.

Replayed as a CUDA graph, a decoding step of mome-1b is a few hundred kernels of a few microseconds each
(benchmarks/RESULTS.md, issue #8): how many there are counts as much as what they do. Five kernels replace ten
launches a layer and a slow attention:

1. `rope_cache`: the rotary embedding of a position's queries and keys, and the write of its keys and values into the
   static cache at the slot the decoder holds (a (1,) tensor on the GPU), from the fused q/k/v projection: one launch
   instead of five (mul, roll, addcmul, two index_copy). The slot must be below the cache length (StaticGreedy sees
   to it); a write past it is dropped, where PyTorch's index_copy_ would raise.
2. `attend`: the position's query heads against the cache, flash-decoding style: `attend_split` runs the grouped query
   heads of a key/value head against 32-slot blocks of the cache on as many programs, `attend_join` joins the
   blocks' softmaxes in block order (deterministic). cuDNN's attention took 16.4 µs a layer at this size, these two
   about 8.5 µs.
3. `silu_mul`: SiLU(gate) * up from the fused gate/up projection: one launch instead of two.
4. `add_rms_norm`: the residual add after attention and the MLP's RMSNorm of its result: one launch instead of two.

Each rounds where PyTorch's operations round (to the model's dtype after x * cos, after SiLU, after the add), so in
float32 and bf16 they give PyTorch's numbers up to the order of float32 operations. They serve inference only (no
autograd), on CUDA, at decoding sizes (at most MAX_ROWS rows of one position each); tests/test_llama.py runs them on a
CPU through Triton's interpreter. MOME_KERNELS=0 turns them off, as it does the MoME kernels (mome_kernels.py); if they
fail to compile or run, one warning, and PyTorch's operations from then on.

Notation for shapes: B rows, N query heads, K key/value heads, d head width, S cache slots, H hidden width, F MLP
width, M rows of any leading shape.
"""

from __future__ import annotations

import os
import warnings

import torch

MAX_ROWS = 64  # the most rows (one position each) a call sends through the kernels: decoding, one per clip
DEVICES = ("cuda",)  # where they run (tests add "cpu", where Triton's interpreter runs them)
_BLOCK_F = 1024  # silu_mul: columns per program
_BLOCK_S = 32  # attend: cache slots per program

_kernels = None  # (rope_cache, silu_mul, add_rms_norm, attend_split, attend_join), compiled on first use; False
# without Triton, or once one failed


def _load():
    global _kernels
    if _kernels is None:
        try:
            _kernels = _define()
        except ImportError:  # no Triton (it comes with torch's CUDA builds for Linux)
            _kernels = False
    return _kernels


def _define():
    import triton
    import triton.language as tl

    @triton.jit
    def rope_cache(qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, slot_ptr, stride_row, stride_angle, S,
                   N: tl.constexpr, K: tl.constexpr, d: tl.constexpr, DP: tl.constexpr):
        # (S, the cache length, is an argument, not a constant: a runner of another length needs no new compilation)
        # One head vector of one row per program: grid (B, N + 2K). Query heads are rotated into q (B, N, 1, d),
        # key heads rotated and value heads copied into the caches (B, K, S, d) at the slot.
        row, head = tl.program_id(0), tl.program_id(1)
        i = tl.arange(0, DP)  # d padded to a power of two
        inside = i < d
        x = tl.load(qkv_ptr + row * stride_row + head * d + i, mask=inside, other=0.0)
        if head < N + K:
            partner = tl.load(qkv_ptr + row * stride_row + head * d + (i + d // 2) % d, mask=inside, other=0.0)
            cos = tl.load(cos_ptr + row * stride_angle + i, mask=inside, other=0.0).to(tl.float32)
            sin = tl.load(sin_ptr + row * stride_angle + i, mask=inside, other=0.0).to(tl.float32)  # [-sin, sin]
            scaled = (x.to(tl.float32) * cos).to(x.dtype).to(tl.float32)  # x * cos, rounded as PyTorch rounds it
            y = (scaled + partner.to(tl.float32) * sin).to(x.dtype)  # + x rolled by d/2 times [-sin, sin]
            if head < N:
                tl.store(q_ptr + (row * N + head) * d + i, y, mask=inside)
            else:
                slot = tl.load(slot_ptr)
                tl.store(k_ptr + ((row * K + head - N) * S + slot) * d + i, y, mask=inside & (slot < S))
        else:
            slot = tl.load(slot_ptr)
            tl.store(v_ptr + ((row * K + head - N - K) * S + slot) * d + i, x, mask=inside & (slot < S))

    @triton.jit
    def silu_mul(gate_up_ptr, out_ptr, F: tl.constexpr, BLOCK: tl.constexpr):
        # grid (M, F / BLOCK): out[m] = SiLU(gate_up[m, :F]) * gate_up[m, F:], SiLU rounded to the dtype first
        row, block = tl.program_id(0), tl.program_id(1)
        j = block * BLOCK + tl.arange(0, BLOCK)
        inside = j < F
        gate = tl.load(gate_up_ptr + row * 2 * F + j, mask=inside, other=0.0)
        up = tl.load(gate_up_ptr + row * 2 * F + F + j, mask=inside, other=0.0).to(tl.float32)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
        tl.store(out_ptr + row * F + j, (act * up).to(gate.dtype), mask=inside)

    @triton.jit
    def add_rms_norm(h_ptr, delta_ptr, weight_ptr, sum_ptr, norm_ptr, eps, H: tl.constexpr, HP: tl.constexpr):
        # One row per program: sum = h + delta (rounded to the dtype), norm = sum / rms(sum) * weight (float32, then
        # rounded once, as F.rms_norm)
        row = tl.program_id(0)
        j = tl.arange(0, HP)
        inside = j < H
        h = tl.load(h_ptr + row * H + j, mask=inside, other=0.0)
        total = (h.to(tl.float32) + tl.load(delta_ptr + row * H + j, mask=inside, other=0.0).to(tl.float32))
        total = total.to(h.dtype)
        tl.store(sum_ptr + row * H + j, total, mask=inside)
        x = total.to(tl.float32)
        scale = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
        w = tl.load(weight_ptr + j, mask=inside, other=0.0).to(tl.float32)
        tl.store(norm_ptr + row * H + j, (x * scale * w).to(h.dtype), mask=inside)

    @triton.jit
    def attend_split(q_ptr, k_ptr, v_ptr, bias_ptr, part_ptr, scale, S, K: tl.constexpr, G: tl.constexpr,
                     d: tl.constexpr, PER_ROW: tl.constexpr, GP: tl.constexpr, DP: tl.constexpr,
                     BLOCK_S: tl.constexpr):
        # grid (B * K, S / BLOCK_S): the G query heads of one key/value head against one block of its keys, as
        # flash-decoding splits them: softmax statistics and the weighted values of the block, in float32.
        bk, split = tl.program_id(0), tl.program_id(1)
        g, i = tl.arange(0, GP), tl.arange(0, DP)
        s = split * BLOCK_S + tl.arange(0, BLOCK_S)
        in_g, in_i, in_s = g < G, i < d, s < S
        q = tl.load(q_ptr + (bk * G + g[:, None]) * d + i[None, :], mask=in_g[:, None] & in_i[None, :], other=0.0)
        kv = (bk * S + s[:, None]) * d + i[None, :]  # (BLOCK_S, DP) offsets into the keys and the values
        keys = tl.load(k_ptr + kv, mask=in_s[:, None] & in_i[None, :], other=0.0)
        scores = tl.sum(q.to(tl.float32)[:, None, :] * keys.to(tl.float32)[None, :, :], axis=2) * scale  # (GP, BS)
        bias = tl.load(bias_ptr + (bk // K if PER_ROW else 0) * S + s, mask=in_s, other=0.0)  # a row each, or one
        scores = tl.where(in_s[None, :], scores + bias.to(tl.float32)[None, :], float("-inf"))
        top = tl.max(scores, axis=1)  # (GP,): -inf for a block the bias hides entirely with -inf
        p = tl.exp(scores - tl.where(top == float("-inf"), 0.0, top)[:, None])  # 0 there, not NaN
        values = tl.load(v_ptr + kv, mask=in_s[:, None] & in_i[None, :], other=0.0).to(tl.float32)
        acc = tl.sum(p[:, :, None] * values[None, :, :], axis=1)  # (GP, DP)
        row = (bk * tl.num_programs(1) + split) * GP + g  # (GP,) rows of the partials: [top, total, acc...]
        tl.store(part_ptr + row * (DP + 2), top)
        tl.store(part_ptr + row * (DP + 2) + 1, tl.sum(p, axis=1))
        tl.store(part_ptr + row[:, None] * (DP + 2) + 2 + i[None, :], acc)

    @triton.jit
    def attend_join(part_ptr, out_ptr, splits, G: tl.constexpr, d: tl.constexpr, GP: tl.constexpr,
                    DP: tl.constexpr, SP: tl.constexpr, SB: tl.constexpr):
        # grid (B * K,): the blocks' partial softmaxes joined, SB blocks at a time in block order, into (B, N, 1, d)
        # (SP: splits rounded up to a power of two, so that cache lengths share a compilation)
        bk = tl.program_id(0)
        g, i = tl.arange(0, GP), tl.arange(0, DP)
        best = tl.full((GP,), float("-inf"), tl.float32)  # stays -inf for a row that sees no key
        for s0 in tl.static_range(0, SP, SB):  # the largest score of each query head
            split = s0 + tl.arange(0, SB)
            rows = (bk * splits + split[:, None]) * GP + g[None, :]  # (SB, GP)
            top = tl.load(part_ptr + rows * (DP + 2), mask=(split < splits)[:, None], other=float("-inf"))
            best = tl.maximum(best, tl.max(top, axis=0))
        total = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, DP), tl.float32)
        for s0 in tl.static_range(0, SP, SB):  # the blocks' sums, rescaled to it
            split = s0 + tl.arange(0, SB)
            inside = split < splits
            rows = (bk * splits + split[:, None]) * GP + g[None, :]
            top = tl.load(part_ptr + rows * (DP + 2), mask=inside[:, None], other=float("-inf"))
            seen = tl.where(best == float("-inf"), 0.0, best)
            weight = tl.where(inside[:, None], tl.exp(top - seen[None, :]), 0.0)  # (SB, GP)
            total += tl.sum(weight * tl.load(part_ptr + rows * (DP + 2) + 1, mask=inside[:, None], other=0.0), axis=0)
            part = tl.load(part_ptr + rows[:, :, None] * (DP + 2) + 2 + i[None, None, :], mask=inside[:, None, None],
                           other=0.0)  # (SB, GP, DP)
            acc += tl.sum(weight[:, :, None] * part, axis=0)
        out = acc / tl.where(total == 0.0, 1.0, total)[:, None]  # (GP, DP): 0 for a row that sees no key, as SDPA
        tl.store(out_ptr + (bk * G + g[:, None]) * d + i[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(g < G)[:, None] & (i < d)[None, :])

    return rope_cache, silu_mul, add_rms_norm, attend_split, attend_join


def applies(x: torch.Tensor) -> bool:
    """Whether the kernels serve a forward of x (B, T, H): inference on CUDA, one position for at most MAX_ROWS rows,
    not traced by torch.compile (which fuses on its own), Triton at hand, MOME_KERNELS not 0."""
    return (x.device.type in DEVICES and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and x.dim() == 3 and x.shape[1] == 1 and x.shape[0] <= MAX_ROWS
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and os.environ.get("MOME_KERNELS", "1") != "0" and bool(_load()))


def disable(error: Exception) -> None:
    """No more kernels in this process (a GPU or Triton build they do not compile or run on), said once."""
    global _kernels
    _kernels = False
    warnings.warn(f"Llama decoding kernels unavailable ({type(error).__name__}: {str(error)[:200]}); using "
                  "PyTorch's operations", RuntimeWarning, stacklevel=3)


def attempt(kernel, *args):
    """kernel(*args); None when it fails, after disable(): the caller then does the work with PyTorch's operations.
    (What fails is compiling or launching a kernel, before it writes anything; the caller's PyTorch road writes the
    same outputs again.)"""
    try:
        return kernel(*args)
    except Exception as e:  # compilation or launch: a GPU or Triton build these kernels do not run on
        disable(e)
        return None


def rope_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               slot: torch.Tensor, heads: int) -> torch.Tensor:
    """qkv (B, 1, N + 2K, d) from the fused projection; cos, sin (B, 1, 1, d) from LlamaModel.rope; the caches
    (B, K, S, d) and slot (1,) of a StaticKVCache -> the rotated queries (B, N, 1, d), the position's keys (rotated)
    and values written into the caches at the slot; None (nothing done) for another layout."""
    import triton

    kernel = _load()[0]
    B, _, heads_kv, d = qkv.shape
    K, S = keys.shape[1], keys.shape[2]
    if (heads_kv != heads + 2 * K or d % 2 or not (keys.is_contiguous() and values.is_contiguous())
            or qkv.stride(-1) != 1 or qkv.stride(-2) != d or cos.stride(-1) != 1 or cos.stride() != sin.stride()):
        return None  # not the layout of llama.py's decoding step: PyTorch's operations do it
    q = torch.empty(B, heads, 1, d, dtype=qkv.dtype, device=qkv.device)
    angle_stride = cos.stride(0) if cos.shape[0] > 1 else 0  # one position for every row, or one each
    kernel[(B, heads + 2 * K)](qkv, cos, sin, q, keys, values, slot, qkv.stride(0), angle_stride, S, N=heads, K=K,
                               d=d, DP=triton.next_power_of_2(d))
    return q


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
    """Attention of one position: q (B, N, 1, d) over the cache's keys and values (B, K, S, d), query head n reading
    key/value head n // (N / K), with the additive bias (B or 1, 1, 1, S) (0 where a query may look, a large negative
    number elsewhere) -> (B, N, 1, d). Two kernels: blocks of BLOCK_S keys on as many programs, then their join. None
    (nothing done) for another layout or a boolean mask."""
    import triton

    split, join = _load()[3:5]
    B, N, _, d = q.shape
    K, S = keys.shape[1], keys.shape[2]
    if (bias.dtype == torch.bool or bias.shape[1:] != (1, 1, S) or bias.shape[0] not in (1, B) or N % K
            or not all(t.is_contiguous() for t in (q, keys, values, bias))):
        return None
    G, splits = N // K, triton.cdiv(S, _BLOCK_S)
    GP, DP = triton.next_power_of_2(G), triton.next_power_of_2(d)
    partials = torch.empty(B * K, splits, GP, DP + 2, dtype=torch.float32, device=q.device)
    split[(B * K, splits)](q, keys, values, bias, partials, d ** -0.5, S, K=K, G=G, d=d, PER_ROW=bias.shape[0] > 1,
                           GP=GP, DP=DP, BLOCK_S=_BLOCK_S)
    out = torch.empty_like(q)
    join[(B * K,)](partials, out, splits, G=G, d=d, GP=GP, DP=DP, SP=max(16, triton.next_power_of_2(splits)), SB=16)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """(..., 2F) [gate | up] -> (..., F) SiLU(gate) * up."""
    import triton

    kernel = _load()[1]
    gate_up = gate_up.contiguous()
    F = gate_up.shape[-1] // 2
    M = gate_up.numel() // (2 * F)
    out = torch.empty(*gate_up.shape[:-1], F, dtype=gate_up.dtype, device=gate_up.device)
    kernel[(M, triton.cdiv(F, _BLOCK_F))](gate_up, out, F=F, BLOCK=_BLOCK_F)
    return out


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., H) h + delta, and its RMSNorm with weight (H,): the residual stream and the next sublayer's input."""
    import triton

    kernel = _load()[2]
    h, delta = h.contiguous(), delta.contiguous()
    H = h.shape[-1]
    total, norm = torch.empty_like(h), torch.empty_like(h)
    kernel[(h.numel() // H,)](h, delta, weight, total, norm, eps, H=H, HP=triton.next_power_of_2(H))
    return total, norm


__all__ = ["MAX_ROWS", "applies", "attempt", "disable", "rope_cache", "attend", "silu_mul", "add_rms_norm"]
