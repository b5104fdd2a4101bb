"""Triton kernels for a MoME module at decoding sizes: router, top-k and experts of a few tokens in two launches.

At a decoding step each MoME module sees one token per clip. Its arithmetic is tiny (a few MB of float32 weights),
so on a GPU its cost is the number of kernels and their fixed latency: written with PyTorch operations a module is
about fifteen launches, among them float32 products of one row that take 5 to 9 µs each and a top-k of 9 µs
(benchmarks/RESULTS.md: about 0.67 ms of a 2.6 ms decoding step of mome-1b). Here it is two:

1. `route_down`: z = x @ [router | down] + [0 | down_bias] in float32, (N, R + E*b): every token's router logits and
   every expert's hidden pre-activations. Each program takes one 128-row slice of x and 32 columns, so that even one
   token's product runs on many SMs (a program per column block, looping over x, took 50 µs on an H100; this, 3 µs);
   the slices' partial sums are added up by gate_up, in a fixed order (the same result every run).
2. `gate_up`: per token, the top-k of its R router logits (an exact tie goes to the lower index, where torch.topk's
   choice is unspecified; trained or randomly initialised routers do not tie), their softmax (the
   renormalised gates), 1 for the shared experts, then for each expert that runs (K + N_s of E: the others' weights
   are not read) GELU of its hidden units, its up-projection plus up-bias, times its gate; and `out += that`, rounded
   once to out's dtype (out is the output of the sublayer MoME runs beside, so the add and the cast of the PyTorch
   road are in it too). Each program makes 32 output columns, so that one token's pass runs on D / 32 SMs.

The router and down weights are read from a packed float32 copy (one (D, R + E*b) matrix), which stays at one
address while the weights keep theirs: a CUDA graph captured once reads it there, and decode() refills it first
(`refresh`), so that weights updated in place since (training's validation) are what it reads.

The numbers are MoME.forward's up to float32 summation order (tests/test_mome.py runs both, on a CPU through Triton's
interpreter). They serve inference only (no autograd, no routing record), on CUDA, for at most MAX_TOKENS tokens: a
prefill, with hundreds of tokens, is better served by PyTorch's matmuls. MOME_KERNELS=0 turns them off.

Notation for shapes: N tokens, D LLM width, R routed experts, E = N_s + R experts, b bottleneck, C = R + E*b.
"""

from __future__ import annotations

import os
import warnings

import torch

MAX_TOKENS = 64  # the most tokens a call sends through the kernels (decoding: one per clip in the batch)
_BLOCK_C, _BLOCK_D_IN = 32, 128  # _route_down: columns of z and rows of x per loop step of a program
_BLOCK_D_OUT = 32  # gate_up: output columns per program

