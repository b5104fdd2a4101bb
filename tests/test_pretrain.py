"""The demo model's path on a few synthetic clips: backbones trained from scratch, MoME trained on them in all three
modes with `mome train`, and a bundle that carries its backbones and loads from anywhere."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mome_cli import pretrain, synth
from mome_cli.checkpoint import BACKBONES_NAME, backbones_config, load_weights, read_config
from mome_cli.preprocess import PreprocessOptions, Preprocessor
from mome_cli.recognizer import RecognizeOptions, load_recognizer

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng")

BIN = Path(sys.executable).parent
TEXT = ("The quick brown fox jumps over the lazy dog. A penny saved is a penny earned. Time flies like an arrow. "
        "Every cloud has a silver lining. Still waters run deep. Fortune favours the bold. "
        "Actions speak louder than words. Look before you leap.")


def pretrain_cli(*args, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m mome_cli.pretrain ARGS` with MOME_HOME=home, stdout and stderr as text; a run that outlasts timeout
    fails the test (subprocess.TimeoutExpired) instead of hanging it."""
    env = {**os.environ, "MOME_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mome_cli.pretrain", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six synthetic clips (4 of them train) and 2 sentences spoken for their timings only; MOME_HOME beside them."""
    root = tmp_path_factory.mktemp("pretrain")
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    assert synth.main([str(root / "corpus"), "--utterances", "6", "--seed", "3", "--text", str(root / "text.txt"),
                       "--speakers", "2", "--reading", "2"]) == 0
    return root / "corpus"


@pytest.fixture(scope="module")
def run(corpus):
    """Backbones after 2 steps on the corpus's clips, the later stages after 2 to 5, then 2 steps of MoME in modes
    av, a and v."""
    root = corpus.parent
    env = {**os.environ, "MOME_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}
    train = root / "corpus" / "train.jsonl"
    subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "backbones", "--train", str(train), "-o",
                    str(root / "backbones"), "--steps", "2", "--batch-frames", "150", "--threads", "1",
                    "--log-every", "1"], check=True, env=env, capture_output=True)
    common = ["--train", str(train), "--threads", "1", "--log-every", "1"]
    result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "reader", *common, "--init",
                             str(root / "backbones"), "-o", str(root / "reader"), "--steps", "4", "--batch", "2",
                             "--copy", "1", "--curriculum", "2",
                             "--valid", str(train), "--valid-limit", "2"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "valid av (16, 5): WER" in result.stderr
    assert "Writing model shards" not in result.stderr  # no progress bar of transformers' at each save
    result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "reader", *common, "--init",
                             str(root / "reader"), "-o", str(root / "reread"), "--steps", "2", "--batch", "3",
                             "--standins", "none", "--reading", str(root / "corpus" / "reading.jsonl")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "and 2 reading sentences" in result.stderr
    subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "backbones", *common, "--init", str(root / "reader"),
                    "-o", str(root / "matched"), "--steps", "2", "--batch-frames", "150", "--match", "--babble", "1",
                    "--encoders", str(root / "backbones")],
                   check=True, env=env, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "backbones", *common, "--init",
                             str(root / "matched"), "-o", str(root / "heard"), "--steps", "5", "--stop-after", "2", "--batch-frames", "150",
                             "--only", "audio", "--audio-layers", "4", "--match", "--babble", "1"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Backbones without their stand-ins (as the shipped bundle is): stand-ins fitted to the encoders, then a new LM
    # with a BPE vocabulary reads through them, and MoME trains on it
    shutil.copytree(root / "backbones", root / "bare")
    (root / "bare" / pretrain.STATE_NAME).unlink()
    result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "standins", *common, "--init",
                             str(root / "bare"), "-o", str(root / "fitted"), "--steps", "2", "--batch-frames", "150",
                             "--audio-units", "phonemes"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "reader", *common, "--init",
                             str(root / "fitted"), "-o", str(root / "bpe"), "--steps", "2", "--batch", "3",
                             "--standins", "none", "--vocab", "300",
                             "--reading", str(root / "corpus" / "reading.jsonl")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "a BPE vocabulary of 300 tokens learnt from 6 sentences" in result.stderr
    result = subprocess.run([str(BIN / "mome"), "train", "--model", str(root / "bpe"), "--mode", "a",
                             "--train", str(train), "--roi", "-o", str(root / "bpe-run"), "--steps", "1",
                             "--batch-frames", "150", "--experts", "4", "--top-k", "2", "--bottleneck", "4",
                             "--precision", "fp32"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([str(BIN / "mome"), "train", "--model", str(root / "backbones"), "--mode", "av,a,v",
                             "--train", str(train), "--valid", str(train), "--roi", "-o", str(root / "run"),
                             "--steps", "2", "--batch-frames", "150", "--experts", "4", "--top-k", "2",
                             "--bottleneck", "4", "--precision", "fp32", "--log-every", "1"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root


def test_backbones_are_written_in_their_own_formats_and_described(run):
    folder = run / "backbones"
    config = backbones_config(folder)
    assert config.llm == str(folder / "llm") and config.audio_encoder == str(folder / "audio_encoder")
    assert json.loads((folder / BACKBONES_NAME).read_text())["video_encoder"] == "video_encoder"  # relative
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert set(log[0]) >= {"ctc_a", "ctc_v", "lm_a"} and "lm_v" in log[1]  # one mode a step, in turn
    from mome_cli.avhubert import load_avhubert

    video = load_avhubert(folder / "video_encoder")
    saved = load_file(folder / "video_encoder" / "model.safetensors")
    assert all(torch.equal(t, saved[k]) for k, t in video.state_dict().items())
    assert not any(p.requires_grad for p in video.parameters())


def test_a_tokenizer_loaded_from_disk_is_saved_without_how_it_was_loaded(run, tmp_path):
    # "heard" started from "matched" (--init): its tokenizer was read from a local folder, which transformers 5
    # writes back as is_local / local_files_only; a release must not carry them, and one that does loses them in
    # the bundle
    for stage in ("matched", "heard", "backbones"):
        saved = json.loads((run / stage / "llm" / "tokenizer_config.json").read_text())
        assert saved["tokenizer_class"] and not set(saved) & {"is_local", "local_files_only"}, stage
    old = tmp_path / "old-backbones"  # as saved before the keys were dropped
    shutil.copytree(run / "backbones", old)
    path = old / "llm" / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "is_local": True, "local_files_only": False}))
    trained = tmp_path / "run"  # trained on them elsewhere (their paths are not here)
    shutil.copytree(run / "run", trained)
    config = json.loads((trained / "config.json").read_text())
    for name in ("llm", "audio_encoder", "video_encoder"):
        config["model"][name] = f"/tmp/mome-device-elsewhere/old-backbones/{name}"
    (trained / "config.json").write_text(json.dumps(config))
    bundle = pretrain.bundle(trained, old, tmp_path / "bundle")
    assert json.loads((bundle / "llm" / "tokenizer_config.json").read_text()) == saved
    load_recognizer(str(bundle), device="cpu", home=run / "home")


def test_one_run_trains_every_mode_at_its_rates(run):
    records = [json.loads(line) for line in (run / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert set(train[0]["rate_losses"]) == {"av 4,2", "av 4,5", "av 16,2", "av 16,5", "a 4", "a 16", "v 2", "v 5"}
    evals = [r for r in records if r["kind"] == "eval"]
    assert set(evals[-1]["wer"]) == set(train[0]["rate_losses"])
    assert read_config(run / "run").modes == ["av", "a", "v"]


def test_a_bundle_carries_its_backbones_and_loads_from_anywhere(run, tmp_path):
    bundle = pretrain.bundle(run / "run", run / "backbones", tmp_path / "bundle")
    moved = tmp_path / "elsewhere" / "demo"
    shutil.copytree(bundle, moved)
    shutil.rmtree(bundle)
    config = json.loads((moved / "config.json").read_text())["model"]
    assert (config["llm"], config["audio_encoder"], config["video_encoder"]) == ("llm", "audio_encoder",
                                                                                "video_encoder")
    recognizer = load_recognizer(str(moved), device="cpu", home=run / "home")
    assert recognizer.audio_encoder.max_seconds == 8 and recognizer.max_segment_seconds == 8
    trained = load_file(run / "run" / "model.safetensors")
    assert all(torch.equal(t, trained[k]) for k, t in recognizer.model.trainable_state_dict().items())
    load_weights(recognizer.model, moved)  # its own config fits the model it built
    clip = Preprocessor(PreprocessOptions(roi=True))(next((run / "corpus" / "train").glob("*.mp4")))
    for mode in ("av", "a", "v"):
        transcript = recognizer.transcribe(clip, RecognizeOptions(mode=mode, max_new_tokens=8))
        assert transcript.mode == mode and isinstance(transcript.text, str)


def test_a_bundle_of_a_run_on_other_backbones_is_refused(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run / "backbones", other)
    with pytest.raises(pretrain.PretrainError, match="was trained on"):
        pretrain.bundle(run / "run", other, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_run_trained_on_a_copy_of_the_backbones_elsewhere_is_bundled_with_these(run, tmp_path, capsys):
    trained = tmp_path / "from-the-gpu"  # as it comes back from the lent machine: its backbone paths are not here
    shutil.copytree(run / "run", trained)
    config = json.loads((trained / "config.json").read_text())
    for name in ("llm", "audio_encoder", "video_encoder"):
        config["model"][name] = f"/tmp/mome-device-elsewhere/backbones/{name}"
    (trained / "config.json").write_text(json.dumps(config))
    bundle = pretrain.bundle(trained, run / "backbones", tmp_path / "bundle")
    assert "not on this machine" in capsys.readouterr().err
    assert json.loads((bundle / "config.json").read_text())["model"]["llm"] == "llm"
    assert load_file(bundle / "model.safetensors").keys() == load_file(run / "run" / "model.safetensors").keys()


def test_a_baseline_gets_the_projectors_of_its_own_rates_alone(run, tmp_path):
    every = load_file(run / "backbones" / "projectors.safetensors")
    assert {k.split(".")[2] for k in every if k.startswith("audio.")} == {"4", "16"}  # all the pairs' rates
    mine = load_file(pretrain.rate_projectors(run / "backbones" / "projectors.safetensors", [(16, 5)],
                                              tmp_path / "p.safetensors"))
    assert sorted({k.rsplit(".", 2)[0] for k in mine}) == ["audio.projectors.16", "video.projectors.5"]
    assert all(torch.equal(t, every[k]) for k, t in mine.items())
    with pytest.raises(pretrain.PretrainError, match="no audio.projectors.8"):
        pretrain.rate_projectors(run / "backbones" / "projectors.safetensors", [(8, 5)], tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()


def test_init_continues_from_the_whole_state_or_from_the_backbones_alone(run, tmp_path):
    folder = run / "backbones"
    saved = load_file(folder / pretrain.STATE_NAME)
    tied = {"avsr.llm.lm_head.weight", "avsr.llm.model.embed_tokens.weight"}  # one tensor, stored once
    for name in tied - set(saved):
        saved[name] = saved[(tied - {name}).pop()]
    model = pretrain.Backbones(seed=5)  # other random weights, then the saved ones
    model.load(folder)
    state = model.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], t) for k, t in saved.items())
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / pretrain.STATE_NAME).unlink()
    model = pretrain.Backbones(seed=5)
    model.load(bare)
    state = model.state_dict()
    backbone_keys = [k for k in saved if k.startswith(("audio_encoder.", "video_encoder.", "avsr.llm."))]
    assert backbone_keys and all(torch.equal(state[k], saved[k]) for k in backbone_keys)
    assert not torch.equal(state["audio_ctc.weight"], saved["audio_ctc.weight"])  # heads start again


def _state(folder: Path, audio_layers: int | None = None) -> dict[str, torch.Tensor]:
    model = pretrain.Backbones(seed=7, audio_layers=audio_layers)
    model.load(folder)
    return model.state_dict()


def test_reader_trains_the_lm_on_stand_ins_and_matching_trains_the_encoders_towards_them(run):
    before, read, matched = _state(run / "backbones"), _state(run / "reader"), _state(run / "matched")
    changed = lambda a, b, prefix: [k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])]  # noqa
    assert changed(before, read, "avsr.llm.") and changed(before, read, "audio_standin.")
    assert not changed(before, read, "audio_encoder.") and not changed(before, read, "video_encoder.")
    assert changed(read, matched, "audio_encoder.") and changed(read, matched, "video_encoder.")
    assert changed(read, matched, "avsr.audio.")  # the projectors follow
    for frozen in ("avsr.llm.", "audio_standin.", "video_standin."):
        assert not changed(read, matched, frozen), frozen
    log = [json.loads(line) for line in (run / "reader" / "log.jsonl").read_text().splitlines()]
    assert set(log[0]) - {"step", "epoch", "seconds"} == {"copy"}  # the LM alone first
    assert {"lm_a", "embed_a"} <= set(log[1]) and "lm_v" in log[2]
    log = [json.loads(line) for line in (run / "matched" / "log.jsonl").read_text().splitlines()]
    assert {"match_a", "match_v", "ctc_a", "ctc_v"} <= set(log[0])
    assert [set(r) & {"lm_a", "lm_v", "lm_av"} for r in log] == [{"lm_a"}, {"lm_v"}]


def test_reading_more_sentences_trains_the_lm_and_keeps_the_stand_ins_the_encoders_match(run):
    read, reread = _state(run / "reader"), _state(run / "reread")
    changed = [k for k in read if not torch.equal(read[k], reread[k])]
    assert any(k.startswith("avsr.llm.") for k in changed)
    assert not [k for k in changed if k.startswith(("audio_standin.", "video_standin.", "audio_encoder.",
                                                    "video_encoder."))]
    log = [json.loads(line) for line in (run / "reread" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 0]  # 4 train utterances + 2 read sentences: two batches of 3 an epoch


def test_stand_ins_are_fitted_to_frozen_encoders_that_came_without_them(run):
    bare = pretrain.Backbones(seed=0, audio_units="phonemes")  # where the fitting run (seed 0) started
    bare.load(run / "bare")
    fitted = load_file(run / "fitted" / pretrain.STATE_NAME)
    assert pretrain.saved_units(run / "fitted") == "phonemes"
    before = bare.state_dict()
    trained = [k for k in fitted if not k.startswith("avsr.") and not torch.equal(fitted[k], before[k])]
    assert trained and {k.split(".")[0] for k in trained} == {"audio_standin", "video_standin"}
    assert all(torch.equal(fitted[k], before[k]) for k in fitted if k.startswith("avsr.llm."))  # the LM as it was
    log = [json.loads(line) for line in (run / "fitted" / "log.jsonl").read_text().splitlines()]
    assert [set(r) - {"step", "epoch", "seconds"} for r in log] == [{"fit_a", "fit_v"}] * 2


def test_a_new_lm_with_a_bpe_vocabulary_reads_through_the_fitted_stand_ins(run):
    from mome_cli.llm import load_llm

    llm, tokenizer = load_llm(run / "bpe" / "llm")
    assert len(tokenizer) == 300 == llm.config.vocab_size
    assert tokenizer.convert_ids_to_tokens(tokenizer("a penny", add_special_tokens=False).input_ids) == ["Ġa",
                                                                                                      "Ġpenny"]
    text = "Zebras' quixotic jive, 42 times!"  # no merge learnt for most of it: bytes
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids).strip() == text
    fitted, bpe = load_file(run / "fitted" / pretrain.STATE_NAME), load_file(run / "bpe" / pretrain.STATE_NAME)
    kept = [k for k in fitted if k.startswith(("audio_standin.", "video_standin.", "audio_encoder.", "video_encoder."))]
    assert kept and all(torch.equal(bpe[k], fitted[k]) for k in kept)
    table = llm.get_input_embeddings().weight  # (300, H): the new LM's own
    assert table.shape[0] == 300 and not any(t.shape[0] == 300 for k, t in fitted.items() if k.startswith("avsr."))
    # a later stage keeps the new LM and its tokenizer (--init), and `mome train` stood on it
    model = pretrain.Backbones(seed=7, audio_units="phonemes", tokenizer=tokenizer)
    model.load(run / "bpe")
    assert torch.equal(model.avsr.llm.get_input_embeddings().weight, table)
    assert read_config(run / "bpe-run").llm == str(run / "bpe" / "llm")


def test_the_same_sentences_give_the_same_bpe_vocabulary():
    from mome_cli.llm import bpe_tokenizer

    texts = TEXT.lower().replace(".", "").split("  ") * 3
    first, second = bpe_tokenizer(texts, 290), bpe_tokenizer(texts, 290)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert len(first) == 290 and (first.bos_token_id, first.eos_token_id, first.pad_token_id) == (0, 1, 2)
    ids = first(" penny", add_special_tokens=False).input_ids
    assert ids == first("penny", add_special_tokens=False).input_ids and len(ids) == 1  # one spelling a word


def test_word_spans_follow_espeaks_word_events_and_fill_the_words_it_skips():
    alignment = {"speech": [0.2, 2.0], "words": [[0.2, "it"], [0.6, "got"], [1.4, "axe"]]}
    spans = pretrain.word_spans(alignment, "It's got an axe")
    assert [w for _, _, w in spans] == ["it's", "got", "an", "axe"]
    assert [s for s, _, _ in spans] == pytest.approx([0.2, 0.6, 1.0, 1.4])  # "an" halfway between its neighbours
    assert [e for _, e, _ in spans] == pytest.approx([0.6, 1.0, 1.4, 2.0])


def test_frame_targets_are_the_transcripts_letters_and_the_phonemes_visemes(run):
    corpus = run / "corpus"
    alignments = pretrain.load_alignments(corpus / "alignments.jsonl")
    for row in map(json.loads, (corpus / "train.jsonl").read_text().splitlines()):
        al = alignments[row["id"]]
        n = round(al["duration"] * 50)
        chars = pretrain.char_frames(al, row["text"], n, 50.0).tolist()
        begin, end = al["speech"]
        assert set(chars[: int(begin * 50) - 1]) <= {0} and set(chars[int(end * 50) + 1:]) <= {0}  # silence
        spoken = [c for i, c in enumerate(chars) if c and (i == 0 or c != chars[i - 1])]
        letters = [pretrain.ALPHABET.index(c) + 1 for c in row["text"].lower() if c in pretrain.ALPHABET]
        assert spoken[0] == letters[0]
        it = iter(letters)
        assert all(c in it for c in spoken)  # in the transcript's order
        assert len(spoken) >= 0.6 * len(letters)
        visemes = pretrain.viseme_frames(al, al["frames"], 25.0)
        assert len(visemes) == al["frames"]
        phonemes = [(t, p) for t, p in al["phonemes"] if p != ";"]
        closures = [(t, nxt) for (t, p), (nxt, _) in zip(phonemes, phonemes[1:]) if p in ("p", "b", "m")]
        for start, stop in closures:
            if stop - start >= 0.08:  # long enough for a frame to sit inside
                assert pretrain.VISEME_NAMES[int(visemes[round((start + stop) / 2 * 25)])] == "closed"
        assert set(visemes[: int(begin * 25) - 1].tolist()) <= {0}  # rest before the first sound


def test_one_encoder_alone_trains_on_its_own_losses_and_grows_deeper(run):
    matched, heard = _state(run / "matched", audio_layers=4), _state(run / "heard", audio_layers=4)
    changed = {k.split(".")[0] for k in heard if not torch.equal(heard[k], matched[k])}
    assert changed == {"audio_encoder", "audio_ctc"}
    config = json.loads((run / "heard" / "audio_encoder" / "config.json").read_text())
    assert config["encoder_layers"] == 4
    log = [json.loads(line) for line in (run / "heard" / "log.jsonl").read_text().splitlines()]
    assert set(log[0]) - {"step", "epoch", "seconds"} == {"ctc_a", "match_a"}
    assert [r["step"] for r in log] == [1, 2]  # --stop-after 2 of a 5-step schedule


def test_each_folder_records_its_stage_and_whether_it_ran_to_its_last_step(run):
    record = json.loads((run / "heard" / pretrain.RUN_NAME).read_text())
    assert record["args"]["command"] == "backbones" and record["args"]["only"] == "audio"
    assert (record["args"]["steps"], record["args"]["stop_after"], record["step"]) == (5, 2, 2)
    assert record["finished"] is True  # its --stop-after step was its last
    assert '"finished": true' in (run / "heard" / pretrain.RUN_NAME).read_text()  # what scripts/make_demo.sh reads
    assert json.loads((run / "reader" / pretrain.RUN_NAME).read_text())["args"]["copy"] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_stage_trains_on_the_gpu(run, tmp_path):
    env = {**os.environ, "MOME_HOME": str(run / "home")}
    common = ["--train", str(run / "corpus" / "train.jsonl"), "--steps", "2", "--log-every", "1", "--device", "cuda"]
    stages = [["reader", "--init", str(run / "reader"), "--batch", "3", "--copy", "1", "--valid",
               str(run / "corpus" / "train.jsonl"), "--valid-limit", "2"],
              ["backbones", "--init", str(run / "reader"), "--match", "--babble", "1", "--batch-frames", "150"],
              ["backbones", "--init", str(run / "reader"), "--only", "video", "--match", "--batch-frames", "150"],
              ["standins", "--init", str(run / "bare"), "--batch-frames", "150"]]
    for i, stage in enumerate(stages):
        result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", stage[0], *common, *stage[1:], "-o",
                                 str(tmp_path / str(i))], env=env, capture_output=True, text=True)
        assert result.returncode == 0 and "training on cuda" in result.stderr, result.stderr
        assert json.loads((tmp_path / str(i) / pretrain.RUN_NAME).read_text())["finished"] is True


def test_a_stage_cut_short_leaves_its_last_save_marked_unfinished(tmp_path):
    class Model(torch.nn.Module):  # one weight; its saves are recorded instead of written
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.saves = []

        def save(self, out, run):
            self.saves.append(run)

    def loss_of(batch, step):
        if step == 3:
            raise KeyboardInterrupt  # the run is stopped during its fourth step
        return {"l2": (model.w ** 2).sum()}

    model = Model()
    args = argparse.Namespace(lr=0.1, steps=6, stop_after=None, log_every=1, save_every=2, command="reader")
    with pytest.raises(KeyboardInterrupt):
        pretrain._train(model, list(model.parameters()), args, tmp_path, lambda epoch: range(4), loss_of,
                        lambda m: None)
    assert [(r["step"], r["finished"]) for r in model.saves] == [(2, False)]
    model = Model()
    args.stop_after = 4
    pretrain._train(model, list(model.parameters()), args, tmp_path, lambda epoch: range(4), lambda b, s: {
        "l2": (model.w ** 2).sum()}, lambda m: None)
    assert [(r["step"], r["finished"]) for r in model.saves] == [(2, False), (4, True)]


def test_a_deeper_audio_encoder_starts_as_the_shallower_one_it_grows_from(run):
    import numpy as np

    shallow = pretrain.Backbones(seed=7)
    shallow.load(run / "matched")
    deep = pretrain.Backbones(seed=8, audio_layers=5)
    deep.load(run / "matched")
    assert len(deep.audio_encoder.encoder.layers) == len(shallow.audio_encoder.encoder.layers) + 2
    assert deep.audio_encoder.encoder.layers[-1].fc2.weight.abs().sum() == 0
    assert deep.audio_encoder.encoder.layers[-1].fc1.weight.abs().sum() > 0  # only the outputs start at zero
    waveform = [np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1]
    with torch.no_grad():
        (a, _), (b, _) = shallow.audio_encoder(waveform), deep.audio_encoder(waveform)
    assert torch.allclose(a, b, atol=1e-6)
    bare = pretrain.Backbones(seed=8, audio_layers=5)
    bare.load_encoders(run / "matched")  # from the saved encoder folder too
    with torch.no_grad():
        assert torch.allclose(bare.audio_encoder(waveform)[0], a, atol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):  # a deeper one does not fit a shallower encoder
        pretrain.Backbones(seed=8, audio_layers=2).load(run / "matched")


def test_the_video_encoder_alone_gets_its_ctc_and_stand_in_losses(run):
    rows = [json.loads(line) for line in (run / "corpus" / "train.jsonl").read_text().splitlines()][:2]
    alignments = pretrain.load_alignments(run / "corpus" / "alignments.jsonl")
    preprocess = Preprocessor(PreprocessOptions(roi=True))
    rois = [preprocess(run / "corpus" / r["video"]).rois for r in rows]
    model = pretrain.Backbones(seed=7)
    losses = model.encoder_alone("video", rois, [r["text"] for r in rows], [alignments[r["id"]] for r in rows])
    assert set(losses) == {"ctc_v", "match_v"} and all(torch.isfinite(v) for v in losses.values())
    losses["match_v"].backward()
    assert model.video_encoder.post_extract_proj.weight.grad is not None and model.avsr.llm.model.embed_tokens.weight.grad is None


def test_phoneme_stand_ins_follow_the_sounding_phonemes_and_swap_in_on_load(run):
    assert set(pretrain.PHONEMES) == {p for p, v in synth.PHONEME_VISEME.items() if v != "rest"}
    alignments = pretrain.load_alignments(run / "corpus" / "alignments.jsonl")
    al = next(iter(alignments.values()))
    n = round(al["duration"] * 50)
    ids = pretrain.phoneme_frames(al, n, 50.0)
    sounds = [(t, p) for t, p in al["phonemes"] if p != ";"]
    for (start, name), (end, _) in zip(sounds, sounds[1:]):
        middle = int((start + end) / 2 * 50)
        expected = pretrain.PHONEMES.index(name) + 1 if name in pretrain.PHONEMES else 0
        if end - start > 0.04 and (name in pretrain.PHONEMES or name.startswith("_")):
            assert int(ids[middle]) == expected, (name, start, end)
    assert int(ids[0]) == 0 and int(ids[-1]) == 0  # silence around the speech
    letters = _state(run / "reader")
    model = pretrain.Backbones(seed=9, audio_units="phonemes")
    model.load(run / "reader")  # a letters state: everything but the audio stand-in, which starts afresh
    state = model.state_dict()
    assert model.audio_standin.embed.weight.shape[0] == len(pretrain.PHONEMES) + 1
    assert all(torch.equal(state[k], t) for k, t in letters.items() if not k.startswith("audio_standin."))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_a_clip_whose_transcript_cannot_be_read_is_left_out_of_the_clips_read_with_a_warning(tmp_path):
    """It was read with an empty text to learn from."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a", "b"):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=96x96:rate=25:duration=0.4", "-f", "lavfi", "-i", "sine=duration=0.4", "-c:v",
                        "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(folder / f"{name}.mp4")],
                       check=True)
    (folder / "a.txt").write_text("a tone")
    (folder / "b.txt").write_bytes(b"caf\xe9")  # Latin-1
    said = []
    utterances, clips = pretrain.load_clips(str(folder), tmp_path / "home", said.append, workers=1)
    assert [(u.id, u.text) for u in utterances] == [("a", "a tone")] and len(clips) == 1
    assert said == [f"warning: b skipped: {folder / 'b.txt'}:1: not UTF-8 text (byte 4 of the line is 0xe9); save it "
                    "as UTF-8"]


