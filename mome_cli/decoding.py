"""Deterministic decoding with a KV cache: greedy or beam search, at any one trained rate.

The prefix (modality tokens and prompt, left-padded) is run once to fill the cache; then one token per step. Nothing is
sampled: the same input gives the same text every time. Beam search keeps `beam_size` live hypotheses per clip, sets
aside those that end in EOS, stops a clip once `beam_size` have ended, and ranks the ended ones by log-probability
normalised for length.

Greedy decoding on a CUDA device takes a faster road to the same tokens (StaticGreedy): the cache has a fixed size,
so every step has the same shapes and the same buffers, and one step (LLM forward, argmax, bookkeeping) is captured
once as a CUDA graph and replayed; the host only looks at the GPU every CHECK_EVERY steps, to stop once every row has
ended. A step then costs one graph launch instead of hundreds of kernel launches from Python, and the capture costs
about as much as one step, so the first transcript is fast too (no torch.compile; Triton compiles the kernels of
mome_kernels.py and llama_kernels.py once per machine, then reads them from its disk cache).

Notation for shapes: B clips, K beams per clip, L prefix length, S cache length, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .model import AVSRModel, Features, Rate
from .options import MAX_BEAM
from .outputs import clean_text


TOKENS_PER_SECOND = 32  # room for fast speech (5 words a second) written byte by byte; subword tokenizers use fewer


def token_budget(seconds: float) -> int:
    """How many tokens a segment of `seconds` may generate before it is cut short: TOKENS_PER_SECOND, rounded up to
    a multiple of 32 (so that batches of similar lengths share a static cache), at least 64."""
    return max(64, -(-math.ceil(seconds * TOKENS_PER_SECOND) // 32) * 32)


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1  # 1: greedy; K > 1: beam search with K beams, at most MAX_BEAM
    max_new_tokens: int = 96  # stop after this many tokens (EOS included) if EOS has not come
    length_penalty: float | None = None  # None: rank by log-prob / length; a: by log-prob / ((5 + length) / 6) ** a
    cuda_graphs: bool = True  # greedy on a CUDA device: static cache and a captured decode step (same tokens)

    def __post_init__(self):
        if not 1 <= self.beam_size <= MAX_BEAM:
            raise ValueError(f"beam_size must be in [1, {MAX_BEAM}], got {self.beam_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 2:
            raise ValueError(f"length_penalty must be in [0, 2] or None, got {self.length_penalty}")


@dataclass
class DecodingResult:
    text: str
    tokens: list[int]  # generated ids, EOS excluded
    logprob: float  # sum of the tokens' log-probabilities (EOS included when it was generated)


class _Stepper:
    """Runs the LLM over a prefix, then one token per row at a time, keeping the cache, mask and positions."""

    def __init__(self, model: AVSRModel, features: Features, rate: Rate, mode: str, any_rate: bool):
        self.llm = model.llm
        prefix = model.prefix(features, rate, mode, any_rate)
        self.cache = _dynamic_cache(self.llm)
        self.mask = prefix.attention_mask  # (B, L)
        self.next_position = prefix.position_ids[:, -1] + 1  # (B,)
        out = self.llm(inputs_embeds=prefix.embeds, attention_mask=self.mask, position_ids=prefix.position_ids,
                       past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.logprobs = out.logits[:, -1].float().log_softmax(-1)  # (B, V)

    def repeat(self, k: int) -> None:
        """Each row becomes k consecutive rows (beams)."""
        self.cache.batch_repeat_interleave(k)
        self.mask = self.mask.repeat_interleave(k, dim=0)
        self.next_position = self.next_position.repeat_interleave(k, dim=0)
        self.logprobs = self.logprobs.repeat_interleave(k, dim=0)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i]."""
        self.cache.reorder_cache(rows)
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (R,); returns the next-token log-probabilities (R, V)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.llm(input_ids=tokens.unsqueeze(1), attention_mask=self.mask,
                       position_ids=self.next_position.unsqueeze(1), past_key_values=self.cache, use_cache=True)
        self.next_position = self.next_position + 1
        self.logprobs = out.logits[:, -1].float().log_softmax(-1)
        return self.logprobs


