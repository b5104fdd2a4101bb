"""The model registry, the cache and downloads, against a local HTTP server and hand-built caches: no network."""

import dataclasses
import errno
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import httpx
import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import errors
from huggingface_hub.utils import filter_repo_objects

from mome_cli import downloads, hub
from mome_cli.cli import cli
from mome_cli.hub import (AVHUBERT_LARGE, FACE_ALIGNMENT_FILES, PRESETS, ChecksumError, MissingModelError, Preset,
                          RemoteFile)
from mome_cli.report import ExitCode

DATA = random.Random(0).randbytes(300_000)  # what the server serves as weights.bin
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a made-up 40-hex commit hash


# --- a local file server that can honour or ignore Range requests -----------------------------------------------------


class FileServer(ThreadingHTTPServer):
    """Serves `files` by name, with an ETag (the start of the body's SHA-256) that If-Range is checked against;
    records (path, Range header) of every request. With a gate, each answer stops half-way until the gate is set, as
    a slow download would: a test acts while the file is half there. With cut, the next answer ends after that many
    bytes of its body, as a dropped connection does."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {"weights.bin": DATA}
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []
        self.gate: threading.Event | None = None
        self.cut: int | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self):
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        body = self.server.files.get(urlparse(self.path).path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        unchanged = self.headers.get("If-Range", etag) == etag  # a Range with an old If-Range gets the whole file
        start = 0
        if range_header and self.server.honour_range and unchanged:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", etag)
        self.end_headers()
        if self.server.cut is not None:
            self.wfile.write(body[start:start + self.server.cut])
            self.server.cut = None
            self.close_connection = True
            return
        if self.server.gate is not None:
            middle = (start + len(body)) // 2
            self.wfile.write(body[start:middle])
            self.wfile.flush()
            self.server.gate.wait(timeout=30)
            start = middle
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    if srv.gate is not None:
        srv.gate.set()  # no answer left hanging
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty mome home, online as far as the environment says."""
    monkeypatch.setenv("MOME_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    return tmp_path / "home"


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, args, prog_name="mome", env=env)


def explain(result) -> str:
    extra = f"\nexception: {result.exception!r}" if result.exception else ""
    return f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}{extra}"


def file_preset(*files: RemoteFile, name: str = "mome-1b") -> Preset:
    """A preset made only of plain files, standing in for a real one in CLI tests."""
    return Preset(name, "test preset", video=files[0], face=files[1:])


def remote(server: FileServer, sha256: str | None, filename: str = "weights.bin", folder: str = "avhubert"):
    return RemoteFile("test weights", server.url("weights.bin"), folder, filename, sha256=sha256)


def visible(folder: Path) -> list[str]:
    """The names in folder but the hidden lock files that downloads leave beside their files (.<file>.lock)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def make_snapshot(home: Path, repo_id: str, write, revision: str = "main") -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out: snapshots/<commit>/ and refs/<revision>."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    write(folder)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(COMMIT)
    return folder


def fake_repo(folder: Path) -> None:
    """The files loading a preset's Hub repository reads (Llama's tokenizer, Whisper's feature extractor)."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors").write_bytes(b"not loaded by these tests")


def fill_files(home: Path, files) -> None:
    for item in files:
        item.path(home).parent.mkdir(parents=True, exist_ok=True)
        item.path(home).write_bytes(b"x")


# --- registry ---------------------------------------------------------------------------------------------------------


def test_presets_are_the_contracts():
    assert list(PRESETS) == ["tiny", "demo", "mome-1b", "mome-3b", "mome-8b"]
    for name in ("tiny", "demo"):  # their models need no download; face-alignment's weights are fetched with them
        assert [item for _, item in PRESETS[name].items()] == list(FACE_ALIGNMENT_FILES)
    assert PRESETS["tiny"].source == "local"
    assert PRESETS["demo"].source == "bundled" and "inside the package" in PRESETS["demo"].note
    llms = {"mome-1b": "meta-llama/Llama-3.2-1B", "mome-3b": "meta-llama/Llama-3.2-3B",
            "mome-8b": "meta-llama/Llama-3.1-8B"}
    for name, llm in llms.items():
        preset = PRESETS[name]
        assert preset.llm.repo_id == llm and preset.llm.gated
        assert preset.llm.licence_url == f"https://huggingface.co/{llm}"
        assert preset.audio.repo_id == "openai/whisper-medium.en" and not preset.audio.gated
        assert preset.video is AVHUBERT_LARGE and preset.face == FACE_ALIGNMENT_FILES and preset.adapter is None


def test_revision_overrides_the_llm_only():
    preset = hub.get_preset("mome-3b", revision="abc123")
    assert preset.llm.revision == "abc123" and preset.audio.revision == "main"
    assert PRESETS["mome-3b"].llm.revision == "main"  # the registry itself is untouched
    with pytest.raises(ValueError, match="known presets: tiny, demo, mome-1b"):
        hub.get_preset("mome-2b")


def test_allow_patterns_fetch_only_what_transformers_needs():
    repo_files = ["config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors",
                  "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "original/consolidated.00.pth", "original/params.json", "original/tokenizer.model",
                  "pytorch_model.bin", "LICENSE.txt", "USE_POLICY.md", "README.md"]
    for repo in (PRESETS["mome-8b"].llm, PRESETS["mome-1b"].audio):
        kept = set(filter_repo_objects(repo_files, allow_patterns=list(repo.allow_patterns),
                                       ignore_patterns=list(repo.ignore_patterns)))
        assert {"config.json", "model.safetensors", "model-00001-of-00002.safetensors", "tokenizer.json"} <= kept
        assert not kept & {"original/consolidated.00.pth", "original/params.json", "pytorch_model.bin", "README.md"}


def test_face_alignment_files_are_named_as_torch_hub_expects():
    for item in FACE_ALIGNMENT_FILES:
        assert item.folder == "torch/hub/checkpoints"
        assert item.filename == Path(urlparse(item.url).path).name  # torch.hub names a download after its URL
        prefix = re.search(r"-([a-f0-9]*)\.", item.filename)  # torch.hub's HASH_REGEX
        assert item.sha256 == (prefix.group(1) if prefix else None), item


def test_avhubert_has_no_published_checksum():
    assert AVHUBERT_LARGE.sha256 is None and AVHUBERT_LARGE.size is None
    assert AVHUBERT_LARGE.url.endswith("/lrs3_vox/clean-pretrain/large_vox_iter5.pt")


# --- cache locations --------------------------------------------------------------------------------------------------