def test_a_reader_batch_larger_than_the_corpus_reads_it_all_at_every_step(corpus, tmp_path):
    """An epoch of whole --batch batches held none, and the run went round for ever, silently."""
    result = pretrain_cli("reader", "--train", corpus / "train.jsonl", "-o", tmp_path / "r", "--steps", "2",
                          "--batch", "100", "--threads", "1", "--log-every", "1", home=corpus.parent / "home",
                          timeout=120)
    assert result.returncode == 0, result.stderr
    assert "note: 4 rows, fewer than --batch 100: each step reads them all" in result.stderr
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in log] == [(1, 0), (2, 1)]  # one batch an epoch
    assert json.loads((tmp_path / "r" / pretrain.RUN_NAME).read_text())["finished"] is True


@pytest.mark.parametrize("stage", ["backbones", "standins"])
def test_a_corpus_with_no_clip_to_train_on_is_an_error_not_an_endless_loop(stage, tmp_path):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=0.5",
                    str(tmp_path / "x.wav")], check=True)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"id": "x", "audio": "x.wav", "text": "a tone"}) + "\n")
    alignment = {"id": "x", "duration": 0.5, "frames": 13, "speech": [0.0, 0.5], "phonemes": [], "words": []}
    (tmp_path / "alignments.jsonl").write_text(json.dumps(alignment) + "\n")  # standins reads it first
    result = pretrain_cli(stage, "--train", manifest, "-o", tmp_path / "out", "--steps", "2", "--threads", "1",
                          home=tmp_path / "home", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "warning: x skipped: no video stream" in result.stderr
    assert result.stderr.splitlines()[-1] == (f"error: {manifest}: no clip to train on (each one skipped, as the "
                                              "warnings above say)")


def test_a_clip_that_cannot_be_decoded_is_left_out_with_a_warning(tmp_path):
    """Its MediaError, sent back from the worker process, broke the pool: a traceback, and no clip read at all."""
    folder = tmp_path / "clips"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=96x96:rate=25:duration=0.4", "-f", "lavfi", "-i", "sine=duration=0.4", "-c:v",
                    "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(folder / "a.mp4")], check=True)
    (folder / "b.mp4").write_bytes(b"not a video")
    for name in ("a", "b"):
        (folder / f"{name}.txt").write_text("a tone")
    said = []
    utterances, clips = pretrain.load_clips(str(folder), tmp_path / "home", said.append, workers=1)
    assert [u.id for u in utterances] == ["a"] and len(clips) == 1
    assert len(said) == 1 and said[0].startswith(f"warning: b skipped: {folder / 'b.mp4'}: ")


def test_a_stage_never_writes_over_a_folder_another_run_or_the_user_wrote(corpus, tmp_path):
    """Each save replaced the whole -o folder: a corpus given as -o was trained on, then deleted with the notes beside
    it; -o . trained, then failed at its first save."""
    home, train = corpus.parent / "home", corpus / "train.jsonl"
    mine = tmp_path / "mine"
    shutil.copytree(corpus, mine)
    (mine / "NOTES.txt").write_text("notes")
    result = pretrain_cli("backbones", "--train", train, "-o", mine, "--steps", "1", "--batch-frames", "150",
                          home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"python -m mome_cli.pretrain backbones: error: -o {mine} is not empty (NOTES.txt, alignments.jsonl, "
        "corpus.json, ...): a `backbones` run is written to a new or empty folder, or over one where such a run was "
        "cut short")
    assert (mine / "NOTES.txt").read_text() == "notes" and (mine / "train.jsonl").is_file()
    here = tmp_path / "here"
    here.mkdir()
    result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "reader", "--train", str(train), "-o", ".",
                             "--steps", "1"], cwd=here, env={**os.environ, "MOME_HOME": str(home)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith(
        "error: -o . is the folder this runs in, which every save would replace: give a folder of its own")
    for name, record in (("finished", {"command": "reader", "done": True}), ("other", {"command": "backbones"})):
        folder = tmp_path / name  # as a stage leaves it: its files, and run.json saying what made them
        folder.mkdir()
        (folder / pretrain.STATE_NAME).write_text("weights")
        (folder / pretrain.RUN_NAME).write_text(json.dumps({"args": {"command": record["command"]}, "step": 3,
                                                            "finished": record.get("done", False)}))
    expected = {"finished": "holds a finished `reader` run (step 3), which a new one would replace: remove it, or "
                            "give another -o",
                "other": "holds a `backbones` run, not a `reader` one: give another -o"}
    for name, problem in expected.items():
        result = pretrain_cli("reader", "--train", train, "-o", tmp_path / name, "--steps", "1", home=home)
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].endswith(f"error: -o {tmp_path / name} {problem}")
        assert (tmp_path / name / pretrain.STATE_NAME).read_text() == "weights"


