"""Scoring: normalisation as a table, WER against counts worked out by hand, corpus WER as total errors over total
reference words, empty sides, and WordErrors that add up to the score of the joined corpus."""

import json
import math
import subprocess
import sys

import pytest

from mome_cli.scoring import NORMALISATION, WordErrors, normalise, score, score_one, wer_percent


@pytest.mark.parametrize("text, expected", [
    # casing and punctuation
    ("The cat sat on the mat.", "the cat sat on the mat"),
    ("Hello, WORLD!", "hello world"),
    ("What?! No... (really)", "what no really"),
    ('He said "stop"; she left.', "he said stop she left"),
    ("end.Start", "end start"),  # punctuation becomes a space, so words it glued stay apart
    ("snake_case & co", "snake case co"),
    # apostrophes: kept inside a word, removed at its start or end
    ("Don't", "don't"),
    ("It's five o'clock", "it's five o'clock"),
    ("'cause I said so", "cause i said so"),
    ("the dogs' bowls", "the dogs bowls"),
    ("'quoted'", "quoted"),
    ("rock 'n' roll", "rock n roll"),
    ("' lone ' apostrophes ''", "lone apostrophes"),
    # typographic quotes and apostrophes
    ("don\u2019t", "don't"),  # ’
    ("\u2018quoted\u2019", "quoted"),  # ‘ ’
    ("\u201cDouble\u201d quotes", "double quotes"),  # “ ”
    ("can\u02bct", "can't"),  # ʼ
    ("FULL\uff07WIDTH", "full'width"),  # fullwidth apostrophe, folded by NFKC
    # hyphens and dashes split words
    ("well-known", "well known"),
    ("twenty-one", "twenty one"),
    ("yes \u2014 no \u2013 maybe", "yes no maybe"),  # em and en dash
    ("-leading and trailing-", "leading and trailing"),
    # digits kept as written
    ("In 2024 we had 3 cats", "in 2024 we had 3 cats"),
    ("3.5 percent, 50%", "3 5 percent 50"),
    # whitespace
    ("  many    spaces\there\n", "many spaces here"),
    ("a\u00a0b", "a b"),  # no-break space
    ("", ""),
    ("   ", ""),
    ("?!...", ""),
    # letters beyond ASCII stay letters
    ("Café ÉCOLE", "café école"),
    ("ﬁne", "fine"),  # ligature, folded by NFKC
])
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_normalise_is_idempotent_and_documented():
    for text in ["The Cat's  hat-stand, 'quoted’!", "don't", "Ünïcödé—text"]:
        assert normalise(normalise(text)) == normalise(text)
    for word in ["lowercase", "apostrophe", "hyphen", "digit", "whitespace"]:
        assert word in NORMALISATION


def counts(e: WordErrors):
    return e.substitutions, e.deletions, e.insertions, e.hits, e.ref_words


# A small corpus; after normalisation each pair aligns one way only (counts as S, D, I, H, N):
#
#   1  ref  the cat sat on the mat        "The cat sat on the mat."
#      hyp  the cat sat on  *  mat        "the cat sat on mat"
#           =   =   =   =   D   =         -> S0 D1 I0 H5, N6
#
#   2  ref  hello  *   world              "Hello, world!"
#      hyp  hello big  word               "hello big word"
#           =      I   S                  -> S1 D0 I1 H1, N2 (or S then I: the counts are the same)
#
#   3  ref  i don't know                  "I don't know."
#      hyp  i don't know                  "I DON\u2019T know"
#           =   =    =                    -> S0 D0 I0 H3, N3
#
# Corpus: 3 errors over 11 reference words = 3/11 = 0.2727...
# Mean of per-utterance WERs: (1/6 + 2/2 + 0/3) / 3 = 0.3889..., not the corpus WER.
REFS = ["The cat sat on the mat.", "Hello, world!", "I don't know."]
HYPS = ["the cat sat on mat", "hello big word", "I DON\u2019T know"]
BY_HAND = [(0, 1, 0, 5, 6), (1, 0, 1, 1, 2), (0, 0, 0, 3, 3)]


@pytest.mark.parametrize("ref, hyp, expected", list(zip(REFS, HYPS, BY_HAND)))
def test_utterance_counts_match_the_hand_alignment(ref, hyp, expected):
    e = score_one(ref, hyp)
    assert counts(e) == expected and e.utterances == 1
    S, D, I, H, N = expected
    assert e.wer == pytest.approx((S + D + I) / N)