def test_mome_home_from_env_or_platformdirs(tmp_path, monkeypatch):
    from platformdirs import user_data_dir

    monkeypatch.setenv("MOME_HOME", str(tmp_path))
    assert hub.mome_home() == tmp_path
    assert hub.hub_cache_dir() == tmp_path / "hub"
    assert hub.face_alignment_dir() == tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.delenv("MOME_HOME")
    assert hub.mome_home() == Path(user_data_dir("mome"))


def test_face_alignment_env_points_torch_hub_into_the_cache(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", "/elsewhere")
    with hub.face_alignment_env(tmp_path):
        assert Path(torch.hub.get_dir()) / "checkpoints" == hub.face_alignment_dir(tmp_path)
    assert torch.hub.get_dir() == "/elsewhere/hub"


# --- the downloader ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sha256", [DATA_SHA256, DATA_SHA256[:10]], ids=["full", "prefix"])
def test_fetch_url_checks_the_sha256_then_renames(server, tmp_path, sha256):
    dest = tmp_path / "weights.bin"
    assert hub.fetch_url(server.url("weights.bin"), dest, sha256) == DATA_SHA256
    assert dest.read_bytes() == DATA
    assert visible(tmp_path) == ["weights.bin"]  # no .part, no sidecar
    assert (tmp_path / ".weights.bin.lock").is_file()  # left for the next process: see downloads.download_lock


def test_fetch_url_checksum_mismatch_leaves_nothing(server, tmp_path):
    dest = tmp_path / "weights.bin"
    with pytest.raises(ChecksumError) as caught:
        hub.fetch_url(server.url("weights.bin"), dest, "0" * 64)
    assert caught.value.exit_code == ExitCode.FAILURE
    assert "weights.bin" in str(caught.value) and "0" * 64 in str(caught.value) and DATA_SHA256 in str(caught.value)
    assert visible(tmp_path) == []


def test_fetch_url_size_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(hub.HubError, match=f"weights.bin: expected 1000 bytes, got {len(DATA)}") as caught:
        hub.fetch_url(server.url("weights.bin"), tmp_path / "weights.bin", size=1000)
    assert caught.value.exit_code == ExitCode.FAILURE and visible(tmp_path) == []


def test_fetch_url_resumes_a_part_with_a_range_request(server, tmp_path):
    dest = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(DATA[:123_456])
    hub.fetch_url(server.url("weights.bin"), dest, DATA_SHA256)
    assert server.requests == [("/weights.bin", "bytes=123456-")]
    assert dest.read_bytes() == DATA and not (tmp_path / "weights.bin.part").exists()


def test_fetch_url_restarts_when_the_server_ignores_range(server, tmp_path):
    server.honour_range = False
    dest = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(b"stale bytes from another version of the file")
    hub.fetch_url(server.url("weights.bin"), dest, DATA_SHA256)
    assert server.requests == [("/weights.bin", "bytes=44-")]
    assert dest.read_bytes() == DATA and not (tmp_path / "weights.bin.part").exists()


def test_fetch_url_restarts_when_the_part_is_longer_than_the_file(server, tmp_path):
    dest = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(DATA + b"tail")
    hub.fetch_url(server.url("weights.bin"), dest, DATA_SHA256)
    assert server.requests == [("/weights.bin", f"bytes={len(DATA) + 4}-"), ("/weights.bin", None)]
    assert dest.read_bytes() == DATA


def test_file_without_checksum_gets_its_digest_recorded_and_rechecked(server, tmp_path):
    item = remote(server, sha256=None)
    path = hub.fetch_file(item, tmp_path)
    assert path.read_bytes() == DATA
    assert Path(f"{path}.sha256").read_text() == f"{DATA_SHA256}  weights.bin\n"
    hub.verify_file(item, path)
    path.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 1]))  # one bit changed
    with pytest.raises(ChecksumError, match=f"expected SHA-256 {DATA_SHA256}"):
        hub.verify_file(item, path)
    hub.fetch_file(item, tmp_path)  # a corrupted cached file is fetched again
    assert path.read_bytes() == DATA and len(server.requests) == 2


def test_unreachable_server_is_missing_with_no_network(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MissingModelError, match="no network: .*run again when online") as caught:
        hub.fetch_url(f"http://127.0.0.1:{port}/weights.bin", tmp_path / "weights.bin", DATA_SHA256)
    assert caught.value.exit_code == ExitCode.MISSING and visible(tmp_path) == []
    assert f"copy the cache folder {tmp_path} from a machine that has it" in str(caught.value)  # which folder


def test_http_error_is_a_failure(server, tmp_path):
    with pytest.raises(hub.HubError, match="HTTP 404") as caught:
        hub.fetch_url(server.url("nothing.bin"), tmp_path / "nothing.bin", DATA_SHA256)
    assert caught.value.exit_code == ExitCode.FAILURE and visible(tmp_path) == []


@pytest.mark.parametrize("changed", [False, True], ids=["same-file", "file-changed"])
def test_an_interrupted_download_resumes_only_the_file_it_began(server, tmp_path, changed):
    """A .part was resumed with a plain Range request even when the file on the server had changed since: the old
    file's start and the new one's end were joined, and, with no checksum published, recorded as the right digest.
    Now the resume asks If-Range with the ETag the .part was begun with, and a changed file comes whole."""
    old, new = random.Random(2).randbytes(3 << 20), random.Random(3).randbytes(3 << 20)  # 3 MiB: 1 MiB reaches disk
    server.files["large.bin"] = old
    server.cut = 2 << 20
    dest, part = tmp_path / "large.bin", tmp_path / "large.bin.part"
    with pytest.raises(MissingModelError, match="download of large.bin interrupted after"):
        hub.fetch_url(server.url("large.bin"), dest)
    kept = part.stat().st_size
    assert kept > 0 and not dest.exists()
    if changed:
        server.files["large.bin"] = new
    assert hub.fetch_url(server.url("large.bin"), dest) == hashlib.sha256(new if changed else old).hexdigest()
    assert dest.read_bytes() == (new if changed else old)
    assert server.requests == [("/large.bin", None), ("/large.bin", f"bytes={kept}-")]
    assert visible(tmp_path) == ["large.bin", "large.bin.sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".large.bin.lock", "large.bin", "large.bin.sha256"]


# What each `mome download` process does for a plain file: fetch_file, its messages on stderr.
FETCH_FILE = """
import sys
from pathlib import Path
from mome_cli import hub
item = hub.RemoteFile("large weights", sys.argv[1], "avhubert", "large.bin")
hub.fetch_file(item, Path(sys.argv[2]), log=lambda message: print(message, file=sys.stderr, flush=True))
"""


def test_two_processes_fetching_one_file_take_turns(server, tmp_path):
    """Two downloads into one cache appended to the same .part: one renamed a file longer than the one served into
    place, with the digest of what it had received recorded beside it, and the other died renaming a .part that was
    gone. Now the second waits for the first, then finds its file and checks it."""
    large = random.Random(1).randbytes(3 << 20)  # 3 MiB: the first MiB reaches the .part before the gate
    server.files["large.bin"] = large
    server.gate = threading.Event()
    home, part = tmp_path / "home", tmp_path / "home" / "avhubert" / "large.bin.part"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                          os.environ.get("PYTHONPATH", "")])}
    logs = [tmp_path / "first.log", tmp_path / "second.log"]

    def start(log: Path) -> subprocess.Popen:
        with open(log, "w") as stderr:
            return subprocess.Popen([sys.executable, "-c", FETCH_FILE, server.url("large.bin"), str(home)],
                                    stderr=stderr, env=env)

    def wait_for(condition, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)

    first = start(logs[0])
    wait_for(lambda: part.is_file() and part.stat().st_size >= 1 << 20)  # half-way, held at the gate
    second = start(logs[1])
    wait_for(lambda: "waiting" in logs[1].read_text() or len(server.requests) > 1)
    server.gate.set()
    codes = [first.wait(timeout=30), second.wait(timeout=30)]
    said = [log.read_text() for log in logs]
    assert codes == [0, 0], said
    path = home / "avhubert" / "large.bin"
    assert path.read_bytes() == large, (path.stat().st_size, len(large))
    assert Path(f"{path}.sha256").read_text() == f"{hashlib.sha256(large).hexdigest()}  large.bin\n"
    assert server.requests == [("/large.bin", None)], said  # the second fetched nothing: it found the file
    assert "another process is downloading large.bin; waiting for it to finish" in said[1], said
    assert f"verifying {path}" in said[1] and "Traceback" not in said[1] and "mismatch" not in said[1], said