def test_a_stage_cut_short_is_run_again_in_its_own_folder(corpus, tmp_path):
    home, train = corpus.parent / "home", corpus / "train.jsonl"
    out = tmp_path / "r"
    out.mkdir()
    (out / "log.jsonl").write_text(json.dumps({"step": 1, "epoch": 0, "seconds": 0.5, "copy": 5.0}) + "\n")
    args = ["reader", "--train", train, "-o", out, "--steps", "1", "--batch", "2", "--threads", "1"]
    result = pretrain_cli(*args, home=home)  # stopped before its first save: the log alone
    assert result.returncode == 0, result.stderr
    record = json.loads((out / pretrain.RUN_NAME).read_text())
    (out / pretrain.RUN_NAME).write_text(json.dumps({**record, "finished": False}))  # as if stopped after a save
    result = pretrain_cli(*args, home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / pretrain.RUN_NAME).read_text())["finished"] is True
    assert sorted(p.name for p in out.iterdir()) == sorted(pretrain.SAVED)
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # nothing left beside it


def test_bundle_and_projectors_write_over_their_own_kind_alone(run, tmp_path):
    home = run / "home"
    bundle = ["bundle", run / "run", "--backbones", run / "backbones", "-o", tmp_path / "bundle"]
    for _ in range(2):  # a new folder, then over the bundle written there
        result = pretrain_cli(*bundle, home=home)
        assert result.returncode == 0, result.stderr
    projectors = ["projectors", run / "backbones" / pretrain.PROJECTORS_NAME, "--rates", "4,2"]
    for _ in range(2):
        result = pretrain_cli(*projectors, "-o", tmp_path / "p.safetensors", home=home)
        assert result.returncode == 0, result.stderr
    (tmp_path / "bundle" / "NOTES.txt").write_text("notes")
    (tmp_path / "notes.txt").write_text("notes")
    for args, problem in (
            (bundle, f"-o {tmp_path / 'bundle'} is not empty (NOTES.txt, audio_encoder, config.json, ...): a bundle "
                     "is written to a new or empty folder, or over a bundle"),
            ([*projectors, "-o", tmp_path / "notes.txt"], f"-o {tmp_path / 'notes.txt'} is not a projectors file, "
                                                         "and would be written over: give another -o")):
        result = pretrain_cli(*args, home=home)
        assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith(f"error: {problem}")
    assert (tmp_path / "bundle" / "NOTES.txt").is_file() and (tmp_path / "notes.txt").read_text() == "notes"