def test_corpus_wer_is_total_errors_over_total_reference_words():
    e = score(REFS, HYPS)
    assert counts(e) == (1, 1, 1, 9, 11) and e.utterances == 3
    assert e.errors == 3 and e.hyp_words == 5 + 3 + 3
    assert e.wer == pytest.approx(3 / 11)
    mean_of_utterances = sum(score_one(r, h).wer for r, h in zip(REFS, HYPS)) / len(REFS)
    assert mean_of_utterances == pytest.approx(7 / 18)
    assert e.wer != pytest.approx(mean_of_utterances)


def levenshtein(ref: list[str], hyp: list[str]) -> int:
    """Word edit distance by the textbook dynamic programme: an independent check on jiwer's alignment."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


@pytest.mark.parametrize("ref, hyp", [
    ("a b c d e f", "a x c e f g"),
    ("the quick brown fox", "quick brown the fox jumps"),
    ("one two three", "three two one"),
    ("so so so so", "so"),
    ("x", "y z w v"),
])
def test_errors_are_the_word_edit_distance(ref, hyp):
    e = score_one(ref, hyp)
    assert e.errors == levenshtein(ref.split(), hyp.split())
    assert e.ref_words == len(ref.split()) and e.hyp_words == len(hyp.split())


@pytest.mark.parametrize("ref, hyp, expected, wer", [
    ("", "", (0, 0, 0, 0, 0), 0.0),
    ("", "an extra word", (0, 0, 3, 0, 0), math.inf),  # every hypothesis word inserted
    ("three words here", "", (0, 3, 0, 0, 3), 1.0),  # every reference word deleted
    ("...", "Uh, hm!", (0, 0, 2, 0, 0), math.inf),  # punctuation-only normalises to empty
    ("Two words", " ?! ", (0, 2, 0, 0, 2), 1.0),
    ("   ", "\u2019", (0, 0, 0, 0, 0), 0.0),
])
def test_empty_reference_or_hypothesis(ref, hyp, expected, wer):
    e = score_one(ref, hyp)
    assert counts(e) == expected and e.utterances == 1
    assert e.wer == wer


def test_empty_pairs_mixed_into_a_corpus():
    e = score(["", "a b", "c d e", ""], ["x", "a b", "", ""])
    # 1 insertion, 2 hits, 3 deletions, nothing: 4 errors over 5 reference words
    assert counts(e) == (0, 3, 1, 2, 5) and e.utterances == 4
    assert e.wer == pytest.approx(4 / 5)
    assert score([], []) == WordErrors()


def test_adding_word_errors_equals_scoring_the_joined_corpus():
    refs = REFS + ["", "a b", "well-known fact"]
    hyps = HYPS + ["noise", "", "well known facts"]
    whole = score(refs, hyps)
    assert sum((score_one(r, h) for r, h in zip(refs, hyps)), WordErrors()) == whole
    assert score(refs[:2], hyps[:2]) + score(refs[2:], hyps[2:]) == whole
    assert whole.utterances == len(refs)


def test_to_dict_is_json_ready():
    d = score(REFS, HYPS).to_dict()
    assert d == dict(substitutions=1, deletions=1, insertions=1, hits=9, ref_words=11, utterances=3,
                     wer=pytest.approx(3 / 11))
    assert score_one("", "").to_dict()["wer"] == 0.0
    assert score_one("", "word").to_dict()["wer"] is None  # JSON has no infinity
    json.dumps(score_one("", "word").to_dict(), allow_nan=False)


def test_mismatched_or_wrongly_typed_inputs_are_refused():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="score_one"):
        score("a b", "a b")


@pytest.mark.parametrize("kwargs, message", [
    (dict(deletions=-1), "deletions must be >= 0, got -1"),
    (dict(hits=2, ref_words=3), "ref_words=3 must equal"),
])
def test_inconsistent_word_errors_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WordErrors(**kwargs)


def test_adding_something_else_is_a_type_error():
    with pytest.raises(TypeError):
        WordErrors() + 1


def test_import_loads_neither_torch_nor_numpy():
    code = "import sys, mome_cli.scoring; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("wer, digits, unit, shown", [
    (0.1234, 1, "%", "12.3%"), (0.0, 2, "", "0.00"), (1.5, 1, "%", "150.0%"),
    (math.inf, 1, "%", "-"), (math.nan, 2, "", "-"),  # words heard where the references have none: not "inf%"
])
def test_wer_percent_shows_a_wer_that_is_no_number_as_a_dash(wer, digits, unit, shown):
    assert wer_percent(wer, digits, unit) == shown