# --- mome download ----------------------------------------------------------------------------------------------------


def test_download_fetches_a_preset_then_lists_it_complete(server, home, monkeypatch):
    face = remote(server, DATA_SHA256[:10], filename="s3fd-0123.pth", folder="torch/hub/checkpoints")
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, None), face))
    result = invoke("download", "mome-1b", "-v")
    assert result.exit_code == 0 and result.stdout == "", explain(result)
    assert (home / "avhubert" / "weights.bin").read_bytes() == DATA
    assert f"  video: {home / 'avhubert' / 'weights.bin'}\n" in result.stderr, explain(result)  # -v: where it lies
    assert f"  face-alignment: {home / 'torch' / 'hub' / 'checkpoints'}\n" in result.stderr, explain(result)
    assert (home / "torch" / "hub" / "checkpoints" / "s3fd-0123.pth").read_bytes() == DATA
    result = invoke("download", "--list")
    assert result.exit_code == 0, explain(result)
    assert re.search(r"avhubert/weights\.bin +300\.0 kB +sha256 recorded", result.stdout), explain(result)
    assert "torch/hub/checkpoints/s3fd-0123.pth" in result.stdout, explain(result)
    assert re.search(r"mome-1b +complete", result.stdout), explain(result)
    assert re.search(r"mome-3b +incomplete: missing meta-llama/Llama-3.2-3B", result.stdout), explain(result)


def test_force_download_fetches_cached_files_again(server, home, monkeypatch):
    """A file that checks out, or one with no checksum to check (AV-HuBERT's), and a Hub snapshot, whose blobs
    huggingface_hub keeps as they are, damaged or not: --force-download fetches each of them again."""
    monkeypatch.setitem(PRESETS, "mome-1b", dataclasses.replace(
        file_preset(remote(server, None)), llm=PRESETS["mome-1b"].llm))
    forced = []

    def snapshot_download(repo_id, **kwargs):  # the Hub: a snapshot it writes again when forced
        folder = home / "hub" / "snapshot"
        if kwargs.get("force_download") or not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fake_repo(folder)
            forced.append(bool(kwargs.get("force_download")))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hub_reached(monkeypatch)
    assert invoke("download", "mome-1b").exit_code == 0
    weights = home / "avhubert" / "weights.bin"
    weights.write_bytes(b"damaged, and its digest recorded as if it were not")
    (home / "avhubert" / "weights.bin.sha256").write_text(f"{hashlib.sha256(weights.read_bytes()).hexdigest()}  x\n")
    again = invoke("download", "mome-1b")
    assert again.exit_code == 0 and weights.read_bytes() != DATA and forced == [False], explain(again)
    asked = len(server.requests)
    forced_run = invoke("download", "mome-1b", "--force-download")
    assert forced_run.exit_code == 0, explain(forced_run)
    assert weights.read_bytes() == DATA and len(server.requests) == asked + 1 and forced == [False, True]
    assert hub.verify_file(PRESETS["mome-1b"].video, weights) == DATA_SHA256  # the digest recorded: the new file's


@pytest.mark.parametrize("args, env", [(("--list",), {}), (("--offline",), {}), ((), {"HF_HUB_OFFLINE": "1"})],
                         ids=["list", "offline", "hf-hub-offline"])
def test_force_download_without_the_network_is_a_usage_error(home, args, env):
    result = invoke("download", "demo", "--force-download", *args, env=env)
    assert result.exit_code == ExitCode.USAGE and "--force-download downloads" in result.stderr, explain(result)


def test_face_alignment_weights_in_the_users_torch_home_are_used_not_fetched(server, home, tmp_path, monkeypatch):
    theirs = tmp_path / "torch-home" / "hub" / "checkpoints"
    theirs.mkdir(parents=True)
    (theirs / "s3fd-0123.pth").write_bytes(DATA)
    (theirs / "anchors.npy").write_bytes(b"no checksum published")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    face = [remote(server, DATA_SHA256[:10], filename="s3fd-0123.pth", folder="torch/hub/checkpoints"),
            remote(server, None, filename="anchors.npy", folder="torch/hub/checkpoints")]
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, None), *face))
    result = invoke("download", "--list", "mome-1b")
    assert re.search(r"mome-1b +incomplete: missing weights\.bin;", result.stdout), explain(result)  # face: there
    assert re.search(rf"s3fd-0123\.pth +300\.0 kB +in \$TORCH_HOME +{theirs}/s3fd-0123\.pth", result.stdout), \
        explain(result)
    result = invoke("download", "mome-1b")
    assert result.exit_code == 0, explain(result)
    assert [path for path, _ in server.requests] == ["/weights.bin"], server.requests  # only what was missing
    assert f"{theirs}/s3fd-0123.pth ($TORCH_HOME)" in result.stderr, explain(result)
    assert not (home / "torch").exists() and sorted(p.name for p in theirs.iterdir()) == ["anchors.npy",
                                                                                          "s3fd-0123.pth"]
    (theirs / "s3fd-0123.pth").write_bytes(b"damaged")  # used first at run time: said, not fetched beside it
    result = invoke("download", "mome-1b")
    assert result.exit_code == ExitCode.FAILURE and not (home / "torch").exists(), explain(result)
    assert f"{theirs}/s3fd-0123.pth: checksum mismatch" in result.stderr and "unset TORCH_HOME" in result.stderr, \
        explain(result)
    assert "expected SHA-256 one that starts " in result.stderr, explain(result)  # all torch hub's name gives
    assert (theirs / "s3fd-0123.pth").read_bytes() == b"damaged"  # theirs is left as it was


