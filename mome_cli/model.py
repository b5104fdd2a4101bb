"""The MoME speech recogniser: compressed audio/video tokens -> frozen causal LLM with MoME modules -> text.

Encoder features come in (the encoders stage makes them); per rate they are compressed and projected, laid out with the
prompt and transcript as one sequence per (clip, rate), and all sequences of all asked rates go through the LLM in one
padded forward. Only the projectors and the MoME modules train; the LLM is frozen.

Sequence layout, one row per clip and rate (predecessors' convention; tags and prompt are plain text):

    [BOS] <audio> A-tokens </audio> <video> V-tokens </video> prompt transcript [EOS]

with the audio or video part left out in modes v and a. Labels are -100 everywhere except the transcript and EOS.
Training rows are right-padded; decoding prefixes are left-padded so that every row continues at the same index.

Notation for shapes: B clips, T frames, D encoder width, M = rates x B rows, L row length, H LLM width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .compression import MatryoshkaCompressor, to_device
from .configuration import DEFAULT_PROMPTS, DEFAULT_RATES, MODES, ModelConfig, Rate
from .mome import MoME, active_parameters, attach, decoder_layers, load_balancing_loss

IGNORE_INDEX = -100  # label of positions that carry no loss


@dataclass
class Features:
    """Frozen-encoder outputs for a batch of B clips; a modality may be absent (None)."""

    audio: torch.Tensor | None = None  # (B, Ta, Da) at 50 Hz
    audio_lengths: torch.Tensor | None = None  # (B,) real frames
    video: torch.Tensor | None = None  # (B, Tv, Dv) at 25 Hz
    video_lengths: torch.Tensor | None = None  # (B,) real frames

    @property
    def batch_size(self) -> int:
        return (self.audio if self.audio is not None else self.video).shape[0]


@dataclass
class ModelOutput:
    loss: torch.Tensor  # lm_loss + lb_coef * lb_loss
    lm_loss: torch.Tensor  # mean over rates of each rate's token-mean cross-entropy
    lb_loss: torch.Tensor  # load-balancing loss, mean over layers and rates
    rate_losses: dict  # rate -> that rate's LM loss (detached)


@dataclass
class Prefix:
    """Left-padded decoding prefixes, one row per clip."""

    embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) 1 for real positions
    position_ids: torch.Tensor  # (B, L) 0.. from each row's first real position


def check_rate(rate: Rate, mode: str) -> Rate:
    a, v = rate
    if (a is not None) != ("a" in mode) or (v is not None) != ("v" in mode):
        raise ValueError(f"rate {rate} does not fit mode {mode!r}: give the audio rate for a, the video rate for v")
    return rate


class AVSRModel(nn.Module):
    def __init__(self, config: ModelConfig, llm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        H = llm.get_input_embeddings().embedding_dim
        self.audio = MatryoshkaCompressor(
            config.audio_dim, [a for a, _ in config.rates], config.compression, config.projector_hidden, H
        )
        self.video = MatryoshkaCompressor(
            config.video_dim, [v for _, v in config.rates], config.compression, config.projector_hidden, H
        )
        self.llm = llm.requires_grad_(False)
        self.mome = nn.ModuleList(MoME(H, config.mome) for _ in decoder_layers(llm))  # one per layer, every rate
        self._hooks = attach(llm, self.mome, config.mome.position)
        ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        self._tags = {m: (ids(o), ids(c)) for m, (o, c) in config.tags.items()}
        self._prompts = {m: ids(p) for m, p in config.prompts.items()}

    # ---- parameters ---------------------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds: projectors and MoME modules (never the frozen backbone)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t for n, t in self.state_dict().items() if n in names}

    def parameter_counts(self, rate: Rate | None = None) -> dict[str, int]:
        """Trainable and active parameter counts; active = what one token uses at one rate pair."""
        a, v = rate or self.config.rates[0]
        H = self.llm.get_input_embeddings().embedding_dim
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        mome_active = len(self.mome) * active_parameters(H, self.config.mome)
        projector_active = (count(self.audio.projectors[str(a)]) if a else 0) + (
            count(self.video.projectors[str(v)]) if v else 0
        )
        return {
            "llm": count(self.llm),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "mome": count(self.mome),
            "projectors": count(self.audio) + count(self.video),
            "mome_active": mome_active,
            "projectors_active": projector_active,
            "active": mome_active + projector_active,
        }

    # ---- sequence layout ----------------------------------------------------------------------------------------

    def _embed(self, ids: list[int]) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        return table(to_device(torch.tensor(ids, dtype=torch.long), table.weight.device))  # (len, H)

    def _modality_tokens(self, features: Features, rate: Rate, any_rate: bool = False):
        """Per modality present in the rate: ((B, N, H) tokens, (B,) lengths) or None."""
        a, v = rate
        out = {}
        if a is not None:
            if features.audio is None:
                raise ValueError("audio rate given but the batch has no audio features")
            out["audio"] = self.audio(features.audio, features.audio_lengths, a, any_rate)
        if v is not None:
            if features.video is None:
                raise ValueError("video rate given but the batch has no video features")
            out["video"] = self.video(features.video, features.video_lengths, v, any_rate)
        return out

    def layout(self, features: Features, rate: Rate, mode: str, targets=None, any_rate: bool = False):
        """One (embeds (L_i, H), labels (L_i,)) per clip: BOS, tags, modality tokens, prompt [, target]."""
        tokens = self._modality_tokens(features, check_rate(rate, mode), any_rate)
        # The text every row shares (BOS, tags, prompt) is embedded once, not once per row.
        bos, prompt = self._embed([self.tokenizer.bos_token_id]), self._embed(self._prompts[mode])
        tags = {m: (self._embed(o), self._embed(c)) for m, (o, c) in self._tags.items() if m in tokens}
        # One read per modality, not one per row; none at all from the recognizer, whose lengths stay on the host.
        lengths = {m: n.tolist() for m, (_, n) in tokens.items()}
        if targets is not None:  # every transcript embedded in one lookup
            said = self._embed([t for ids in targets for t in ids]).split([len(ids) for ids in targets])
        rows = []
        for i in range(features.batch_size):
            parts = [bos]
            for modality in ("audio", "video"):
                if modality in tokens:
                    x = tokens[modality][0]
                    opening, closing = tags[modality]
                    parts += [opening, x[i, : lengths[modality][i]].to(bos.dtype), closing]
            parts.append(prompt)
            prefix_len = sum(p.shape[0] for p in parts)
            labels = [IGNORE_INDEX] * prefix_len
            if targets is not None:
                parts.append(said[i])
                labels += targets[i]
            rows.append((torch.cat(parts), torch.tensor(labels, dtype=torch.long)))
        return rows

    @staticmethod
    def _pad(rows, side: str):
        """Rows -> (M, L, H) embeds, (M, L) labels, (M, L) attention mask, (M, L) position ids."""
        from torch.nn.utils.rnn import pad_sequence

        device = rows[0][0].device
        embeds = pad_sequence([e for e, _ in rows], batch_first=True, padding_side=side)  # (M, L, H)
        labels = pad_sequence([y for _, y in rows], batch_first=True, padding_value=IGNORE_INDEX,
                              padding_side=side)  # built on the host, where the rows' labels are
        labels = to_device(labels, device)  # moved once, without waiting for the device
        L = embeds.shape[1]
        n = to_device(torch.tensor([e.shape[0] for e, _ in rows]), device).unsqueeze(1)  # (M, 1) real lengths
        at = torch.arange(L, device=device)  # (L,)
        mask = (at >= L - n if side == "left" else at < n).long()  # (M, L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, labels, mask, positions

    def encode_targets(self, texts: list[str]) -> list[list[int]]:
        """Transcript token ids followed by EOS."""
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer(t, add_special_tokens=False).input_ids + [eos] for t in texts]

    # ---- training forward ---------------------------------------------------------------------------------------

    def forward(
        self, features: Features, texts: list[str], rates: list[Rate] | None = None, mode: str = "av"
    ) -> ModelOutput:
        """Mean LM loss over the rates + lb_coef * load-balancing loss, every rate in one batched LLM forward."""
        rates = [check_rate(tuple(r), mode) for r in (rates or self.config.rates_for(mode))]
        targets = self.encode_targets(texts)
        rows, row_rate = [], []
        for g, rate in enumerate(rates):
            new = self.layout(features, rate, mode, targets)
            rows += new
            row_rate += [g] * len(new)
        embeds, labels, mask, positions = self._pad(rows, side="right")  # (M, L, H), (M, L) x3
        M, L, _ = embeds.shape

        for m in self.mome:
            m.record_routing = True
        try:
            hidden = self.llm.get_decoder()(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state  # (M, L, H)
            routings = [m.last_routing for m in self.mome]
        finally:
            for m in self.mome:
                m.record_routing, m.last_routing = False, None

        # Next-token loss only where a label follows: the LM head never sees the other positions.
        next_labels = labels[:, 1:]  # (M, L-1)
        where = next_labels != IGNORE_INDEX
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][where]).float()  # (n_targets, V)
        token_loss = F.cross_entropy(logits, next_labels[where], reduction="none")  # (n_targets,)
        rate_of_row = torch.tensor(row_rate, device=hidden.device)
        token_rate = rate_of_row.unsqueeze(1).expand(M, L - 1)[where]  # (n_targets,)
        G = len(rates)
        per_rate = torch.zeros(G, device=hidden.device).index_add(0, token_rate, token_loss)
        per_rate = per_rate / torch.bincount(token_rate, minlength=G).clamp(min=1)
        lm_loss = per_rate.mean()

        groups = torch.where(mask.bool(), rate_of_row.unsqueeze(1), -1).reshape(-1)  # (M*L,) rate of each token
        lb_loss = torch.stack([load_balancing_loss(r, groups, G) for r in routings]).mean()
        loss = lm_loss + self.config.mome.lb_coef * lb_loss
        return ModelOutput(loss, lm_loss, lb_loss, {r: l.detach() for r, l in zip(rates, per_rate)})

    # ---- inference ----------------------------------------------------------------------------------------------

    def prefix(self, features: Features, rate: Rate, mode: str = "av", any_rate: bool = False) -> Prefix:
        """Left-padded prompts for decoding at one rate."""
        embeds, _, mask, positions = self._pad(self.layout(features, rate, mode, any_rate=any_rate), side="left")
        return Prefix(embeds, mask, positions)


__all__ = ["MODES", "DEFAULT_PROMPTS", "DEFAULT_RATES", "ModelConfig", "Features", "ModelOutput", "Prefix",
           "AVSRModel", "check_rate"]