def _dynamic_cache(llm):
    """A growing KV cache of the kind the LLM takes: mome's own for llama.py's model, transformers' otherwise."""
    from .llama import KVCache, LlamaForCausalLM

    if isinstance(llm, LlamaForCausalLM):
        return KVCache()
    from transformers import DynamicCache

    return DynamicCache(config=llm.config)


def _row_limits(options: DecodingOptions, B: int, limits: list[int] | None, device) -> torch.Tensor:
    """(B,) how many tokens each row may generate: its own limit (a short segment batched with a long one stops where
    it would alone), else options.max_new_tokens."""
    if limits is None:
        return torch.full((B,), options.max_new_tokens, dtype=torch.long, device=device)
    if len(limits) != B or not all(1 <= n <= options.max_new_tokens for n in limits):
        raise ValueError(f"limits must be {B} numbers in [1, {options.max_new_tokens}], got {limits}")
    return torch.tensor(limits, dtype=torch.long, device=device)


class GreedyDecoder:
    def __init__(self, options: DecodingOptions, eos: int):
        self.options, self.eos = options, eos

    def run(self, stepper: _Stepper, limits: list[int] | None = None) -> list[tuple[list[int], float]]:
        logprobs = stepper.logprobs  # (B, V)
        B = logprobs.shape[0]
        limit = _row_limits(self.options, B, limits, logprobs.device)  # (B,)
        finished = torch.zeros(B, dtype=torch.bool, device=logprobs.device)
        total = torch.zeros(B, device=logprobs.device)
        steps = []
        for step in range(self.options.max_new_tokens):
            best, token = logprobs.max(dim=-1)  # (B,), (B,)
            token = torch.where(finished, self.eos, token)
            total += torch.where(finished, 0.0, best)
            steps.append(token)
            finished |= (token == self.eos) | (limit <= step + 1)  # a row at its limit ends as it would alone
            if bool(finished.all()) or step + 1 == self.options.max_new_tokens:
                break
            logprobs = stepper.step(token)
        tokens = torch.stack(steps, dim=1).tolist()  # (B, steps)
        return [(_until_eos(t, self.eos), float(s)) for t, s in zip(tokens, total.tolist())]