def test_a_users_torch_home_with_part_of_the_weights_is_not_mixed_with_the_cache(server, home, tmp_path,
                                                                                  monkeypatch):
    """Face detection takes one folder that holds a detector's whole set: a $TORCH_HOME that lacks some files is not
    used, and the cache gets all of them."""
    from mome_cli.preprocess import face_alignment_weights

    theirs = tmp_path / "torch-home" / "hub" / "checkpoints"
    theirs.mkdir(parents=True)
    (theirs / "blazeface.pth").write_bytes(DATA)  # what running face-alignment with BlazeFace leaves
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    served = {name: DATA for name in ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar", "blazeface.pth")}
    server.files.update(served)
    face = [RemoteFile("test", server.url(name), "torch/hub/checkpoints", name) for name in served]
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, None), *face))
    result = invoke("download", "mome-1b")
    assert result.exit_code == 0, explain(result)
    cached = home / "torch" / "hub" / "checkpoints"
    assert [name for name in visible(cached) if not name.endswith(".sha256")] == sorted(served)
    with face_alignment_weights("sfd"):  # the cache: the user's folder lacks the sfd set
        assert os.environ["TORCH_HOME"] == str(home / "torch")


def test_download_checksum_mismatch_exits_1(server, home, monkeypatch):
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, "f" * 64)))
    result = invoke("download", "mome-1b")
    assert result.exit_code == ExitCode.FAILURE, explain(result)
    assert f"checksum mismatch: expected SHA-256 {'f' * 64}, got {DATA_SHA256}" in result.stderr, explain(result)
    assert "Traceback" not in result.stderr and not visible(home / "avhubert"), explain(result)


def damaged_cache(home: Path, item: RemoteFile) -> Path:
    """item cached with bytes that are not its own, and, having no published checksum, the right digest recorded."""
    path = item.path(home)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"damaged")
    Path(f"{path}.sha256").write_text(f"{DATA_SHA256}  {path.name}\n")
    return path


def recorded_digest(path: Path) -> str:
    return Path(f"{path}.sha256").read_text().split()[0]


def read_only(monkeypatch, folder: Path) -> None:
    """folder as on a read-only file system, for this process: os.access says no, deleting fails with EROFS (the
    tests may run as root, whom a folder's mode does not stop)."""
    real_access, real_unlink = os.access, Path.unlink

    def access(path, mode, **kwargs):
        return not (mode & os.W_OK and Path(path).is_relative_to(folder)) and real_access(path, mode, **kwargs)

    def unlink(path, missing_ok=False):
        if Path(path).is_relative_to(folder):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, missing_ok)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "unlink", unlink)


def test_a_damaged_file_in_a_read_only_cache_is_one_line_and_kept(server, home, monkeypatch):
    """A cached file failing its checksum in a read-only cache ended in a raw OSError traceback from deleting it."""
    item = remote(server, None)
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(item))
    path = damaged_cache(home, item)
    read_only(monkeypatch, home)
    result = invoke("-q", "download", "mome-1b")
    assert result.exit_code == ExitCode.FAILURE and result.stderr == (
        f"mome download: {path}: checksum mismatch (expected SHA-256 {DATA_SHA256}, got "
        f"{hashlib.sha256(b'damaged').hexdigest()}); kept as it is, since it cannot be downloaded again: cannot "
        f"write to {path.parent}: permission denied; choose another place with --cache-dir or MOME_HOME\n"), \
        explain(result)
    assert path.read_bytes() == b"damaged" and not server.requests, explain(result)


def test_a_damaged_file_is_kept_until_a_good_one_is_downloaded(server, home, monkeypatch):
    """A cached file failing its checksum was deleted before downloading it again: offline, that left less than
    before. Now it stays until a download that checks out is renamed over it."""
    item = remote(server, None)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        unreachable = dataclasses.replace(item, url=f"http://127.0.0.1:{s.getsockname()[1]}/weights.bin")
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(unreachable))
    path = damaged_cache(home, item)
    result = invoke("-q", "download", "mome-1b")
    assert result.exit_code == ExitCode.MISSING, explain(result)
    assert path.read_bytes() == b"damaged" and recorded_digest(path) == DATA_SHA256, explain(result)
    assert result.stderr.startswith(f"mome download: {path}: checksum mismatch (expected SHA-256 {DATA_SHA256}") and \
        "kept as it is, since it cannot be downloaded again: no network: " in result.stderr, explain(result)
    assert len(result.stderr.splitlines()) == 1, explain(result)
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(item))  # online again
    result = invoke("-q", "download", "mome-1b")
    assert result.exit_code == 0 and result.stderr == "", explain(result)
    assert path.read_bytes() == DATA and recorded_digest(path) == DATA_SHA256
    assert visible(path.parent) == ["weights.bin", "weights.bin.sha256"]


def test_list_names_cached_items_and_what_presets_lack(home):
    make_snapshot(home, "openai/whisper-medium.en", fake_repo)
    fill_files(home, [AVHUBERT_LARGE])
    (home / "avhubert" / "other.pt.part").write_bytes(b"half")
    (home / "cache" / "clips").mkdir(parents=True)  # what transcribe and evaluate keep: was not listed
    (home / "cache" / "clips" / "abc.npz").write_bytes(b"12345")
    result = invoke("download", "--list", "mome-1b", "tiny")
    assert re.search(r"cache/clips +1 file +5 B +\S+cache/clips", result.stdout), explain(result)
    assert result.exit_code == 0 and result.stderr == "", explain(result)
    assert re.search(r"openai/whisper-medium\.en +main +\d+ B +\S+models--openai--whisper-medium\.en", result.stdout), \
        explain(result)
    assert re.search(r"avhubert/large_vox_iter5\.pt +1 B", result.stdout), explain(result)
    assert re.search(r"avhubert/other\.pt\.part +4 B +partial", result.stdout), explain(result)
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("mome-1b"))
    assert "incomplete: missing meta-llama/Llama-3.2-1B (main), face-alignment weights (4 of 4 files)" in line
    assert "whisper" not in line and "large_vox_iter5" not in line and "mome download mome-1b" in line
    assert re.search(r"tiny +ready", result.stdout) and "mome-8b" not in result.stdout, explain(result)