_kernels = None  # (route_down, gate_up), compiled on first use; False when Triton cannot be imported


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
    def route_down(x_ptr, w_ptr, bias_ptr, part_ptr, stride_x, D: tl.constexpr, CP: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
        # One (BLOCK_D, BLOCK_C) tile of [router | down] per program: grid (N, D / BLOCK_D, CP / BLOCK_C), so that a
        # single token's pass over x runs on many SMs at once. Each writes its partial sums; gate_up adds them up
        # (in a fixed order: the same result every time, which atomics would not give).
        n, split, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        d = split * BLOCK_D + tl.arange(0, BLOCK_D)
        cols = block * BLOCK_C + tl.arange(0, BLOCK_C)  # CP is a multiple of BLOCK_C: no column mask
        in_d = d < D
        x = tl.load(x_ptr + n * stride_x + d, mask=in_d, other=0.0).to(tl.float32)  # (BLOCK_D,)
        w = tl.load(w_ptr + d[:, None] * CP + cols[None, :], mask=in_d[:, None], other=0.0)  # (BLOCK_D, BLOCK_C)
        partial = tl.sum(x[:, None] * w, axis=0)
        if split == 0:
            partial += tl.load(bias_ptr + cols)
        tl.store(part_ptr + (n * tl.num_programs(1) + split) * CP + cols, partial)

    @triton.jit
    def gate_up(part_ptr, up_w_ptr, up_b_ptr, out_ptr, stride_out, D: tl.constexpr, CP: tl.constexpr,
                S: tl.constexpr, SP: tl.constexpr,
                R: tl.constexpr, NS: tl.constexpr, E: tl.constexpr, K: tl.constexpr, b: tl.constexpr,
                RP: tl.constexpr, EP: tl.constexpr, BP: tl.constexpr, BLOCK_D: tl.constexpr):
        n, block = tl.program_id(0), tl.program_id(1)
        s = tl.arange(0, SP)  # route_down's S partial sums of each column (padded to a power of two)
        rows = part_ptr + (n * S + s[:, None]) * CP  # (SP, 1)
        r = tl.arange(0, RP)  # routed experts (padded to a power of two)
        logits = tl.sum(tl.load(rows + r[None, :], mask=(s[:, None] < S) & (r[None, :] < R), other=0.0), axis=0)
        logits = tl.where(r < R, logits, float("-inf"))
        remaining, chosen = logits, r < 0
        for _ in tl.static_range(K):  # the k largest, one at a time; a tie goes to the lower index
            best = tl.max(remaining, axis=0)
            first = tl.min(tl.where(remaining == best, r, RP), axis=0)
            chosen = chosen | (r == first)
            remaining = tl.where(r == first, float("-inf"), remaining)
        top = tl.max(tl.where(chosen, logits, float("-inf")), axis=0)
        weights = tl.where(chosen, tl.exp(logits - top), 0.0)
        g = weights / tl.sum(weights, axis=0)  # (RP,) renormalised gates of the routed experts, 0 if not chosen

        d = block * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) output columns of this program
        in_d = d < D
        e = tl.arange(0, EP)  # every expert, shared ones first
        routed_gate = tl.sum(tl.where((e[:, None] - NS) == r[None, :], g[None, :], 0.0), axis=1)  # (EP,)
        gate = tl.where(e < NS, 1.0, routed_gate)  # (EP,) 0 for the routed experts not chosen
        jb = tl.arange(0, BP)  # an expert's hidden units (padded to a power of two)
        in_j = jb < b
        acc = tl.zeros((BLOCK_D,), tl.float32)
        for x in range(E):  # the experts in order, only the K + NS that run read their weights
            gx = tl.sum(tl.where(e == x, gate, 0.0), axis=0)
            if gx != 0.0:
                j = x * b + jb
                h = tl.sum(tl.load(rows + R + j[None, :], mask=(s[:, None] < S) & in_j[None, :], other=0.0), axis=0)
                h = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))  # GELU (the exact one, as F.gelu)
                w = tl.load(up_w_ptr + j[:, None] * D + d[None, :], mask=in_j[:, None] & in_d[None, :], other=0.0)
                bias = tl.load(up_b_ptr + x * D + d, mask=in_d, other=0.0)
                acc += gx * (tl.sum(h[:, None] * w, axis=0) + bias)
        out = tl.load(out_ptr + n * stride_out + d, mask=in_d, other=0.0).to(tl.float32)
        tl.store(out_ptr + n * stride_out + d, (out + acc).to(out_ptr.dtype.element_ty), mask=in_d)

    return route_down, gate_up


