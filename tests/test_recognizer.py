"""Loading models the way presets do: backbones from a hub-cache layout, offline; missing pieces exit 4."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mome_cli.checkpoint import save_checkpoint
from mome_cli.hub import MissingModelError, UnusableModelError
from mome_cli.llm import build_tiny_llm
from mome_cli.model import AVSRModel, ModelConfig
from mome_cli.mome import MoMEConfig
from mome_cli.preprocess import Clip
from mome_cli.recognizer import BUNDLED, RecognizeOptions, UsageProblem, load_recognizer

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
LLAMA, WHISPER = "meta-llama/Llama-3.2-1B", "openai/whisper-medium.en"
DEMO_CLIP = Path(__file__).parents[1] / "examples" / "demo.mp4"


def snapshot(home, repo_id, commit=COMMIT):
    """A folder where huggingface_hub keeps repo_id at main: snapshots/<commit>/ with refs/main."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A mome home whose hub cache holds a tiny 'Llama-3.2-1B' and a tiny 'whisper-medium.en', as save_pretrained
    writes them, and a checkpoint directory trained on top of them."""
    from test_encoders import save_tiny_whisper_checkpoint

    home = tmp_path_factory.mktemp("home")
    llm, tokenizer = build_tiny_llm("tiny")
    folder = snapshot(home, LLAMA)
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_tiny_whisper_checkpoint(snapshot(home, WHISPER))
    config = ModelConfig(llm=LLAMA, audio_encoder=WHISPER, video_encoder="tiny", audio_dim=32, video_dim=32,
                         projector_hidden=32, mome=MoMEConfig(num_routed=4, top_k=2, bottleneck=8))
    torch.manual_seed(0)
    model = AVSRModel(config, llm, tokenizer)
    for m in model.mome:
        torch.nn.init.normal_(m.up_weight, std=0.3)
    save_checkpoint(model, home / "ckpt")
    return home


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_checkpoint_loads_its_backbones_from_the_cache_offline(home):
    recognizer = load_recognizer(str(home / "ckpt"), home=home, device="cpu")
    tiny, _ = build_tiny_llm("tiny")
    for (name, a), b in zip(recognizer.model.llm.named_parameters(), tiny.parameters()):
        assert torch.equal(a, b), name
    assert recognizer.audio_encoder.dim == 32 and recognizer.video_encoder.dim == 32
    assert recognizer.model.mome[0].up_weight.abs().sum() > 0  # the trained tensors, not a fresh init
    clip = Clip(path="x", duration=1.0, mode="av", audio=np.zeros(16000, np.float32) + 0.01,
                rois=np.full((25, 96, 96), 128, np.uint8))
    transcript = recognizer.transcribe(clip, RecognizeOptions(rate=(16, 5), max_new_tokens=5))
    assert transcript.rate == (16, 5) and transcript.model == str(home / "ckpt")


def test_a_backbone_missing_from_the_cache_names_the_download(home, tmp_path):
    partial = tmp_path / "home"
    shutil.copytree(home, partial)
    shutil.rmtree(partial / "hub" / f"models--{WHISPER.replace('/', '--')}")
    with pytest.raises(MissingModelError, match=f"{WHISPER} is not in the cache.*mome download mome-1b") as e:
        load_recognizer(str(partial / "ckpt"), home=partial, device="cpu")
    assert e.value.exit_code == 4


def test_a_checkpoint_whose_backbone_folders_are_gone_says_so(home, tmp_path):
    """A run trained on another machine names its backbones by a path that is not here: one clear error, not the
    hub library's traceback about repo ids."""
    import json

    moved = tmp_path / "ckpt"
    shutil.copytree(home / "ckpt", moved)
    config = json.loads((moved / "config.json").read_text())
    config["model"]["llm"] = "/tmp/elsewhere/backbones/llm"
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(MissingModelError, match="/tmp/elsewhere/backbones/llm: no such folder.*bundle") as e:
        load_recognizer(str(moved), home=home, device="cpu")
    assert e.value.exit_code == 4