def test_list_counts_no_bytes_for_a_link_to_itself_in_the_cache(home):
    """A link to itself (ELOOP) in cache/clips ended `mome download --list` with an OSError traceback."""
    clips = home / "cache" / "clips"
    clips.mkdir(parents=True)
    (clips / "abc.npz").write_bytes(b"12345")
    (clips / "loop.npz").symlink_to("loop.npz")
    result = invoke("download", "--list")
    assert result.exit_code == 0 and result.stderr == "", explain(result)
    assert re.search(r"cache/clips +1 file +5 B +\S+cache/clips", result.stdout), explain(result)


def test_list_checks_the_revision_asked_for(home):
    """--list ignored --revision: a preset whose LLM is cached at that revision was listed as missing it at main,
    with a command that fetches main."""
    make_snapshot(home, "meta-llama/Llama-3.2-1B", fake_repo, revision="v1")
    at_main = invoke("download", "--list", "mome-1b")
    assert "missing meta-llama/Llama-3.2-1B (main)" in at_main.stdout, explain(at_main)
    at_v1 = invoke("download", "--list", "mome-1b", "--revision", "v1")
    line = next(line for line in at_v1.stdout.splitlines() if line.strip().startswith("mome-1b"))
    assert "Llama-3.2-1B" not in line and "run `mome download mome-1b --revision v1`" in line, explain(at_v1)


@pytest.mark.parametrize("repo_id, lost", [
    ("meta-llama/Llama-3.2-1B", "tokenizer.json"),
    ("openai/whisper-medium.en", "preprocessor_config.json"),
    ("meta-llama/Llama-3.2-1B", "model.safetensors"),  # a link to a blob that is gone
], ids=["tokenizer", "feature-extractor", "dangling-blob-link"])
def test_a_snapshot_cached_in_part_is_incomplete_until_download_fetches_what_it_lacks(home, monkeypatch, repo_id,
                                                                                      lost):
    """A snapshot with config.json and any *.safetensors counted as complete (a link to a blob that is gone too):
    --list and an offline download called mome-1b complete, and transcribe died in transformers with a traceback."""
    monkeypatch.setitem(PRESETS, "mome-1b", dataclasses.replace(PRESETS["mome-1b"], video=None, face=()))
    folders = {repo: make_snapshot(home, repo, fake_repo) for repo in ("meta-llama/Llama-3.2-1B",
                                                                        "openai/whisper-medium.en")}
    (folders[repo_id] / lost).unlink()
    if lost == "model.safetensors":  # huggingface_hub's snapshots hold links to blobs
        (folders[repo_id] / lost).symlink_to(f"../../blobs/{'0' * 64}")
    listing = invoke("download", "--list", "mome-1b")
    line = next(line for line in listing.stdout.splitlines() if line.strip().startswith("mome-1b"))
    assert line.split(None, 1)[1] == f"incomplete: missing {lost} of {repo_id} (main); run `mome download mome-1b`", \
        explain(listing)
    assert re.search(rf"{re.escape(repo_id)} +main ", listing.stdout), explain(listing)  # damaged, not left out
    offline = invoke("download", "mome-1b", env={"HF_HUB_OFFLINE": "1"})
    assert offline.exit_code == ExitCode.MISSING, explain(offline)
    assert f"mome-1b needs {lost} of {repo_id} (main), not in the cache" in offline.stderr, explain(offline)

    def snapshot_download(repo_id, **kwargs):  # the Hub, as huggingface_hub fetches into a snapshot: what it lacks
        folder = folders[repo_id]
        if not kwargs.get("local_files_only") and not (folder / lost).is_file():
            (folder / lost).unlink(missing_ok=True)
            fake_repo(folder)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    fetched = invoke("download", "mome-1b")
    assert fetched.exit_code == 0 and "mome-1b: complete" in fetched.stderr, explain(fetched)
    assert re.search(r"mome-1b +complete", invoke("download", "--list", "mome-1b").stdout)


@pytest.mark.parametrize("lost, said", [
    ("generation_config.json", "complete"),
    ("tokenizer.json",
     "incomplete: missing tokenizer.json of meta-llama/Llama-3.2-1B (main); run `mome download mome-1b`"),
], ids=["a-file-loading-does-not-read", "the-tokenizer"])
def test_a_snapshot_that_huggingface_hubs_listing_calls_incomplete_is_judged_by_what_loading_reads(home, monkeypatch,
                                                                                                    lost, said):
    """huggingface_hub 1.x keeps each snapshot's file listing (trees/<commit>.json) and calls, without the network, a
    snapshot that lacks any file of it incomplete: a Llama with every file loading reads but its generation_config.json
    was missing as a whole (transcribe exit 4), and one without its tokenizer did not say which file it lacks."""
    monkeypatch.setitem(PRESETS, "mome-1b", dataclasses.replace(PRESETS["mome-1b"], audio=None, video=None, face=()))
    folder = make_snapshot(home, "meta-llama/Llama-3.2-1B", fake_repo)
    (folder / "generation_config.json").write_text("{}")
    listed = {p.name: {"size": p.stat().st_size, "blob_id": f"{i:040x}"} for i, p in enumerate(folder.iterdir())}
    (folder.parents[1] / "trees").mkdir()
    (folder.parents[1] / "trees" / f"{COMMIT}.json").write_text(json.dumps({"format_version": 1, "files": listed}))
    (folder / lost).unlink()
    listing = invoke("download", "--list", "mome-1b")
    line = next(line for line in listing.stdout.splitlines() if line.strip().startswith("mome-1b"))
    assert line.split(None, 1)[1] == said, explain(listing)
    found = hub.locate(PRESETS["mome-1b"].llm, home)
    assert found == (folder if lost == "generation_config.json" else None)


def hub_reached(monkeypatch) -> list[str]:
    """Make huggingface_hub's HfApi.repo_info answer, as the Hub does when it is reached; return the repos asked."""
    asked = []
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kwargs: asked.append(repo_id))
    return asked