def _packed(module) -> tuple[torch.Tensor, torch.Tensor]:
    """([router | down] (D, CP), [0 | down_bias] (CP,)) in float32, columns padded to a multiple of the tile. Made
    on first use and again when a weight is another tensor (moved, cast, assigned); filled again in place when one
    was updated in place (its version counter moved), so that a CUDA graph captured earlier, which reads the copy
    where it is, reads the new values. `refresh` fills it unconditionally (writes that move no counter)."""
    sources = (module.router.weight, module.down_weight, module.down_bias)
    where, versions = tuple(t.data_ptr() for t in sources), tuple(_version(t) for t in sources)
    cached = getattr(module, "_packed", None)
    if cached is None or cached[0] != where:
        E, D, b = module.down_weight.shape
        C = module.router.weight.shape[0] + E * b
        CP = -(-C // _BLOCK_C) * _BLOCK_C  # aligned rows, no column masks
        with torch.inference_mode(False):  # ordinary tensors: filled again in place also outside inference mode
            weight = torch.zeros(D, CP, dtype=torch.float32, device=module.down_weight.device)
            bias = torch.zeros(CP, dtype=torch.float32, device=module.down_weight.device)
        cached = module._packed = [where, None, weight, bias]
    if cached[1] != versions:
        _fill(module, cached[2], cached[3])
        cached[1] = versions
    return cached[2], cached[3]


def _fill(module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    E, D, b = module.down_weight.shape
    R = module.router.weight.shape[0]
    with torch.no_grad():
        weight[:, :R].copy_(module.router.weight.t())
        weight[:, R : R + E * b].copy_(module.down_weight.transpose(0, 1).reshape(D, E * b))
        bias[R : R + E * b].copy_(module.down_bias.reshape(-1))


def refresh(modules) -> None:
    """The current weights into the packed copies made so far, in place. decode() calls it first, so that weights
    changed in any way since the last call (an optimizer step, load_weights, a write through .data, which moves no
    version counter) are what the kernels read, also from a CUDA graph captured earlier (it reads the copies where
    they are)."""
    for module in modules:
        cached = getattr(module, "_packed", None)
        if cached is not None:
            _fill(module, cached[2], cached[3])


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # a tensor made under inference_mode has no version counter (refresh covers it)
        return 0


def applies(module, x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether add_mome serves this call: inference on CUDA, few tokens, float32 adapters, Triton at hand."""
    D = module.down_weight.shape[1]
    return (not torch.is_grad_enabled() and x.is_cuda and out.is_cuda and not module.record_routing
            and x.numel() // D <= MAX_TOKENS and out.is_contiguous() and out.shape[-1] == D
            and module.down_weight.dtype == torch.float32 and module.up_weight.is_contiguous()
            and module.up_bias.is_contiguous() and os.environ.get("MOME_KERNELS", "1") != "0"
            and bool(_load()))


def disable(error: Exception) -> None:
    """No more kernels in this process (a GPU or Triton build they do not compile or run on), said once."""
    global _kernels
    _kernels = False
    warnings.warn(f"MoME kernels unavailable ({type(error).__name__}: {str(error)[:200]}); using PyTorch's operations",
                  RuntimeWarning, stacklevel=2)


def add_mome(module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out += module(x), in place (out: (..., D), contiguous; x: the same leading shape): two kernel launches."""
    route_down, gate_up = _load()
    import triton

    E, D, b = module.down_weight.shape
    R, NS, K = module.config.num_routed, module.config.num_shared, module.config.top_k
    x2, out2 = x.reshape(-1, D), out.view(-1, D)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    N = x2.shape[0]
    weight, bias = _packed(module)
    CP, S = weight.shape[1], triton.cdiv(D, _BLOCK_D_IN)
    partials = torch.empty(N, S, CP, dtype=torch.float32, device=x.device)  # (N, S, CP): z = their sum over S
    route_down[(N, S, CP // _BLOCK_C)](x2, weight, bias, partials, x2.stride(0), D=D, CP=CP,
                                       BLOCK_D=_BLOCK_D_IN, BLOCK_C=_BLOCK_C)
    gate_up[(N, triton.cdiv(D, _BLOCK_D_OUT))](
        partials, module.up_weight, module.up_bias, out2, out2.stride(0), D=D, CP=CP, S=S,
        SP=triton.next_power_of_2(S), R=R, NS=NS, E=E, K=K, b=b, RP=triton.next_power_of_2(R),
        EP=triton.next_power_of_2(E), BP=triton.next_power_of_2(b), BLOCK_D=_BLOCK_D_OUT)
    return out


__all__ = ["MAX_TOKENS", "applies", "add_mome", "disable", "refresh"]