def transcribe(home: Path, *args) -> subprocess.CompletedProcess:
    """`mome transcribe` of the demo clip (mouth crops) in a fresh interpreter, offline, with home as MOME_HOME."""
    return subprocess.run([sys.executable, "-m", "mome_cli", "transcribe", str(DEMO_CLIP), "--roi", "--stdout",
                           "--no-cache", *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MOME_HOME": str(home), "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("repo_id, lost", [(LLAMA, "tokenizer.json"), (WHISPER, "preprocessor_config.json"),
                                           (LLAMA, "model.safetensors")],
                         ids=["tokenizer", "feature-extractor", "dangling-blob-link"])
def test_a_backbone_cached_in_part_is_missing_and_names_the_file(home, tmp_path, repo_id, lost):
    """A snapshot without its tokenizer, its feature extractor or its weights' blob was taken as there: transformers
    then failed with a 50-line traceback."""
    partial = tmp_path / "home"
    shutil.copytree(home, partial)
    snapshot = partial / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
    (snapshot / lost).unlink()
    if lost == "model.safetensors":  # huggingface_hub's snapshots hold links to blobs
        (snapshot / lost).symlink_to(f"../../blobs/{'0' * 64}")
    result = transcribe(partial, "--model", partial / "ckpt")
    assert result.returncode == 4, result.stderr
    assert result.stderr == (f"mome transcribe: {lost} of {repo_id} is not in the cache ({partial}); run `mome "
                             "download mome-1b`\n"), result.stderr


def test_a_backbone_folder_transformers_cannot_load_is_one_line_and_exit_1(tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(BUNDLED / "demo", demo)
    (demo / "audio_encoder" / "preprocessor_config.json").unlink()
    result = transcribe(tmp_path / "home", "--model", demo)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"mome transcribe: {demo / 'audio_encoder'}: ") and \
        "preprocessor_config.json" in result.stderr, result.stderr


@pytest.mark.parametrize("content, said", [
    (b"", "not a PyTorch checkpoint: the file is empty"),
    (b"<html><body>503 Service Unavailable</body></html>", "not a PyTorch checkpoint: an HTML or XML page (an error "
                                                           "page saved in its place?)"),
], ids=["empty", "error-page"])
def test_a_damaged_avhubert_checkpoint_in_the_cache_is_one_line_and_exit_1(home, tmp_path, content, said):
    """An empty file ended the run with Click's "Aborted!" (torch's EOFError reads as Ctrl-D), an error page with
    "refusing ...: the weights-only unpickler stopped at " and no reason."""
    import json

    adapter = tmp_path / "adapter"
    shutil.copytree(home / "ckpt", adapter)
    config = json.loads((adapter / "config.json").read_text())
    config["model"]["video_encoder"] = "avhubert-large"  # mome-1b's
    (adapter / "config.json").write_text(json.dumps(config))
    cached = tmp_path / "home" / "avhubert" / "large_vox_iter5.pt"
    cached.parent.mkdir(parents=True)
    shutil.copytree(home / "hub", tmp_path / "home" / "hub")
    cached.write_bytes(content)
    result = transcribe(tmp_path / "home", "--model", "mome-1b", "--adapter", adapter, "--mode", "v")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"mome transcribe: {cached}: {said}"), result.stderr
    assert result.stderr.endswith("; delete it and run `mome download mome-1b` again\n"), result.stderr


def test_a_native_avhubert_folder_cut_short_is_one_line_and_exit_1(tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(BUNDLED / "demo", demo)
    os.truncate(demo / "video_encoder" / "model.safetensors", 5000)
    result = transcribe(tmp_path / "home", "--model", demo)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"mome transcribe: {demo / 'video_encoder' / 'model.safetensors'}: unreadable ("), \
        result.stderr


@pytest.mark.parametrize("change, said", [
    ({"hidden_size": "64"}, "not a Llama config: hidden_size must be a whole number >= 1, got '64'"),
    ({"model_type": "gpt2"}, "model_type 'gpt2': GPT2LMHeadModel has no decoder layers at .model.layers; MoME "
                             "needs a Llama-style LM"),
], ids=["text-for-a-number", "gpt2"])
def test_an_llm_config_of_the_wrong_type_or_model_is_one_line_and_exit_1(home, tmp_path, change, said):
    """A TypeError from torch.empty; for gpt2, transformers' report of every key, then a TypeError from MoME."""
    import json

    damaged = tmp_path / "home"
    shutil.copytree(home, damaged)
    config_file = damaged / "hub" / f"models--{LLAMA.replace('/', '--')}" / "snapshots" / COMMIT / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    result = transcribe(damaged, "--model", damaged / "ckpt")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"mome transcribe: {config_file}: {said}; if the cached file is damaged, `mome download "
                             f"mome-1b --revision {COMMIT} --force-download` fetches it again\n"), result.stderr