def test_a_snapshot_the_hub_leaves_incomplete_names_what_it_lacks(home, monkeypatch):
    folder = make_snapshot(home, "openai/whisper-medium.en", lambda f: (f / "config.json").write_text("{}"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(folder))
    hub_reached(monkeypatch)
    with pytest.raises(hub.HubError, match=f"the snapshot in {folder} has no preprocessor_config.json, "
                                           "model.safetensors$"):
        hub.fetch_repo(hub.WHISPER_MEDIUM_EN, home)


@pytest.mark.parametrize("cached, flags, said", [
    (("config.json",), (), "the cached snapshot lacks tokenizer.json, tokenizer_config.json, model.safetensors"),
    (("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"), ("--force-download",),
     "--force-download fetched nothing"),
], ids=["cached-in-part", "force-download"])
def test_a_cached_snapshot_with_no_network_is_no_network_exit_4(home, monkeypatch, cached, flags, said):
    """With no network, huggingface_hub gives back the snapshot cached for `main` as it is: one cached in part was
    said to lack files as if the Hub had none (exit 1), and --force-download fetched nothing again, saying
    "complete" (exit 0). Both are the Hub out of reach: exit 4, one line naming the repository and what to do."""
    monkeypatch.setitem(PRESETS, "mome-1b", dataclasses.replace(PRESETS["mome-1b"], audio=None, video=None, face=()))
    folder = make_snapshot(home, "meta-llama/Llama-3.2-1B", lambda f: [(f / name).write_text("{}") for name in cached])

    def no_network(*args, **kwargs):
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(httpx.Client, "send", no_network)  # huggingface_hub's own snapshot_download runs
    result = invoke("download", "mome-1b", *flags)
    assert result.exit_code == ExitCode.MISSING, explain(result)
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"mome download: meta-llama/Llama-3.2-1B (main): {said}: no network: cannot reach the "
                            "Hugging Face Hub for meta-llama/Llama-3.2-1B (ConnectError"), explain(result)
    assert "accept its licence at https://huggingface.co/meta-llama/Llama-3.2-1B" in error, explain(result)
    assert len(result.stderr.strip().splitlines()) == 2 and sorted(p.name for p in folder.iterdir()) == \
        sorted(cached), explain(result)  # "fetching", then the error; the cache as it was


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "--offline"])
def test_offline_with_nothing_cached_exits_4(home, how, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("offline must not try the network")

    monkeypatch.setattr(httpx.Client, "send", no_network)
    args, env = (["download", "mome-1b"], {"HF_HUB_OFFLINE": "1"}) if how == "HF_HUB_OFFLINE" else (
        ["download", "--offline", "mome-1b"], None)
    result = invoke(*args, env=env)
    assert result.exit_code == ExitCode.MISSING, explain(result)
    assert "offline" in result.stderr and "`mome download mome-1b` when online" in result.stderr, explain(result)
    assert "meta-llama/Llama-3.2-1B" in result.stderr and "large_vox_iter5.pt" in result.stderr, explain(result)


def hub_fails_with(monkeypatch, error: Exception) -> list[str]:
    """Make huggingface_hub.snapshot_download raise error for downloads (nothing is cached); return repos asked."""
    asked = []

    def snapshot_download(repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            raise errors.LocalEntryNotFoundError("not in the cache")
        asked.append(repo_id)
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return asked


def hub_response(status: int, repo_id: str = "meta-llama/Llama-3.2-1B") -> httpx.Response:
    request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}/revision/main")
    return httpx.Response(status, request=request)


def test_gated_repo_exits_4_with_licence_and_token(home, monkeypatch):
    gated = errors.GatedRepoError("403 Client Error: cannot access gated repo", response=hub_response(403))
    asked = hub_fails_with(monkeypatch, gated)
    result = invoke("download", "mome-1b")
    assert result.exit_code == ExitCode.MISSING and asked == ["meta-llama/Llama-3.2-1B"], explain(result)
    assert "meta-llama/Llama-3.2-1B is gated" in result.stderr, explain(result)
    assert "https://huggingface.co/meta-llama/Llama-3.2-1B" in result.stderr, explain(result)
    assert "HF_TOKEN" in result.stderr and "--token" in result.stderr, explain(result)
    assert "Traceback" not in result.stderr, explain(result)


def test_offline_with_another_cache_dir_names_the_download_into_it(home, tmp_path):
    """The fix of `mome download demo --cache-dir DIR --offline` was `mome download demo`: into $MOME_HOME, not DIR."""
    other = tmp_path / "other"
    result = invoke("download", "demo", "--offline", "--cache-dir", str(other))
    assert result.exit_code == ExitCode.MISSING, explain(result)
    assert f"run `mome download demo --cache-dir {other}` when online" in result.stderr, explain(result)
    result = invoke("download", "demo", "--offline", "--cache-dir", str(home))
    assert "run `mome download demo` when online" in result.stderr, explain(result)


@pytest.mark.parametrize("error, code, message", [
    (errors.RepositoryNotFoundError("404", response=hub_response(404)), ExitCode.MISSING,
     "meta-llama/Llama-3.2-1B: repository not found"),
    (errors.RevisionNotFoundError("404", response=hub_response(404)), ExitCode.MISSING,
     "meta-llama/Llama-3.2-1B: revision 'main' not found"),
    (errors.HfHubHTTPError("401", response=hub_response(401)), ExitCode.MISSING, "is gated (HTTP 401): accept"),
    (errors.LocalEntryNotFoundError("cannot find"), ExitCode.MISSING, "no network: cannot reach the Hugging Face Hub"),
    (httpx.ConnectError("Name or service not known"), ExitCode.MISSING, "no network"),
    (OSError(errno.ENOSPC, "No space left on device"), ExitCode.FAILURE, "no space left to write "),
    (PermissionError(errno.EACCES, "Permission denied", "/cache/hub/models--meta-llama--Llama-3.2-1B"),
     ExitCode.FAILURE, "cannot write to /cache/hub/models--meta-llama--Llama-3.2-1B: Permission denied"),
], ids=["repo-not-found", "revision-not-found", "401", "hub-unreachable", "connect-error", "disk-full",
        "permission"])
def test_hub_errors_become_one_line_and_an_exit_code(home, monkeypatch, error, code, message):
    hub_fails_with(monkeypatch, error)
    result = invoke("download", "mome-1b")
    assert result.exit_code == code, explain(result)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 2, explain(result)  # + "fetching"
    assert "Traceback" not in result.stderr, explain(result)


def caused_by(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("error, code, message", [
    # huggingface_hub falls back on the cache when the Hub answers an error, and says the entry is not there
    (caused_by(errors.LocalEntryNotFoundError("cannot find"), errors.HfHubHTTPError(
        "Server error '500 Internal Server Error' for url 'x'\nFor more information check: y",
        response=hub_response(500))), ExitCode.FAILURE,
     "meta-llama/Llama-3.2-1B: the Hugging Face Hub answered HTTP 500 Internal Server Error; try again later"),
    (errors.LocalEntryNotFoundError("cannot find"), ExitCode.MISSING,
     "; it is gated: accept its licence at https://huggingface.co/meta-llama/Llama-3.2-1B and set HF_TOKEN"),
    (errors.RemoteEntryNotFoundError("404 entry", response=hub_response(404)), ExitCode.FAILURE,
     "meta-llama/Llama-3.2-1B: the Hugging Face Hub answered HTTP 404 Not Found"),  # a file, not the repository
], ids=["server-error", "offline-gated", "file-not-found"])
def test_what_the_hub_answered_is_told_from_no_network(home, monkeypatch, error, code, message):
    """A Hub that answered HTTP 500 was said to be "no network", with huggingface_hub's "\\nFor more information"
    in the line; offline, a gated repo's message did not say it needs a licence and a token."""
    hub_fails_with(monkeypatch, error)
    result = invoke("download", "mome-1b")
    assert result.exit_code == code and message in result.stderr, explain(result)
    assert "no network" not in result.stderr or code == ExitCode.MISSING, explain(result)
    assert "\\n" not in result.stderr and len(result.stderr.strip().splitlines()) == 2, explain(result)


@pytest.mark.parametrize("how", ["HF_TOKEN", "--token"])
def test_no_network_with_a_token_does_not_ask_for_one(home, monkeypatch, how):
    """With no network, a gated repository's download said "set HF_TOKEN (or pass --token)" to one who had."""
    hub_fails_with(monkeypatch, httpx.ConnectError("Name or service not known"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: os.environ.get("HF_TOKEN"))  # no stored login either
    args, env = (("download", "mome-1b"), {"HF_TOKEN": "hf_xxx"}) if how == "HF_TOKEN" else (
        ("download", "mome-1b", "--token", "hf_xxx"), None)
    result = invoke(*args, env=env)
    assert result.exit_code == ExitCode.MISSING, explain(result)
    assert result.stderr.strip().splitlines()[-1].endswith(
        "; it is gated: accept its licence at https://huggingface.co/meta-llama/Llama-3.2-1B with the account of the "
        "token sent"), explain(result)
    without = invoke("download", "mome-1b")
    assert without.stderr.strip().endswith("and set HF_TOKEN (or pass --token)"), explain(without)


def test_access_denied_with_a_token_says_that_its_account_lacks_the_licence(home, monkeypatch):
    hub_fails_with(monkeypatch, errors.GatedRepoError("403 gated", response=hub_response(403)))
    monkeypatch.setenv("HF_TOKEN", "hf_xxx")
    result = invoke("download", "mome-1b")
    assert result.exit_code == ExitCode.MISSING, explain(result)
    assert "the token sent (--token, HF_TOKEN or `hf auth login`) is not of an account that has accepted it" in \
        result.stderr and "set HF_TOKEN" not in result.stderr, explain(result)


def test_disk_full_while_streaming_names_the_file(server, home, monkeypatch):
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, DATA_SHA256)))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(downloads, "_stream_to", full)  # fetch_url streams through downloads._stream_to
    result = invoke("-q", "download", "mome-1b")
    assert result.exit_code == ExitCode.FAILURE, explain(result)
    assert result.stderr == f"mome download: no space left to write {home}/avhubert/weights.bin.part: free some " \
                            "space or choose another place with --cache-dir or MOME_HOME\n", explain(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_cache_dir_exits_1(server, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, DATA_SHA256)))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = invoke("download", "--cache-dir", str(locked), "mome-1b")
    assert result.exit_code == ExitCode.FAILURE, explain(result)
    assert f"cannot write to {locked}/avhubert: Permission denied" in result.stderr, explain(result)


