"""Deterministic decoding with a KV cache: greedy or beam search, at any one trained rate.

The prefix (modality tokens and prompt, left-padded) is run once to fill the cache; then one token per step. Nothing is
sampled: the same input gives the same text every time. Beam search keeps `beam_size` live hypotheses per clip, sets
aside those that end in EOS, stops a clip once `beam_size` have ended, and ranks the ended ones by log-probability
normalised for length.

Notation for shapes: B clips, K beams per clip, L prefix length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import AVSRModel, Features, Rate


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1  # 1: greedy; K > 1: beam search with K beams
    max_new_tokens: int = 96  # stop after this many tokens (EOS included) if EOS has not come
    length_penalty: float | None = None  # None: rank by log-prob / length; a: by log-prob / ((5 + length) / 6) ** a

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
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
        from transformers import DynamicCache

        self.llm = model.llm
        prefix = model.prefix(features, rate, mode, any_rate)
        self.cache = DynamicCache(config=self.llm.config)
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


class GreedyDecoder:
    def __init__(self, options: DecodingOptions, eos: int):
        self.options, self.eos = options, eos

    def run(self, stepper: _Stepper) -> list[tuple[list[int], float]]:
        logprobs = stepper.logprobs  # (B, V)
        B = logprobs.shape[0]
        finished = torch.zeros(B, dtype=torch.bool, device=logprobs.device)
        total = torch.zeros(B, device=logprobs.device)
        steps = []
        for step in range(self.options.max_new_tokens):
            best, token = logprobs.max(dim=-1)  # (B,), (B,)
            token = torch.where(finished, self.eos, token)
            total += torch.where(finished, 0.0, best)
            steps.append(token)
            finished |= token == self.eos
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

    def run(self, stepper: _Stepper) -> list[tuple[list[int], float]]:
        K, eos = self.options.beam_size, self.eos
        B = stepper.logprobs.shape[0]
        stepper.repeat(K)
        device = stepper.logprobs.device
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        seqs = [[] for _ in range(B * K)]
        ended = [[] for _ in range(B)]  # per clip: (ranking score, tokens, logprob)
        logprobs = stepper.logprobs  # (B*K, V)
        V = logprobs.shape[-1]
        for step in range(self.options.max_new_tokens):
            candidates = (scores.reshape(-1, 1) + logprobs).reshape(B, K * V)  # (B, K*V)
            top_scores, top_index = candidates.topk(2 * K, dim=-1)  # (B, 2K): K live ones survive any K EOS
            top_scores, top_index = top_scores.tolist(), top_index.tolist()
            rows, tokens, new_scores, new_seqs = [], [], [], []
            for b in range(B):
                kept = 0
                for s, idx in zip(top_scores[b], top_index[b]):
                    if kept == K or len(ended[b]) >= K or s == float("-inf"):
                        break
                    source, token = b * K + idx // V, idx % V
                    if token == eos:
                        ended[b].append((self.score(s, len(seqs[source]) + 1), seqs[source], s))
                        continue
                    rows.append(source), tokens.append(token), new_scores.append(s)
                    new_seqs.append(seqs[source] + [token])
                    kept += 1
                for _ in range(K - kept):  # a finished clip keeps K inert rows so that shapes stay (B*K, ...)
                    rows.append(b * K), tokens.append(eos), new_scores.append(float("-inf"))
                    new_seqs.append([])
            seqs, scores = new_seqs, torch.tensor(new_scores, device=device).reshape(B, K)
            if all(len(e) >= K for e in ended) or step + 1 == self.options.max_new_tokens:
                break
            stepper.reorder(torch.tensor(rows, device=device))
            logprobs = stepper.step(torch.tensor(tokens, device=device))
        results = []
        for b in range(B):
            pool = ended[b]
            if len(pool) < K:  # out of steps: live beams compete as they are
                for j in range(K):
                    s = float(scores[b, j])
                    if s > float("-inf"):
                        pool.append((self.score(s, len(seqs[b * K + j])), seqs[b * K + j], s))
            _, tokens, logprob = max(pool, key=lambda item: item[0])
            results.append((tokens, logprob))
        return results


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
) -> list[DecodingResult]:
    """Transcribe a batch of clips at one rate."""
    eos = model.tokenizer.eos_token_id
    stepper = _Stepper(model, features, rate, mode, any_rate)
    decoder = GreedyDecoder(options, eos) if options.beam_size == 1 else BeamSearchDecoder(options, eos)
    results = []
    for tokens, logprob in decoder.run(stepper):
        text = " ".join(model.tokenizer.decode(tokens, skip_special_tokens=True).split())  # one line, single spaces
        results.append(DecodingResult(text=text, tokens=tokens, logprob=logprob))
    return results


__all__ = ["DecodingOptions", "DecodingResult", "GreedyDecoder", "BeamSearchDecoder", "decode"]