class BeamSearchDecoder:
    def __init__(self, options: DecodingOptions, eos: int):
        self.options, self.eos = options, eos

    def score(self, logprob: float, length: int) -> float:
        alpha = self.options.length_penalty
        return logprob / (length if alpha is None else ((5 + length) / 6) ** alpha)

    def run(self, stepper: _Stepper, limits: list[int] | None = None) -> list[tuple[list[int], float]]:
        K, eos = self.options.beam_size, self.eos
        B = stepper.logprobs.shape[0]
        limit = _row_limits(self.options, B, limits, stepper.logprobs.device).tolist()
        stepper.repeat(K)
        device = stepper.logprobs.device
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        seqs = [[] for _ in range(B * K)]
        ended = [[] for _ in range(B)]  # per clip: (ranking score, tokens, logprob)
        done = [False] * B  # a clip past its own limit: decided, its rows inert
        logprobs = stepper.logprobs  # (B*K, V)
        V = logprobs.shape[-1]
        for step in range(self.options.max_new_tokens):
            candidates = (scores.reshape(-1, 1) + logprobs).reshape(B, K * V)  # (B, K*V)
            top_scores, top_index = candidates.topk(2 * K, dim=-1)  # (B, 2K): K live ones survive any K EOS
            top_scores, top_index = top_scores.tolist(), top_index.tolist()
            rows, tokens, new_scores, new_seqs = [], [], [], []
            for b in range(B):
                kept = 0
                for rank, (s, idx) in enumerate(zip(top_scores[b], top_index[b])):
                    if kept == K or len(ended[b]) >= K or done[b] or s == float("-inf"):
                        break
                    source, token = b * K + idx // V, idx % V
                    if token == eos:  # ends a hypothesis only from the top K (as transformers' and fairseq's search)
                        if rank < K:
                            ended[b].append((self.score(s, len(seqs[source]) + 1), seqs[source], s))
                        continue
                    rows.append(source), tokens.append(token), new_scores.append(s)
                    new_seqs.append(seqs[source] + [token])
                    kept += 1
                for _ in range(K - kept):  # a finished clip keeps K inert rows so that shapes stay (B*K, ...)
                    rows.append(b * K), tokens.append(eos), new_scores.append(float("-inf"))
                    new_seqs.append([])
            for b in range(B):  # a clip at its own limit is decided as it would be alone, out of steps
                if not done[b] and limit[b] == step + 1:
                    self._out_of_steps(ended[b], new_scores[b * K : (b + 1) * K], new_seqs[b * K : (b + 1) * K])
                    done[b] = True
                    for j in range(b * K, (b + 1) * K):
                        rows[j], tokens[j], new_scores[j], new_seqs[j] = b * K, eos, float("-inf"), []
            seqs, scores = new_seqs, torch.tensor(new_scores, device=device).reshape(B, K)
            if all(len(e) >= K or d for e, d in zip(ended, done)) or step + 1 == self.options.max_new_tokens:
                break
            stepper.reorder(torch.tensor(rows, device=device))
            logprobs = stepper.step(torch.tensor(tokens, device=device))
        results = []
        for b in range(B):
            if not done[b]:
                self._out_of_steps(ended[b], scores[b].tolist(), seqs[b * K : (b + 1) * K])
            _, tokens, logprob = max(ended[b], key=lambda item: item[0])
            results.append((tokens, logprob))
        return results

    def _out_of_steps(self, pool: list, scores: list[float], seqs: list[list[int]]) -> None:
        """A clip's hypotheses when its steps are over: with fewer than K ended, its live beams compete as they are."""
        if len(pool) < self.options.beam_size:
            for s, seq in zip(scores, seqs):
                if s > float("-inf"):
                    pool.append((self.score(s, len(seq)), seq, s))


CHECK_EVERY = 8  # StaticGreedy asks the GPU whether every row has ended once per this many steps
CACHE_ROUNDING = 64  # its cache length is rounded up to a multiple of this, so that batches of near lengths share one