@pytest.mark.parametrize("repo_id, fix", [
    (LLAMA, f"`mome download mome-1b --revision {COMMIT} --force-download`"),
    (WHISPER, "`mome download PRESET --force-download` (mome-1b, mome-3b, mome-8b: the one you use)"),
], ids=["llm", "whisper"])
def test_damaged_weights_in_the_hub_cache_name_the_file_and_how_to_fetch_them_again(home, tmp_path, repo_id, fix):
    """huggingface_hub keeps a cached blob as it is: `mome download` left a damaged one, and nothing said how to
    replace it but deleting it by hand."""
    damaged = tmp_path / "home"
    shutil.copytree(home, damaged)
    weights = damaged / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = transcribe(damaged, "--model", damaged / "ckpt", "--mode", "a")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"mome transcribe: {weights}: "), result.stderr
    assert result.stderr.endswith(f"{fix} fetches it again\n"), result.stderr


def test_an_adapter_for_another_encoder_width_is_one_line_and_exit_1(home, tmp_path):
    """An adapter trained on 1024-wide Whisper features, on a 32-wide one: it loaded, then the first batch failed in
    a projector with "mat1 and mat2 shapes cannot be multiplied (21x32 and 1024x16)"."""
    llm, tokenizer = build_tiny_llm("tiny")
    config = ModelConfig(llm=LLAMA, audio_encoder=WHISPER, video_encoder="tiny", audio_dim=1024, video_dim=32,
                         projector_hidden=32, mome=MoMEConfig(num_routed=4, top_k=2, bottleneck=8))
    save_checkpoint(AVSRModel(config, llm, tokenizer), tmp_path / "adapter")
    result = transcribe(home, "--model", "mome-1b", "--adapter", tmp_path / "adapter", "--mode", "a")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"mome transcribe: {tmp_path / 'adapter'}: audio_dim 1024 does not fit its audio "
                             f"encoder, {WHISPER}, whose features are 32 wide\n"), result.stderr

    config.audio_dim, config.video_dim = 32, 48  # the tiny video encoder is 32 wide
    save_checkpoint(AVSRModel(config, llm, tokenizer), tmp_path / "video-adapter")
    with pytest.raises(UnusableModelError, match=f"^{tmp_path / 'video-adapter'}: video_dim 48 does not fit its "
                                                 "video encoder, tiny, whose features are 32 wide$"):
        load_recognizer(str(tmp_path / "video-adapter"), home=home, device="cpu")


