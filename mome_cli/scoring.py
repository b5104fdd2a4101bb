"""Scoring: text normalisation and word error rate (WER) with substitution, deletion and insertion counts.

Both sides are normalised the same way (see NORMALISATION) and aligned word by word with jiwer's Levenshtein
alignment. Corpus WER is the total word errors over the total reference words, (S + D + I) / N, never the mean of
per-utterance WERs: a short utterance must not weigh as much as a long one.

Free of torch and numpy, so an evaluation report can be scored and printed without loading a model.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import jiwer

# Shown verbatim in the evaluate report, so a reader knows what was compared. Kept in step with normalise().
NORMALISATION = (
    "Unicode NFKC; typographic apostrophes (’ ‘ ʼ) become '; lowercase; every character that is not a letter, "
    "digit, apostrophe or space becomes a space (so hyphens split words: \"well-known\" -> \"well known\", "
    "\"3.5\" -> \"3 5\"); apostrophes kept only inside a word (\"don't\", \"o'clock\") and removed at a word's start "
    "or end (quotes, \"'cause\" -> \"cause\", \"dogs'\" -> \"dogs\"); digits kept as written (\"5\" is not \"five\"); "
    "runs of whitespace collapsed to one space and the ends stripped"
)

NO_WER = "-"  # a WER that is no number, as it is printed (an "inf%" meant nothing to a reader)
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})  # ’ ‘ ʼ
NOT_WORD_CHAR = re.compile(r"[^\w\s']|_")  # \w is Unicode letters, digits and "_"; "_" counts as punctuation here
EDGE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # an apostrophe without a letter or digit on one side


def normalise(text: str) -> str:
    """The text as it is compared for WER; the rules are NORMALISATION."""
    text = unicodedata.normalize("NFKC", text).translate(APOSTROPHES).lower()
    text = NOT_WORD_CHAR.sub(" ", text)
    text = EDGE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class WordErrors:
    """Word error counts over one or more utterances; add two to score their utterances together."""

    substitutions: int = 0  # S: reference words replaced by another word
    deletions: int = 0  # D: reference words missing from the hypothesis
    insertions: int = 0  # I: hypothesis words with no reference word
    hits: int = 0  # H: reference words recognised correctly
    ref_words: int = 0  # N = H + S + D reference words after normalisation
    utterances: int = 0  # reference/hypothesis pairs scored

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.ref_words != self.hits + self.substitutions + self.deletions:
            raise ValueError(f"ref_words={self.ref_words} must equal hits + substitutions + deletions = "
                             f"{self.hits} + {self.substitutions} + {self.deletions}")

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def hyp_words(self) -> int:
        return self.hits + self.substitutions + self.insertions

    @property
    def wer(self) -> float:
        """(S + D + I) / N. With no reference words: 0.0 if nothing was inserted either, else math.inf."""
        if self.ref_words == 0:
            return 0.0 if self.insertions == 0 else math.inf
        return self.errors / self.ref_words

    def __add__(self, other: WordErrors) -> WordErrors:
        if not isinstance(other, WordErrors):
            return NotImplemented
        return WordErrors(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> dict:
        """The counts and the WER, ready for JSON: an infinite WER (insertions, no reference words) becomes None."""
        wer = self.wer
        return {**asdict(self), "wer": wer if math.isfinite(wer) else None}


def score(refs: Sequence[str], hyps: Sequence[str]) -> WordErrors:
    """Word errors of hyps against refs, pair by pair, after normalising both sides.

    An empty reference (or one that normalises to nothing) makes every hypothesis word an insertion; an empty
    hypothesis makes every reference word a deletion. Such pairs are counted here, the rest aligned by jiwer.
    """
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("score() takes lists of utterances; use score_one() for a single reference and hypothesis")
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses; they must pair up one to one")
    total = WordErrors(utterances=len(refs))
    aligned_refs, aligned_hyps = [], []
    for ref, hyp in zip(refs, hyps):
        ref, hyp = normalise(ref), normalise(hyp)
        if ref and hyp:
            aligned_refs.append(ref)
            aligned_hyps.append(hyp)
        else:  # words on one side at most: nothing to align
            n_ref, n_hyp = len(ref.split()), len(hyp.split())
            total += WordErrors(deletions=n_ref, insertions=n_hyp, ref_words=n_ref)
    if aligned_refs:
        out = jiwer.process_words(aligned_refs, aligned_hyps)
        total += WordErrors(substitutions=out.substitutions, deletions=out.deletions, insertions=out.insertions,
                            hits=out.hits, ref_words=out.hits + out.substitutions + out.deletions)
    return total


def wer_percent(wer: float, digits: int = 1, unit: str = "%") -> str:
    """A WER as a percentage to print ("12.3%"), or NO_WER when it is no number: infinite, words heard where the
    references have none (report.json and log.jsonl write null). One form for every table and log line."""
    return f"{100 * wer:.{digits}f}{unit}" if math.isfinite(wer) else NO_WER


def score_one(ref: str, hyp: str) -> WordErrors:
    """Word errors of one hypothesis against its reference (utterances=1)."""
    return score([ref], [hyp])