def test_a_bundle_takes_its_backbones_named_through_dot_dot_or_a_link(run, tmp_path):
    """They were refused as other backbones than those the run was trained on."""
    (tmp_path / "link").symlink_to(run / "backbones")
    for i, backbones in enumerate(["../corpus/../backbones", tmp_path / "link"]):
        result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "bundle", str(run / "run"), "--backbones",
                                 str(backbones), "-o", str(tmp_path / f"bundle{i}")], cwd=run / "corpus",
                                env={**os.environ, "MOME_HOME": str(run / "home")}, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0 and result.stderr == "", result.stderr  # no note of backbones elsewhere either
        assert json.loads((tmp_path / f"bundle{i}" / "config.json").read_text())["model"]["llm"] == "llm"


MISSING_MANIFEST = "no such manifest or folder (give a .jsonl or auto_avsr .csv manifest, or a folder of media files "


@pytest.mark.parametrize("args, code, said", [
    (["bundle", "nope", "--backbones", "nope", "-o", "o"], 2, "python -m mome_cli.pretrain bundle: error: checkpoint "
                                                              "nope: no such folder"),
    (["bundle", "{corpus}", "--backbones", "{corpus}", "-o", "o"], 1, "error: {corpus}: not a mome checkpoint (no "
                                                                      "config.json)"),
    (["projectors", "nope.safetensors", "--rates", "4,2", "-o", "o"], 2,
     "python -m mome_cli.pretrain projectors: error: source nope.safetensors: no such file"),
    (["projectors", "{corpus}/train.jsonl", "--rates", "4,2", "-o", "o"], 1, "error: {corpus}/train.jsonl: not a "
                                                                             "safetensors file ("),
    (["reader", "--train", "nope.jsonl", "-o", "o"], 4, f"error: nope.jsonl: {MISSING_MANIFEST}"),
    (["reader", "--train", "{corpus}/train.jsonl", "--valid", "nope.jsonl", "-o", "o"], 4,
     f"error: nope.jsonl: {MISSING_MANIFEST}"),
    (["reader", "--train", "{corpus}/train.jsonl", "--alignments", "nope.jsonl", "-o", "o"], 4,
     "error: nope.jsonl: no such file (mome_cli.synth writes alignments.jsonl beside its manifests; --alignments "
     "names one kept elsewhere)"),
    (["reader", "--train", "{corpus}/train.jsonl", "--alignments", "{corpus}/train.jsonl", "-o", "o"], 1,
     "error: {corpus}/train.jsonl: not an alignments file as mome_cli.synth writes them (row "),
    (["reader", "--train", "{corpus}/train.jsonl", "--init", "nope", "-o", "o"], 2,
     "python -m mome_cli.pretrain reader: error: --init nope: no such folder"),
    (["standins", "--train", "{corpus}/train.jsonl", "--init", "{corpus}", "-o", "o"], 1,
     "error: --init {corpus}: not a folder of backbones (no llm, audio_encoder, video_encoder; an earlier stage's -o, "
     "or a bundle)"),
    (["backbones", "--train", "nope.jsonl", "-o", "o"], 4, f"error: nope.jsonl: {MISSING_MANIFEST}"),
])
def test_what_cannot_be_used_is_said_in_one_line_with_the_exit_code_for_it(args, code, said, corpus, tmp_path):
    """Each was a traceback (a missing manifest's naming alignments.jsonl, the wrong file), exit 1 whatever it was."""
    args = [a.format(corpus=corpus) for a in args]
    result = subprocess.run([sys.executable, "-m", "mome_cli.pretrain", *args, "--threads", "1"] if "--train" in args
                            else [sys.executable, "-m", "mome_cli.pretrain", *args], cwd=tmp_path,
                            env={**os.environ, "MOME_HOME": str(corpus.parent / "home")}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(said.format(corpus=corpus))
    assert not (tmp_path / "o").exists()


def test_backbones_whose_weights_cannot_be_loaded_are_said_in_one_line(run, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(run / "backbones", damaged)
    (damaged / pretrain.STATE_NAME).unlink()  # the backbones' own files are read
    (damaged / "video_encoder" / "model.safetensors").write_bytes(b"cut short")
    result = pretrain_cli("standins", "--train", run / "corpus" / "train.jsonl", "--init", damaged, "-o",
                          tmp_path / "o", "--steps", "1", "--threads", "1", home=run / "home")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {damaged}: weights that cannot be loaded (")
    assert not (tmp_path / "o").exists()


def test_the_reader_leaves_out_an_utterance_whose_transcript_cannot_be_read(tmp_path):
    """The reader (and its validation) read such an utterance with an empty text, to learn from and score on."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.mp4").write_bytes(b"")
    (tmp_path / "a.txt").write_text("a tone")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9")
    said = []
    assert [(u.id, u.text) for u in pretrain.usable(tmp_path, said.append)] == [("a", "a tone")]
    assert said == [f"warning: b skipped: {tmp_path / 'b.txt'}:1: not UTF-8 text (byte 4 of the line is 0xe9); save "
                    "it as UTF-8"]


@pytest.mark.parametrize("args, said", [
    (["reader", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["reader", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["reader", "--steps", "2", "--stop-after", "0"], "--stop-after must be a step of the --steps 2 schedule (1 to 2), "
                                                      "got 0"),
    (["reader", "--steps", "2", "--stop-after", "3"], "--stop-after must be a step of the --steps 2 schedule (1 to 2), "
                                                      "got 3"),
    (["reader", "--steps", "2", "--lr", "0"], "--lr must be a positive number, got 0.0"),
    (["reader", "--steps", "2", "--vocab", "100"], "--vocab must be at least 259 (the 256 bytes and BOS, EOS, PAD), "
                                                   "got 100"),
    (["backbones", "--steps", "1", "--babble", "5"], "--babble is a share of the utterances, from 0 to 1, got 5.0"),
    (["standins", "--steps", "1", "--batch-frames", "0"], "--batch-frames must be at least 1, got 0"),
    (["backbones", "--steps", "1", "--init", "{deep}", "--audio-layers", "3"],
     "--audio-layers 3 is fewer than the 6 layers of the audio encoder of --init {deep}"),
])
def test_option_values_out_of_range_are_usage_errors(args, said, corpus, tmp_path):
    """Each was taken: --stop-after 0 ignored, --steps 0 said it had written a reader it had not, --babble 5 (a share)
    and a --vocab too small for the bytes obeyed as something else, --batch 0 and --audio-layers below --init's a
    traceback."""
    deep = tmp_path / "deep"  # backbones with a 6-layer audio encoder, as far as --audio-layers looks
    for name in ("llm", "audio_encoder", "video_encoder"):
        (deep / name).mkdir(parents=True)
    (deep / "audio_encoder" / "config.json").write_text(json.dumps({"encoder_layers": 6}))
    args = [a.format(deep=deep) for a in args]
    result = pretrain_cli(*args, "--train", corpus / "train.jsonl", "-o", tmp_path / "o", "--threads", "1",
                          home=corpus.parent / "home", timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == f"python -m mome_cli.pretrain {args[0]}: error: {said.format(deep=deep)}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("stage", ["backbones", "standins"])
def test_the_stages_that_read_clips_read_the_manifest_once(stage, tmp_path, monkeypatch, capsys):
    """The check that --train is there before anything is built is the reading of its utterances, not a first read
    of a manifest that is then parsed again (LRS3's lists every clip)."""
    from mome_cli import data

    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=0.5",
                    str(tmp_path / "x.wav")], check=True)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"id": "x", "audio": "x.wav", "text": "a tone"}) + "\n")
    alignment = {"id": "x", "duration": 0.5, "frames": 13, "speech": [0.0, 0.5], "phonemes": [], "words": []}
    (tmp_path / "alignments.jsonl").write_text(json.dumps(alignment) + "\n")
    reads = []
    load_manifest = data.load_manifest
    monkeypatch.setattr(data, "load_manifest", lambda path, *a, **k: reads.append(path) or load_manifest(path, *a, **k))
    monkeypatch.setenv("MOME_HOME", str(tmp_path / "home"))
    code = pretrain.main([stage, "--train", str(manifest), "-o", str(tmp_path / "out"), "--steps", "2",
                          "--threads", "1"])
    assert code == 1 and "no clip to train on" in capsys.readouterr().err  # the clip is sound alone
    assert [str(p) for p in reads] == [str(manifest)]