def test_training_on_backbones_of_another_width_is_one_line_and_exit_1(home, tmp_path):
    """`mome train --model mome-1b` (audio_dim 1024, Whisper-medium's) on a cache whose Whisper is 32 wide failed in
    its first step, after preparing the data."""
    (tmp_path / "train.jsonl").write_text(f'{{"id": "demo", "video": "{DEMO_CLIP}", "text": "hello"}}\n')
    recipe = Path(__file__).parents[1] / "recipes" / "tiny.toml"
    result = subprocess.run([sys.executable, "-m", "mome_cli", "train", "--config", str(recipe), "--model", "mome-1b",
                             "--mode", "a", "--train", str(tmp_path / "train.jsonl"), "--roi", "--steps", "1",
                             "--device", "cpu", "-o", str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "MOME_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"mome train: mome-1b: audio_dim 1024 does not fit its audio encoder, {WHISPER}, whose "
                             "features are 32 wide\n"), result.stderr
    assert not (tmp_path / "run").exists()


def test_presets_need_an_adapter_and_take_one(home):
    with pytest.raises(MissingModelError, match="--adapter DIR"):
        load_recognizer("mome-1b", home=home, device="cpu")
    recognizer = load_recognizer("mome-1b", adapter=str(home / "ckpt"), home=home, device="cpu")
    assert recognizer.config.llm == LLAMA and recognizer.model.mome[0].up_weight.abs().sum() > 0


def test_an_adapter_runs_on_the_llm_revision_it_was_trained_on(home, tmp_path):
    """`mome download mome-1b --revision X` fetches the LLM at X; an adapter trained on X (its config says so) loads
    X, and says which download brings it when it is missing (it looked for main whatever the adapter said)."""
    import json

    pinned = tmp_path / "home"
    shutil.copytree(home, pinned)
    config = json.loads((pinned / "ckpt" / "config.json").read_text())
    config["model"]["llm_revision"] = "v2"
    (pinned / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MissingModelError, match=f"{LLAMA} at revision v2 is not in the cache.*mome download mome-1b "
                                                "--revision v2"):
        load_recognizer("mome-1b", adapter=str(pinned / "ckpt"), home=pinned, device="cpu")
    refs = pinned / "hub" / f"models--{LLAMA.replace('/', '--')}" / "refs"
    (refs / "v2").write_text((refs / "main").read_text())  # what that download leaves in the cache
    recognizer = load_recognizer("mome-1b", adapter=str(pinned / "ckpt"), home=pinned, device="cpu")
    assert recognizer.config.llm_revision == "v2"


def test_an_adapter_of_another_llm_is_refused_before_the_presets_backbones_are_looked_for(home, tmp_path):
    """An adapter trained on the tiny LLM given to mome-1b, with an empty cache: it asked for a download of Llama
    (gigabytes), after which the adapter was refused all the same."""
    import json

    tiny = tmp_path / "tiny-adapter"
    shutil.copytree(home / "ckpt", tiny)
    config = json.loads((tiny / "config.json").read_text())
    config["model"]["llm"] = "tiny"
    (tiny / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnusableModelError, match=f"tiny-adapter: checkpoint does not fit this model \\(llm: "
                                                 f"checkpoint 'tiny', model '{LLAMA}'\\)"):
        load_recognizer("mome-1b", adapter=str(tiny), home=tmp_path / "empty-home", device="cpu")


def test_unknown_model_and_unavailable_device_are_usage_problems(home):
    with pytest.raises(UsageProblem, match="neither a preset"):
        load_recognizer("gpt-5", home=home)
    if not torch.cuda.is_available():
        with pytest.raises(UsageProblem, match="no CUDA device"):
            load_recognizer("tiny", device="cuda", home=home)


def test_demo_loads_from_the_package_and_an_install_without_it_is_missing_not_a_crash(home, monkeypatch, tmp_path):
    from mome_cli import presets

    demo = load_recognizer("demo", home=home)
    assert Path(demo.config.llm).parent == presets.BUNDLED / "demo"  # its backbones come with it
    assert demo.config.modes == ["av", "a", "v"] and demo.max_segment_seconds == 8
    monkeypatch.setattr(presets, "BUNDLED", tmp_path)  # a broken install: the folder is gone
    with pytest.raises(MissingModelError, match="demo model"):
        load_recognizer("demo", home=home)


def test_a_max_segment_the_demo_model_cannot_take_is_refused_naming_its_own_limit():
    """--max-segment 30 with the demo model (an 8 s window) was refused, before it loaded, as "this model takes
    segments of at most 20 s", and 20 then as "at most 8 s"; the configs already say 8."""
    from mome_cli.presets import check_options, longest_segment, model_config

    assert longest_segment(model_config("demo")[0]) == 8 and longest_segment(model_config("tiny")[0]) == 20
    for asked in (30, 10):
        with pytest.raises(UsageProblem, match="at most 8 s"):
            check_options("demo", None, None, RecognizeOptions(max_segment=asked))
    check_options("demo", None, None, RecognizeOptions(max_segment=8))


@pytest.mark.parametrize("mode, frames, duration", [("v", 74, 2.95), ("av", 549, 21.9525)])
def test_no_segment_ends_past_the_clip(mode, frames, duration):
    """A clip's frames round its length up (2.95 s is 73.75 frames): the last segment said 2.96 s of a 2.95 s clip."""
    rng = np.random.default_rng(0)
    rois = rng.integers(0, 255, (frames, 88, 88), dtype=np.uint8)
    audio = None if mode == "v" else (0.1 * rng.standard_normal(round(duration * 16000))).astype(np.float32)
    clip = Clip(path="x.mp4", duration=duration, mode=mode, audio=audio, rois=rois)
    options = RecognizeOptions(mode=mode, max_new_tokens=2)
    (transcript,) = load_recognizer("tiny").transcribe_many([clip], options)
    assert transcript.segments[-1]["end"] == round(duration, 3)
    assert all(s["end"] <= round(duration, 3) for s in transcript.segments)


def test_a_segment_cut_short_at_the_token_limit_is_said():
    """evaluate counted them; a transcript that stopped mid-sentence at the limit came with no word of it."""
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(3 * 16000)).astype(np.float32)
    clip = Clip(path="x.wav", duration=3.0, mode="a", audio=audio)
    recognizer = load_recognizer("tiny")
    (cut,) = recognizer.transcribe_many([clip], RecognizeOptions(mode="a", max_new_tokens=1))
    assert cut.warnings == ["decoding reached the token limit without ending at 0.00-3.00 s: the text stops there "
                            "(the model repeats itself, or reads noise as speech)"]