def test_cache_dir_without_write_permission_exits_1(server, home, monkeypatch):
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, DATA_SHA256)))
    monkeypatch.setattr(hub.os, "access", lambda path, mode: False)  # as a read-only folder looks to a non-root user
    result = invoke("download", "mome-1b")
    assert result.exit_code == ExitCode.FAILURE, explain(result)
    assert f"cannot write to {home}/avhubert: permission denied" in result.stderr, explain(result)
    assert not server.requests and "Traceback" not in result.stderr, explain(result)


def test_cache_dir_that_cannot_be_created_exits_1(server, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, DATA_SHA256)))
    (tmp_path / "a-file").write_text("in the way")
    result = invoke("download", "--cache-dir", str(tmp_path / "a-file" / "cache"), "mome-1b")
    assert result.exit_code == ExitCode.FAILURE, explain(result)
    assert f"cannot create {tmp_path}/a-file/cache/avhubert: Not a directory" in result.stderr, explain(result)
    assert "Traceback" not in result.stderr, explain(result)


def test_progress_bar_on_a_terminal(server, tmp_path):
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    hub.fetch_url(server.url("weights.bin"), tmp_path / "weights.bin", DATA_SHA256,
                  console=Console(file=out, force_terminal=True, width=100))
    assert "weights.bin" in out.getvalue() and "300.0" in out.getvalue()


def test_cache_dir_overrides_mome_home(server, home, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, DATA_SHA256)))
    result = invoke("download", "--cache-dir", str(tmp_path / "other"), "mome-1b")
    assert result.exit_code == 0, explain(result)
    assert (tmp_path / "other" / "avhubert" / "weights.bin").is_file() and not home.exists()


def test_a_download_into_another_cache_dir_says_how_the_other_commands_use_it(server, home, tmp_path, monkeypatch):
    """`mome download X --cache-dir DIR` said "complete in DIR", and transcribe then said X was not in the cache: it
    reads $MOME_HOME. The download says so, and how to point it there; not where DIR is $MOME_HOME."""
    monkeypatch.setitem(PRESETS, "mome-1b", file_preset(remote(server, DATA_SHA256)))
    other = tmp_path / "other"
    result = invoke("download", "--cache-dir", str(other), "mome-1b")
    assert result.exit_code == 0, explain(result)
    assert result.stderr.splitlines()[-1] == (f"transcribe, evaluate and train read the cache in $MOME_HOME ({home}): "
                                              f"run them with MOME_HOME={other} to use this one"), explain(result)
    same = invoke("download", "--cache-dir", str(home), "mome-1b")
    assert same.exit_code == 0 and "MOME_HOME" not in same.stderr, explain(same)
    assert invoke("-q", "download", "--cache-dir", str(other), "mome-1b").stderr == ""


@pytest.mark.parametrize("args, message", [
    ([], "name a preset to download"),
    (["mome-2b"], "unknown preset 'mome-2b'; known presets: tiny, demo, mome-1b, mome-3b, mome-8b"),
    (["tiny", "nope"], "unknown preset 'nope'"),
])
def test_download_usage_errors_exit_2(home, args, message):
    result = invoke("download", *args)
    assert result.exit_code == ExitCode.USAGE and message in result.stderr, explain(result)