class StaticGreedy:
    """Greedy decoding on a fixed-size KV cache, the decode step optionally captured as a CUDA graph and replayed.

    It gives the tokens GreedyDecoder gives. Everything a step reads or writes lives in buffers allocated once: the
    fed token, each row's position, the cache slot being written, the additive attention bias over the cache (0 where
    a row may look, the dtype's minimum elsewhere), the generated tokens, their summed log-probabilities and which
    rows have ended. A runner serves any batch of B rows whose prefix plus max_new_tokens fits its cache (batches sorted
    longest first, as evaluate and transcribe sort them, all fit the first one's): `run` resets the buffers in place,
    so a graph captured for one batch replays for the next.
    """

    def __init__(self, llm, batch: int, cache_len: int, max_new_tokens: int, eos: int, graphs: bool,
                 weights: tuple = ()):
        from .llama import LlamaForCausalLM, StaticKVCache

        param = next(llm.parameters())
        device, self.dtype = param.device, param.dtype
        self.llm, self.eos, self.graphs = llm, eos, graphs
        self.weights = weights  # where the model's tensors were when this runner was made (see _static_greedy)
        self.batch, self.cache_len, self.capacity = batch, cache_len, max_new_tokens
        self.blocked = torch.finfo(self.dtype).min
        long = dict(dtype=torch.long, device=device)
        self.bias = torch.full((batch, 1, 1, cache_len), self.blocked, dtype=self.dtype, device=device)  # (B,1,1,S)
        self.token = torch.zeros(batch, **long)  # (B,) the token fed at the next step
        self.position = torch.zeros(batch, **long)  # (B,) its position id
        self.slot = torch.zeros(1, **long)  # (1,) the cache slot it is written to (the same for every row)
        if isinstance(llm, LlamaForCausalLM):  # llama.py's cache writes where self.slot says
            self.cache = StaticKVCache(llm.config, batch, cache_len, self.dtype, device, slot=self.slot)
        else:
            from transformers import StaticCache

            self.cache = StaticCache(config=llm.config, max_cache_len=cache_len)
        self.step = torch.zeros(1, **long)  # (1,) the index of the token this step chooses
        self.tokens = torch.full((batch, max_new_tokens), eos, **long)  # (B, capacity)
        self.total = torch.zeros(batch, dtype=torch.float32, device=device)  # (B,)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
        self.limit = torch.full((batch,), max_new_tokens, **long)  # (B,) how many tokens each row may generate
        self.graph = None
        self.warm_steps = 0
        self.step_fn = self._step  # what a step runs (and the graph captures): _step, or its compiled form

    def compile(self) -> None:
        """Compile the step with torch.compile (inductor) before it is captured: fused kernels in the graph, for a
        compilation of tens of seconds at the first step. An experiment, measured by benchmarks/latency.py --compile."""
        self.step_fn = torch.compile(self._step, dynamic=False)

    def fits(self, batch: int, prefix_len: int, max_new_tokens: int) -> bool:
        return (batch == self.batch and max_new_tokens <= self.capacity
                and prefix_len + max_new_tokens <= self.cache_len)

    def _step(self) -> None:
        """Feed self.token to every row, choose the next token, record it; only in-place work on the buffers."""
        self.bias.index_fill_(3, self.slot, 0.0)  # the fed token sees itself
        logits = self.llm(input_ids=self.token.unsqueeze(1), attention_mask=self.bias,
                          position_ids=self.position.unsqueeze(1), past_key_values=self.cache, use_cache=True).logits
        best, token = logits[:, -1].float().log_softmax(-1).max(dim=-1)  # (B,), (B,)
        token = torch.where(self.finished, self.eos, token)
        self.total.add_(torch.where(self.finished, 0.0, best))
        self.finished.logical_or_(token == self.eos).logical_or_(self.limit <= self.step + 1)  # a row at its limit
        self.tokens.index_copy_(1, self.step, token.unsqueeze(1))
        self.token.copy_(token)
        self.position.add_(1)
        self.slot.add_(1)
        self.step.add_(1)

    def _advance(self) -> None:
        if not self.graphs:
            return self.step_fn()
        if self.graph is None and self.warm_steps < 2:
            # The first steps run eagerly on a side stream, so that cuBLAS and the allocator settle before capture.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.step_fn()
            torch.cuda.current_stream().wait_stream(stream)
            self.warm_steps += 1
            return
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records the step without running it
                self.step_fn()
        self.graph.replay()

    def run(self, prefix, max_new_tokens: int, limits: torch.Tensor | None = None) -> list[tuple[list[int], float]]:
        """Prefill the cache with a left-padded Prefix, then decode; (tokens without EOS, summed log-prob) per row.
        limits: (B,) how many tokens each row may generate (each at most max_new_tokens), or None: max_new_tokens."""
        B, L = prefix.attention_mask.shape
        S = self.cache_len
        device = self.bias.device
        if hasattr(self.cache, "reset"):  # transformers'; llama.py's needs none (the mask hides stale slots)
            self.cache.reset()
        self.slot.fill_(0)  # llama.py's cache writes a one-position prefill at the slot (the last run's otherwise)
        keys = torch.zeros(B, S, dtype=torch.bool, device=device)
        keys[:, :L] = prefix.attention_mask.bool()  # (B, S): real prefix positions
        causal = torch.ones(L, S, dtype=torch.bool, device=device).tril()  # (L, S): key j <= query i
        allowed = (causal.unsqueeze(0) & keys.unsqueeze(1)).unsqueeze(1)  # (B, 1, L, S)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=device).masked_fill(~allowed, self.blocked)
        out = self.llm(inputs_embeds=prefix.embeds, attention_mask=mask, position_ids=prefix.position_ids,
                       past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        best, token = out.logits[:, -1].float().log_softmax(-1).max(dim=-1)  # (B,), (B,)

        self.bias.copy_(torch.where(keys, 0.0, self.blocked).to(self.dtype)[:, None, None, :])
        self.token.copy_(token)
        self.position.copy_(prefix.position_ids[:, -1] + 1)
        self.slot.fill_(L)
        self.step.fill_(1)
        self.tokens.fill_(self.eos)
        self.tokens[:, 0] = token
        self.total.copy_(best)
        if limits is None:
            self.limit.fill_(max_new_tokens)
        else:
            self.limit.copy_(limits)
        self.finished.copy_((token == self.eos) | (self.limit <= 1))
        for i in range(max_new_tokens - 1):
            if i % CHECK_EVERY == 0 and bool(self.finished.all()):  # the only host sync: once per CHECK_EVERY steps
                break
            self._advance()
        tokens, totals = self.tokens[:, :max_new_tokens].tolist(), self.total.tolist()
        return [(_until_eos(t, self.eos), float(s)) for t, s in zip(tokens, totals)]


def _static_greedy(model: AVSRModel, prefix, max_new_tokens: int, eos: int, graphs: bool) -> StaticGreedy:
    """The model's runner for this batch, made (and kept on the model) when the last one does not fit it."""
    B, L = prefix.attention_mask.shape
    # A captured graph reads the weights where they were: one moved or cast since (.to(), load_state_dict with
    # assign) makes the runner stale.
    weights = tuple(p.data_ptr() for p in model.parameters())
    runner = getattr(model, "_static_greedy", None)
    if (runner is None or runner.graphs != graphs or runner.weights != weights
            or not runner.fits(B, L, max_new_tokens)):
        model._static_greedy = None  # free the old cache and graph before allocating new ones
        cache_len = -(-(L + max_new_tokens) // CACHE_ROUNDING) * CACHE_ROUNDING
        runner = StaticGreedy(model.llm, B, cache_len, max_new_tokens, eos, graphs, weights)
        model._static_greedy = runner
    return runner


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.inference_mode()
def decode(
    model: AVSRModel,
    features: Features,
    rate: Rate,
    mode: str = "av",
    options: DecodingOptions = DecodingOptions(),
    any_rate: bool = False,
    static: bool | None = None,
    limits: list[int] | None = None,
) -> list[DecodingResult]:
    """Transcribe a batch of clips at one rate.

    static: greedy on the static cache (StaticGreedy) even on the CPU (True), never (False), or on CUDA only (None).
    limits: how many tokens each clip may generate (each at most options.max_new_tokens), or None: that many each.
    A clip gets the tokens it gets decoded alone with its limit as max_new_tokens, whatever it is batched with.
    """
    from .mome_kernels import refresh

    refresh(model.mome)  # weights changed since the last call (training's validation) reach the MoME kernels
    eos = model.tokenizer.eos_token_id
    on_cuda = next(model.llm.parameters()).device.type == "cuda"
    if options.beam_size == 1 and (static or (static is None and options.cuda_graphs and on_cuda)):
        prefix = model.prefix(features, rate, mode, any_rate)
        runner = _static_greedy(model, prefix, options.max_new_tokens, eos, graphs=on_cuda and options.cuda_graphs)
        B = prefix.embeds.shape[0]
        found = runner.run(prefix, options.max_new_tokens,
                           None if limits is None else _row_limits(options, B, limits, prefix.embeds.device))
    else:
        stepper = _Stepper(model, features, rate, mode, any_rate)
        decoder = GreedyDecoder(options, eos) if options.beam_size == 1 else BeamSearchDecoder(options, eos)
        found = decoder.run(stepper, limits)
    results = []
    for tokens, logprob in found:
        results.append(DecodingResult(text=clean_text(model.tokenizer.decode(tokens, skip_special_tokens=True)),
                                      tokens=tokens, logprob=logprob))
    return results


__all__ = ["TOKENS_PER_SECOND", "token_budget", "DecodingOptions", "DecodingResult", "clean_text", "GreedyDecoder",
           "BeamSearchDecoder", "StaticGreedy", "decode"]