def test_a_short_segment_gets_its_own_token_budget_in_a_batch_with_a_long_one():
    """The tiny random LM never ends: alone, a 1.5 s segment stops at its budget (64 tokens); decoded beside a 3.5 s
    one it took that one's (128), so --batch-size changed the transcript."""
    rng = np.random.default_rng(1)
    clips = [Clip(path=f"{s}.wav", duration=s, mode="a",
                  audio=(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32)) for s in (1.5, 3.5)]
    recognizer = load_recognizer("tiny")
    alone = [recognizer.transcribe_many([c], RecognizeOptions(mode="a"))[0] for c in clips]
    together = recognizer.transcribe_many(clips, RecognizeOptions(mode="a", batch_size=2))
    assert [t.text for t in together] == [t.text for t in alone]
    assert [t.warnings for t in together] == [t.warnings for t in alone]


def test_budget_batches_are_longest_first_each_segment_with_its_own_budget():
    from mome_cli.recognizer import budget_batches

    seconds = [1.0, 5.0, 4.6, 1.5, 4.9, 0.5]
    jobs = list("abcdef")
    assert budget_batches(jobs, seconds, 4) == [(["b", "e", "c", "d"], [160, 160, 160, 64]), (["a", "f"], [64, 64])]
    assert budget_batches(jobs, seconds, 8, max_new_tokens=5) == [(list("becdaf"), [5] * 6)]