def test_download_help_names_every_preset():
    result = invoke("download", "--help")
    assert result.exit_code == 0, explain(result)
    for name in PRESETS:
        assert name in result.stdout, explain(result)
    for option in ("--list", "--cache-dir", "--revision", "--token", "--offline"):
        assert option in result.stdout, explain(result)


@pytest.mark.parametrize("name", ["demo", "tiny"])
def test_demo_and_tiny_download_only_face_alignment_and_are_ready_without_it(server, home, monkeypatch, name):
    face = remote(server, DATA_SHA256[:10], filename="s3fd-0123.pth", folder="torch/hub/checkpoints")
    monkeypatch.setitem(PRESETS, name, dataclasses.replace(PRESETS[name], face=(face,)))
    result = invoke("download", "--list", name)
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name))
    assert re.search(rf"{name} +ready: .*not mouth crops .*missing face-alignment weights \(1 of 1 files\): run "
                     rf"`mome download {name}`", line), explain(result)
    result = invoke("download", name)
    assert result.exit_code == 0 and result.stdout == "", explain(result)
    assert (home / "torch" / "hub" / "checkpoints" / "s3fd-0123.pth").read_bytes() == DATA
    assert [p.name for p in home.iterdir()] == ["torch"], explain(result)  # the model itself is not downloaded
    result = invoke("download", "--list", name)
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name))
    assert "ready" in line and "missing" not in line, explain(result)
    result = invoke("-q", "download", name)
    assert result.exit_code == 0 and result.stderr == "", explain(result)


@pytest.mark.parametrize("where", ["cache", "TORCH_HOME"])
def test_list_says_the_default_detectors_weights_read_videos_that_are_not_mouth_crops(home, tmp_path, monkeypatch,
                                                                                       where):
    """With the sfd detector's two files (all that `mome transcribe` without --roi needs: sfd is the default), in the
    cache or in the user's $TORCH_HOME, `--list` said demo was missing face-alignment weights (4 of 6 files) for videos
    that are not mouth crops."""
    folder = (home / "torch" if where == "cache" else tmp_path / "torch-home") / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    if where == "TORCH_HOME":
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def state() -> str:
        result = invoke("download", "--list", "demo")
        return next(line for line in result.stdout.splitlines() if line.strip().startswith("demo")).split(None, 1)[1]

    ready = "ready: ships inside the package (mome_cli/models/demo)"
    for name in hub.FACE_ALIGNMENT_NEEDS["sfd"]:
        (folder / name).write_bytes(b"x")
    assert state() == f"{ready}; --detector blazeface lacks its face-alignment weights: run `mome download demo`"
    for name in hub.FACE_ALIGNMENT_NEEDS["blazeface"]:
        (folder / name).write_bytes(b"x")
    assert state() == ready
    (folder / "s3fd-619a316812.pth").unlink()
    assert re.fullmatch(rf"{re.escape(ready)}; for videos that are not mouth crops \(no --roi\), missing "
                        r"face-alignment weights \(\d of 4 files\): run `mome download demo`; --detector blazeface "
                        r"has its weights", state())


def test_revision_for_presets_without_an_llm_is_said_unused_and_not_named_in_the_fix(home):
    """`mome download demo --revision X` took X without a word (demo fetches no LLM) and offline named
    `mome download demo --revision X` as the fix."""
    result = invoke("download", "demo", "--revision", "abc", "--offline")
    assert result.exit_code == ExitCode.MISSING, explain(result)
    assert result.stderr.splitlines()[0] == ("warning: --revision is the LLM's (and adapter's): demo fetches neither, "
                                             "so it is not used"), explain(result)
    assert "run `mome download demo` when online" in result.stderr, explain(result)
    pinned = invoke("download", "mome-1b", "--revision", "abc", "--offline")
    assert "warning" not in pinned.stderr and "`mome download mome-1b --revision abc`" in pinned.stderr, \
        explain(pinned)


# --- resolution: the presets' own loading path ------------------------------------------------------------------------


def test_resolve_preset_finds_a_hub_cache_offline_and_transformers_loads_it(home, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mome_cli.llm import build_tiny_llm

    model, tokenizer = build_tiny_llm("tiny")

    def save(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    llm_folder = make_snapshot(home, "meta-llama/Llama-3.2-1B", save)
    whisper_folder = make_snapshot(home, "openai/whisper-medium.en", fake_repo)
    fill_files(home, [AVHUBERT_LARGE, *FACE_ALIGNMENT_FILES])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    resolved = hub.resolve_preset("mome-1b")
    assert resolved.llm == llm_folder and resolved.audio == whisper_folder
    assert resolved.video == home / "avhubert" / "large_vox_iter5.pt"
    assert resolved.face_alignment == home / "torch" / "hub" / "checkpoints" and resolved.adapter is None
    loaded = AutoModelForCausalLM.from_pretrained(resolved.llm)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert AutoTokenizer.from_pretrained(resolved.llm)("hi").input_ids == tokenizer("hi").input_ids
    result = invoke("download", "mome-1b")  # offline and complete: nothing to do
    assert result.exit_code == 0 and "mome-1b: complete" in result.stderr, explain(result)

    with pytest.raises(MissingModelError, match=r"mome download mome-1b --revision v2"):
        hub.resolve_preset("mome-1b", revision="v2")  # no refs/v2 in the cache
    (home / "avhubert" / "large_vox_iter5.pt").unlink()
    with pytest.raises(MissingModelError, match=r"mome-1b needs large_vox_iter5.pt, .*run `mome download mome-1b`"):
        hub.resolve_preset("mome-1b")


def test_resolve_preset_rejects_an_incomplete_snapshot(home):
    make_snapshot(home, "meta-llama/Llama-3.2-3B", lambda folder: (folder / "config.json").write_text("{}"))
    assert hub.locate(PRESETS["mome-3b"].llm, home) is None
    with pytest.raises(MissingModelError, match="meta-llama/Llama-3.2-3B") as caught:
        hub.resolve_preset("mome-3b")
    assert caught.value.exit_code == ExitCode.MISSING and "HF_TOKEN" in str(caught.value)


def test_local_and_bundled_presets_resolve_to_face_alignment_only(home):
    for name in ("tiny", "demo"):
        with pytest.raises(MissingModelError, match=rf"{name} needs face-alignment weights .*`mome download {name}`"):
            hub.resolve_preset(name)
    fill_files(home, FACE_ALIGNMENT_FILES)
    for name in ("tiny", "demo"):
        resolved = hub.resolve_preset(name)
        assert resolved.llm is resolved.audio is resolved.video is None
        assert resolved.face_alignment == home / "torch" / "hub" / "checkpoints"
