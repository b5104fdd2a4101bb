"""Model registry, cache and downloads: what each preset needs, where it lives on disk, and how it gets there.

Cache layout under `mome_home()` ($MOME_HOME, else platformdirs' user data dir for "mome"):

    hub/                      huggingface_hub's cache (models--org--name/snapshots/<commit>/...), passed as cache_dir=
    avhubert/                 the AV-HuBERT checkpoint
    torch/hub/checkpoints/    face-alignment's detector and landmark weights; face-alignment looks in torch hub's
                              folder, so run it under `face_alignment_env(home)` (TORCH_HOME=<home>/torch)

Hub repositories come through `huggingface_hub.snapshot_download` (it resumes and verifies by itself). Plain URLs
come through downloads.py's `fetch_url`: streamed into `<file>.part`, resumed with an HTTP Range request, SHA-256
checked before the rename (or, where none is published, the first download's digest recorded in `<file>.sha256`), so
a final name never holds a partial or wrong file; processes sharing the cache take turns with each file (a lock on a
hidden `.<file>.lock` beside it), so two `mome download`s never write one `.part`.

Errors (defined in downloads.py, re-exported here) carry the exit code of the contract (report.ExitCode): MISSING (4)
when something needed is not in the cache and cannot be fetched now (offline, gated, not found, no network), FAILURE
(1) for a checksum mismatch or a cache that cannot be written. Torch-free, and huggingface_hub, httpx and rich are
imported where they are used, so the CLI can import this module cheaply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .downloads import (PART_SUFFIX, SHA256_SUFFIX, CacheWriteError, ChecksumError, HubError, MissingModelError,
                        UnusableModelError, download_lock, ensure_writable, fetch_url, no_network_error,
                        recorded_sha256, reraise_os_error, sha256_of, verify_file)
from .outputs import counted

HUB_DIR = "hub"  # huggingface_hub cache_dir, relative to the mome home
AVHUBERT_DIR = "avhubert"
TORCH_DIR = "torch"  # TORCH_HOME while face-alignment runs
FACE_ALIGNMENT_DIR = "torch/hub/checkpoints"  # = $TORCH_HOME/hub/checkpoints, where torch.hub stores downloads
OFFLINE_ENV = "HF_HUB_OFFLINE"


# ---------------------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class HubRepo:
    """A repository on the Hugging Face Hub, fetched into <home>/hub."""

    repo_id: str  # "org/name"
    revision: str = "main"  # branch, tag or commit
    allow_patterns: tuple[str, ...] = ()  # only files matching these are fetched (fnmatch, as huggingface_hub does)
    ignore_patterns: tuple[str, ...] = ()  # and none matching these
    gated: bool = False  # a download needs an accepted licence and a token
    licence_url: str | None = None  # the page where the licence is read (and, for gated repos, accepted)
    # Files loading it reads, beside its safetensors weights: a cached snapshot without one of them is incomplete
    # (huggingface_hub's own cache check counts any snapshot folder as there).
    needs: tuple[str, ...] = ("config.json",)

    @property
    def label(self) -> str:
        return f"{self.repo_id} ({self.revision})"


@dataclass(frozen=True)
class RemoteFile:
    """A single file at a plain URL, stored as <home>/<folder>/<filename>."""

    label: str  # what it is, for messages
    url: str
    folder: str  # relative to the mome home
    filename: str  # the name its user expects in that folder
    # Full hex SHA-256, or a prefix of it (torch hub's convention: name-<first hex digits of the SHA-256>.ext).
    # None: nobody publishes one; the digest of the first download is recorded beside the file instead.
    sha256: str | None = None
    size: int | None = None  # bytes, where known
    licence_url: str | None = None

    def path(self, home: Path) -> Path:
        return Path(home) / self.folder / self.filename


# Only what transformers needs to build the model and its tokenizer: configs, tokenizer files and safetensors weights
# (no pytorch_model.bin, TF or Flax copies, no Meta-format original/*.pth).
WHISPER_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "*.safetensors",
                 "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                 "merges.txt", "normalizer.json", "added_tokens.json", "special_tokens_map.json")
LLAMA_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

WHISPER_MEDIUM_EN = HubRepo("openai/whisper-medium.en", allow_patterns=WHISPER_FILES, ignore_patterns=("original/*",),
                            licence_url="https://huggingface.co/openai/whisper-medium.en",
                            needs=("config.json", "preprocessor_config.json"))  # the encoder and its features


def _llama(repo_id: str) -> HubRepo:
    # its tokenizer too: tokenizer.json, and tokenizer_config.json, which names the BOS and EOS tokens
    return HubRepo(repo_id, allow_patterns=LLAMA_FILES, ignore_patterns=("original/*",), gated=True,
                   licence_url=f"https://huggingface.co/{repo_id}",
                   needs=("config.json", "tokenizer.json", "tokenizer_config.json"))


# The authors' model zoo (https://facebookresearch.github.io/av_hubert/): AV-HuBERT Large, pretrained on
# LRS3 + VoxCeleb2 (En), no fine-tuning. Non-commercial research licence.
AVHUBERT_LARGE = RemoteFile(
    label="AV-HuBERT Large (LRS3 + VoxCeleb2, self-supervised)",
    url="https://dl.fbaipublicfiles.com/avhubert/model/lrs3_vox/clean-pretrain/large_vox_iter5.pt",
    folder=AVHUBERT_DIR,
    filename="large_vox_iter5.pt",
    sha256=None,  # no checksum published: the first download's digest is recorded in large_vox_iter5.pt.sha256
    licence_url="https://github.com/facebookresearch/av_hubert/blob/main/LICENSE",
)

# face-alignment 1.5.0's weights, at the URLs its source names (detection/sfd, detection/blazeface, api.py) and under
# the names it looks for in $TORCH_HOME/hub/checkpoints (the basename of the URL's path). The s3fd and 2DFAN-4 names
# carry the first 10 hex digits of their SHA-256; BlazeFace's carry none.
_FA = "https://www.adrianbulat.com/downloads/python-fan"
_BLAZEFACE = "https://github.com/hollance/BlazeFace-PyTorch/blob/master"
FACE_ALIGNMENT_FILES = (
    RemoteFile("face-alignment s3fd face detector", f"{_FA}/s3fd-619a316812.pth", FACE_ALIGNMENT_DIR,
               "s3fd-619a316812.pth", sha256="619a316812"),
    RemoteFile("face-alignment BlazeFace detector", f"{_BLAZEFACE}/blazeface.pth?raw=true", FACE_ALIGNMENT_DIR,
               "blazeface.pth"),
    RemoteFile("face-alignment BlazeFace anchors", f"{_BLAZEFACE}/anchors.npy?raw=true", FACE_ALIGNMENT_DIR,
               "anchors.npy"),
    RemoteFile("face-alignment 2DFAN-4 landmarks", f"{_FA}/2DFAN4-11f355bf06.pth.tar", FACE_ALIGNMENT_DIR,
               "2DFAN4-11f355bf06.pth.tar", sha256="11f355bf06"),
)

# The files face-alignment 1.5.0 loads from $TORCH_HOME/hub/checkpoints for each detector (of FACE_ALIGNMENT_FILES).
FACE_ALIGNMENT_NEEDS = {
    "sfd": ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar"),
    "blazeface": ("blazeface.pth", "anchors.npy", "2DFAN4-11f355bf06.pth.tar"),
}


@dataclass(frozen=True)
class Preset:
    """A named model: the backbones it is built on and where they come from."""

    name: str
    summary: str
    source: str = "hub"  # "hub": fetched into the cache; "local": built from configs; "bundled": ships in the package
    llm: HubRepo | None = None
    audio: HubRepo | None = None  # the Whisper encoder
    video: RemoteFile | None = None  # the AV-HuBERT checkpoint
    face: tuple[RemoteFile, ...] = ()  # face-alignment's detector and landmark weights
    # No MoME adapter is published yet: presets take one from `--adapter DIR` at run time. One published later goes
    # here and is fetched with the backbones.
    adapter: HubRepo | None = None
    note: str = ""

    def __post_init__(self):
        if self.source not in ("hub", "local", "bundled"):
            raise ValueError(f"preset {self.name}: source {self.source!r} is not one of hub, local, bundled")

    def items(self) -> list[tuple[str, HubRepo | RemoteFile]]:
        """(role, item) of everything to fetch; the gated LLM first, so a missing licence shows before big downloads."""
        roles = [("llm", self.llm), ("adapter", self.adapter), ("audio", self.audio), ("video", self.video)]
        return [(role, item) for role, item in roles if item is not None] + [("face", f) for f in self.face]

    def with_revision(self, revision: str | None) -> Preset:
        """The preset with its LLM (and adapter) at another revision."""
        if revision is None:
            return self
        change = {k: dataclasses.replace(getattr(self, k), revision=revision)
                  for k in ("llm", "adapter") if getattr(self, k) is not None}
        return dataclasses.replace(self, **change)


def _mome(name: str, llm: str) -> Preset:
    return Preset(name, f"Whisper-medium.en + AV-HuBERT Large + {llm.split('/')[1]}", llm=_llama(llm),
                  audio=WHISPER_MEDIUM_EN, video=AVHUBERT_LARGE, face=FACE_ALIGNMENT_FILES,
                  note="MoME adapter: give a trained one with --adapter DIR")


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        Preset("tiny", "random tiny backbones built locally from configs, for tests and smoke runs", source="local",
               face=FACE_ALIGNMENT_FILES, note="built locally; output is meaningless until trained"),
        Preset("demo", "small model trained on the project's synthetic corpus", source="bundled",
               face=FACE_ALIGNMENT_FILES, note="ships inside the package (mome_cli/models/demo)"),
        _mome("mome-1b", "meta-llama/Llama-3.2-1B"),
        _mome("mome-3b", "meta-llama/Llama-3.2-3B"),
        _mome("mome-8b", "meta-llama/Llama-3.1-8B"),
    )
}


def get_preset(preset: str | Preset, revision: str | None = None) -> Preset:
    """The preset named (or given), at another LLM revision if asked; ValueError for an unknown name."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    return preset.with_revision(revision)


# ---------------------------------------------------------------------------------------------------------------------
# Cache locations


def mome_home() -> Path:
    """$MOME_HOME, else the platform's user data folder for "mome" (e.g. ~/.local/share/mome)."""
    if os.environ.get("MOME_HOME"):
        return Path(os.environ["MOME_HOME"]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("mome"))


def hub_cache_dir(home: Path | None = None) -> Path:
    return Path(home or mome_home()) / HUB_DIR


def torch_home(home: Path | None = None) -> Path:
    return Path(home or mome_home()) / TORCH_DIR


def face_alignment_dir(home: Path | None = None) -> Path:
    return Path(home or mome_home()) / FACE_ALIGNMENT_DIR


def hub_checkpoints(torch_home_dir) -> Path:
    """Where torch.hub, and so face-alignment, keeps downloaded weights under a TORCH_HOME."""
    return Path(torch_home_dir) / "hub" / "checkpoints"


@contextlib.contextmanager
def face_alignment_env(home: Path | None = None) -> Iterator[Path]:
    """Run face-alignment inside this: TORCH_HOME points at <home>/torch, where its weights are cached."""
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home(home))
    try:
        yield torch_home(home)
    finally:
        if previous is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = previous


def face_alignment_lacks(detector: str, torch_home_dir) -> list[str]:
    """The files of detector's set (FACE_ALIGNMENT_NEEDS) that a TORCH_HOME's hub/checkpoints lacks."""
    return [name for name in FACE_ALIGNMENT_NEEDS[detector] if not (hub_checkpoints(torch_home_dir) / name).is_file()]


def face_alignment_home(detector: str, home: Path | None = None) -> Path | None:
    """The TORCH_HOME that face-alignment's detector runs from: the user's own $TORCH_HOME if it holds the detector's
    whole set (where face-alignment keeps what it downloads itself), else mome's cache if it does, else None."""
    user_home = os.environ.get("TORCH_HOME")
    homes = ([Path(user_home)] if user_home else []) + [torch_home(home)]
    return next((h for h in homes if not face_alignment_lacks(detector, h)), None)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network (read now, not when huggingface_hub was imported)."""
    return os.environ.get(OFFLINE_ENV, "").strip().upper() in ("1", "ON", "YES", "TRUE")


# ---------------------------------------------------------------------------------------------------------------------
# Fetching: plain files through downloads.fetch_url, Hub repositories through huggingface_hub


def users_copies(items, home: Path) -> dict[RemoteFile, Path]:
    """face-alignment's files among items, in the user's own torch hub folder ($TORCH_HOME/hub/checkpoints, where
    face-alignment keeps what it downloads itself), if it holds every one of them: then mome uses that folder rather
    than its cache, as preprocessing does (one folder must hold a detector's whole set). Otherwise none."""
    user_home = os.environ.get("TORCH_HOME")
    face = [item for item in items if isinstance(item, RemoteFile) and item.folder == FACE_ALIGNMENT_DIR]
    if not user_home or not face:
        return {}
    folder = hub_checkpoints(user_home)
    if folder == face_alignment_dir(home) or not all((folder / item.filename).is_file() for item in face):
        return {}
    return {item: folder / item.filename for item in face}


def check_users_copy(item: RemoteFile, path: Path, preset: str | None = None) -> None:
    """A user's copy of a face-alignment file against its published checksum (where there is one; nothing is written
    beside it): ChecksumError, saying what to do, if it does not match."""
    if not item.sha256:
        return
    try:
        verify_file(item, path)
    except ChecksumError as e:
        e.args = (f"{path}: checksum mismatch ({e.expected_and_got}); mome uses $TORCH_HOME's "
                  f"copy first: delete it, or unset TORCH_HOME, and run `mome download {preset or 'PRESET'}` again",)
        raise


def fetch_file(item: RemoteFile, home: Path, *, console=None, log: Callable[[str], None] = lambda m: None,
               client=None, force: bool = False) -> Path:
    """Make sure item is in the cache and checks out; download it (resuming) if not, or if force. Return its path.

    Processes sharing the cache take turns (downloads.download_lock): one that waited while another downloaded item
    finds the file there, checks it, and is done. A file that checks out is used without the lock, which a
    read-only cache could not hold: a finished file is only ever replaced by a rename, never written in place.

    A cached file that fails its checksum stays until a download that checks out is renamed over it: offline, or in
    a cache that cannot be written, the HubError that says why names that file too.
    """
    path = item.path(home)
    seen = _identity(path)
    mismatch = _mismatch(item, path, log) if seen is not None and not force else None
    if seen is not None and mismatch is None and not force:
        return path
    try:
        ensure_writable(path.parent)
        with download_lock(path, log):
            now = _identity(path)
            if now is not None and now != seen and not force:  # another process fetched it meanwhile
                if (mismatch := _mismatch(item, path, log)) is None:
                    return path
            log(f"fetching {item.label}: {item.url}")
            if item.licence_url:
                log(f"  licence: {item.licence_url}")
            fetch_url(item.url, path, item.sha256, item.size, console=console, client=client, log=log)
    except HubError as e:
        if mismatch is not None:
            e.args = (f"{path}: checksum mismatch ({mismatch.expected_and_got}); kept as it is, since it cannot be "
                      f"downloaded again: {e}",)
        raise
    return path


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the file at path, or None: whether another process has put a file there since."""
    try:
        stat = path.stat()
    except OSError:  # not there, or a folder on the way that is not one: ensure_writable says which
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _mismatch(item: RemoteFile, path: Path, log: Callable[[str], None]) -> ChecksumError | None:
    """None if the cached file at path checks out, else the ChecksumError that says how it does not."""
    log(f"verifying {path}")
    try:
        verify_file(item, path)
    except ChecksumError as e:
        log(f"{e}; downloading it again")
        return e
    return None


@contextlib.contextmanager
def _hub_errors(repo: HubRepo, home: Path, token_given: bool = False) -> Iterator[None]:
    """Turn huggingface_hub's errors while fetching repo into HubErrors that say what to do. token_given: a token was
    sent (--token, HF_TOKEN or a stored login), so access denied means its account lacks the licence."""
    import httpx
    from huggingface_hub import errors

    try:
        yield
    except errors.RevisionNotFoundError as e:
        raise MissingModelError(f"{repo.repo_id}: revision {repo.revision!r} not found on the Hub; "
                                "check --revision") from e
    except errors.LocalEntryNotFoundError as e:  # nothing cached, and the Hub was not reached or answered an error
        cause = e.__cause__
        if isinstance(cause, errors.HfHubHTTPError) and cause.response is not None:
            raise _answered(repo, cause, token_given) from e
        raise no_network_error(f"the Hugging Face Hub for {repo.repo_id}", cause or e, home,
                               _gated_hint(repo, token_given)) from e
    except errors.HfHubHTTPError as e:  # GatedRepoError and RepositoryNotFoundError too
        raise _answered(repo, e, token_given) from e
    except httpx.TransportError as e:
        raise no_network_error(f"the Hugging Face Hub for {repo.repo_id}", e, home,
                               _gated_hint(repo, token_given)) from e
    except OSError as e:
        reraise_os_error(e, hub_cache_dir(home))


def _gated_hint(repo: HubRepo, token_given: bool = False) -> str:
    if not repo.gated:
        return ""
    token = "with the account of the token sent" if token_given else "and set HF_TOKEN (or pass --token)"
    return f"; it is gated: accept its licence at {repo.licence_url} {token}"


def _answered(repo: HubRepo, e, token_given: bool) -> HubError:
    """The HubError for an error answer from the Hub (e: huggingface_hub's HfHubHTTPError or a subclass)."""
    from huggingface_hub import errors

    status = e.response.status_code if e.response is not None else None
    if token_given:
        token_fix = ("the token sent (--token, HF_TOKEN or `hf auth login`) is not of an account that has accepted it, "
                     "or has no read access")
    else:
        token_fix = "set HF_TOKEN (or pass --token) to a token of an account that has accepted it"
    if isinstance(e, errors.GatedRepoError) or (status in (401, 403) and repo.gated):
        return MissingModelError(f"{repo.repo_id} is gated (HTTP {status}): accept its licence at {repo.licence_url} "
                                 f"and {token_fix}")
    if isinstance(e, errors.RepositoryNotFoundError):
        return MissingModelError(f"{repo.repo_id}: repository not found on the Hub (if it is private, set HF_TOKEN "
                                 "or pass --token)")
    if status in (401, 403):
        return MissingModelError(f"{repo.repo_id}: access denied (HTTP {status}); {token_fix}")
    reason = e.response.reason_phrase if e.response is not None else str(e).splitlines()[0]
    later = "; try again later" if status is not None and status >= 500 else ""
    return HubError(f"{repo.repo_id}: the Hugging Face Hub answered HTTP {status} {reason}{later}")


def fetch_repo(repo: HubRepo, home: Path, *, token: str | None = None, console=None,
               log: Callable[[str], None] = lambda m: None, force: bool = False) -> Path:
    """Fetch a Hub repository's needed files into <home>/hub (resumed and verified by huggingface_hub); with force,
    each of them again, cached or not (huggingface_hub keeps a cached blob as it is, damaged or not)."""
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    ensure_writable(hub_cache_dir(home))
    log(f"fetching {repo.label} from the Hugging Face Hub")
    bars_were_off = are_progress_bars_disabled()
    if console is None:
        disable_progress_bars()
    token_given = bool(token or huggingface_hub.get_token())
    try:
        with _hub_errors(repo, home, token_given):
            folder = huggingface_hub.snapshot_download(
                repo.repo_id, revision=repo.revision, cache_dir=hub_cache_dir(home), token=token,
                allow_patterns=list(repo.allow_patterns) or None, ignore_patterns=list(repo.ignore_patterns) or None,
                force_download=force,
            )
    finally:
        if console is None and not bars_were_off:
            enable_progress_bars()
    lacks = _snapshot_lacks(Path(folder), repo.needs)
    if lacks or force:
        # Where it cannot ask the Hub which commit the revision is at (no network, an error answer), huggingface_hub
        # gives back the snapshot cached for it as it is, in part or fetched nothing again: asked here, the Hub's
        # error is said (exit 4: no network), not a snapshot that the Hub would lack files of, or "complete".
        try:
            with _hub_errors(repo, home, token_given):
                huggingface_hub.HfApi().repo_info(repo.repo_id, revision=repo.revision, token=token)
        except HubError as e:
            what = f"the cached snapshot lacks {', '.join(lacks)}" if lacks else "--force-download fetched nothing"
            e.args = (f"{repo.label}: {what}: {e}",)
            raise
    if lacks:
        raise HubError(f"{repo.label}: the snapshot in {folder} has no {', '.join(lacks)}")
    return Path(folder)


# ---------------------------------------------------------------------------------------------------------------------
# Resolution: local paths of a preset's parts, without the network


@dataclass(frozen=True)
class ResolvedPreset:
    """Local paths of everything a preset is built from (None where the preset has no such part)."""

    preset: Preset
    home: Path
    llm: Path | None = None  # snapshot folder: AutoModelForCausalLM / AutoTokenizer.from_pretrained(llm)
    audio: Path | None = None  # snapshot folder of the Whisper repo: WhisperModel / WhisperFeatureExtractor
    video: Path | None = None  # the AV-HuBERT checkpoint file (a fairseq torch pickle)
    face_alignment: Path | None = None  # folder of face-alignment's weights; run it under face_alignment_env(home)
    adapter: Path | None = None

    def face_alignment_env(self):
        return face_alignment_env(self.home)


def _snapshot_lacks(folder: Path, needs: tuple[str, ...]) -> list[str]:
    """Names of the files a snapshot folder lacks of what loading it reads: needs, and the weights (model.safetensors,
    or each shard model.safetensors.index.json names). A link whose blob is gone is lacking too (is_file follows
    links): huggingface_hub still lists the file, and every loader fails on it."""
    lacks = [name for name in needs if not (folder / name).is_file()]
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return lacks + [name for name in ("model.safetensors",) if not (folder / name).is_file()]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable: no shard is known
        return lacks + [index.name]
    return lacks + [shard for shard in shards if not (folder / shard).is_file()]


def _cached_snapshot(repo: HubRepo, home: Path) -> Path | None:
    """The cached snapshot folder of repo at its revision, complete or not; never touches the network."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        folder = huggingface_hub.snapshot_download(
            repo.repo_id, revision=repo.revision, cache_dir=hub_cache_dir(home), local_files_only=True,
            allow_patterns=list(repo.allow_patterns) or None, ignore_patterns=list(repo.ignore_patterns) or None,
        )
    except (errors.LocalEntryNotFoundError, FileNotFoundError) as e:
        # huggingface_hub >= 1.x: a snapshot its cached file listing finds incomplete (any file of the patterns, a
        # generation_config.json too) is an IncompleteSnapshotError that says where it is: what it lacks of what
        # loading reads is _snapshot_lacks' to say
        folder = getattr(e, "snapshot_path", None)
        return Path(folder) if folder else None
    return Path(folder)


def snapshot_lacks(repo: HubRepo, home: Path) -> list[str]:
    """The files repo's cached snapshot lacks (see _snapshot_lacks); none when it is complete or not cached at all."""
    folder = _cached_snapshot(repo, home)
    return [] if folder is None else _snapshot_lacks(folder, repo.needs)


def locate_repo(repo: HubRepo, home: Path) -> Path | None:
    """The cached snapshot folder of repo at its revision, if complete; never touches the network."""
    folder = _cached_snapshot(repo, home)
    return folder if folder is not None and not _snapshot_lacks(folder, repo.needs) else None


def locate(item: HubRepo | RemoteFile, home: Path, verify: bool = False,
           theirs: dict[RemoteFile, Path] | None = None) -> Path | None:
    """Where item is in the cache (or among theirs, users_copies()), or None. verify re-hashes plain files
    (ChecksumError when they do not match)."""
    if isinstance(item, HubRepo):
        return locate_repo(item, home)
    path = item.path(home)
    if not path.is_file():
        path = (theirs or {}).get(item)
        if path is None:
            return None
    if verify and path == item.path(home):
        verify_file(item, path)
    elif verify:
        check_users_copy(item, path)
    return path


def _label(item: HubRepo | RemoteFile, home: Path) -> str:
    """A short name of a missing item for messages: a Hub repository cached in part says which of its files lack."""
    if isinstance(item, RemoteFile):
        return item.filename
    lacks = snapshot_lacks(item, home)
    return f"{', '.join(lacks)} of {item.label}" if lacks else item.label


def _labels(preset: Preset, items: list[HubRepo | RemoteFile], home: Path) -> list[str]:
    """Short names of missing items for messages; face-alignment's files counted as one."""
    labels = [_label(item, home) for item in items if item not in preset.face]
    face = [item for item in items if item in preset.face]
    if face:
        labels.append(f"face-alignment weights ({len(face)} of {len(preset.face)} files)")
    return labels


def missing_items(preset: str | Preset, home: Path | None = None, revision: str | None = None) -> list[str]:
    """Short names of what preset needs and the cache lacks."""
    preset, home = get_preset(preset, revision), Path(home or mome_home())
    return _labels(preset, _find(preset, home, verify=False)[1], home)


def _find(preset: Preset, home: Path, verify: bool) -> tuple[dict[str, Path], list[HubRepo | RemoteFile]]:
    """(paths by ResolvedPreset field, items missing from the cache)."""
    paths: dict[str, Path] = {}
    missing: list[HubRepo | RemoteFile] = []
    theirs = users_copies(preset.face, home)
    for role, item in preset.items():
        path = locate(item, home, verify=verify, theirs=theirs)
        if path is None:
            missing.append(item)
        elif role == "face":
            paths["face_alignment"] = path.parent
        else:
            paths[role] = path
    return paths, missing


def _missing_message(preset: Preset, missing: list, home: Path, revision: str | None, offline: bool) -> str:
    pinned = revision and (preset.llm or preset.adapter)  # the LLM's (and adapter's), which demo and tiny have not
    fix = f"mome download {preset.name}" + (f" --revision {revision}" if pinned else "")
    if Path(home).resolve() != mome_home().resolve():  # --cache-dir: the same folder again
        fix += f" --cache-dir {home}"
    message = f"{preset.name} needs {', '.join(_labels(preset, missing, home))}, not in the cache ({home}); "
    if offline:
        message = f"offline ({OFFLINE_ENV}=1 or --offline): {message}run `{fix}` when online, or copy the cache " \
                  "folder from a machine that has it"
    else:
        message += f"run `{fix}`"
    gated = [m for m in missing if isinstance(m, HubRepo) and m.gated]
    if gated:
        message += (f" (gated: accept the licence at {', '.join(m.licence_url for m in gated)} and set HF_TOKEN "
                    "or pass --token)")
    return message


def resolve_preset(preset: str | Preset, home: Path | None = None, *, offline: bool = True,
                   revision: str | None = None, token: str | None = None, verify: bool = False,
                   console=None, log: Callable[[str], None] = lambda m: None) -> ResolvedPreset:
    """Local paths of every part of preset, or MissingModelError naming what is missing and the command that fixes it.

    offline=True never touches the network; offline=False first fetches what is missing (as `mome download` does),
    unless HF_HUB_OFFLINE is set. verify re-hashes the plain files (AV-HuBERT, face-alignment) against their
    checksums: that reads ~4 GB. Presets with source "local" or "bundled" resolve to face-alignment's folder only.
    """
    preset, home = get_preset(preset, revision), Path(home or mome_home())
    if not offline and not hub_offline():
        return download_preset(preset, home, revision=revision, token=token, console=console, log=log)
    paths, missing = _find(preset, home, verify)
    if missing:
        raise MissingModelError(_missing_message(preset, missing, home, revision, offline=hub_offline()))
    return ResolvedPreset(preset, home, **paths)


def download_preset(preset: str | Preset, home: Path | None = None, *, revision: str | None = None,
                    token: str | None = None, offline: bool | None = None, console=None,
                    log: Callable[[str], None] = lambda m: None, force: bool = False) -> ResolvedPreset:
    """Fetch what preset needs into the cache (checking what is already there; with force, everything again, but a
    user's own $TORCH_HOME copy, used as it is) and return the local paths.

    offline (None: from HF_HUB_OFFLINE) fetches nothing and raises MissingModelError if anything is missing.
    console: a rich Console (stderr) for progress bars, or None for none; log: where messages go.
    """
    preset, home = get_preset(preset, revision), Path(home or mome_home())
    if offline or (offline is None and hub_offline()):
        paths, missing = _find(preset, home, verify=False)
        if missing:
            raise MissingModelError(_missing_message(preset, missing, home, revision, offline=True))
        log(f"{preset.name}: complete in {home}")
        return ResolvedPreset(preset, home, **paths)
    theirs = users_copies(preset.face, home)
    for _, item in preset.items():
        if isinstance(item, HubRepo):
            fetch_repo(item, home, token=token, console=console, log=log, force=force)
        elif item in theirs and not item.path(home).is_file():
            check_users_copy(item, theirs[item], preset.name)
            log(f"{item.label}: {theirs[item]} ($TORCH_HOME)")
        else:
            fetch_file(item, home, console=console, log=log, force=force)
    log(f"{preset.name}: complete in {home}" + (f" ({preset.note})" if preset.note else ""))
    paths, missing = _find(preset, home, verify=False)
    if missing:  # fetched a moment ago: only a concurrent deletion gets here
        raise MissingModelError(_missing_message(preset, missing, home, revision, offline=False))
    return ResolvedPreset(preset, home, **paths)


# ---------------------------------------------------------------------------------------------------------------------
# Listing the cache


def human_size(n: int) -> str:
    """Decimal units, as the Hub shows sizes: 1.5 GB."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]


def cache_listing(home: Path | None = None, names: list[str] | None = None, revision: str | None = None) -> str:
    """What is cached (item, size, location) and, per preset, whether it is complete and what it lacks (its LLM at
    revision, if given)."""
    home = Path(home or mome_home())
    lines = [f"cache: {home}", "", "Hub repositories:"]
    rows = []
    if hub_cache_dir(home).is_dir():
        from huggingface_hub import scan_cache_dir

        scan = scan_cache_dir(hub_cache_dir(home))
        for repo in scan.repos:
            refs = sorted(ref for rev in repo.revisions for ref in rev.refs) or [
                rev.commit_hash[:10] for rev in repo.revisions]
            rows.append((repo.repo_id, ",".join(refs), human_size(_folder_size(repo.repo_path)), str(repo.repo_path)))
        # A repository huggingface_hub finds damaged (a link to a blob that is gone, say) is left out of its scan, with
        # a warning: listed all the same, with that warning, not dropped without a word.
        scanned = {repo.repo_path.name for repo in scan.repos}
        for folder in sorted(hub_cache_dir(home).glob("models--*")):
            if folder.is_dir() and folder.name not in scanned:
                reason = next((str(w) for w in scan.warnings if f"{folder.name}{os.sep}" in f"{w}{os.sep}"), "")
                refs = sorted(ref.name for ref in (folder / "refs").glob("*") if ref.is_file())
                rows.append((folder.name.split("--", 1)[1].replace("--", "/"), ",".join(refs) or "-",
                             human_size(_folder_size(folder)), f"{folder} (damaged: {reason or 'unreadable'})"))
        rows.sort()
    lines += _table(rows) if rows else ["  (none)"]
    lines += ["", "Files:"]
    rows = []
    for folder in (AVHUBERT_DIR, FACE_ALIGNMENT_DIR):
        for path in sorted((home / folder).glob("*")) if (home / folder).is_dir() else []:
            if not path.is_file() or path.name.endswith(SHA256_SUFFIX) or path.name.startswith("."):
                continue
            if path.name.endswith(PART_SUFFIX):
                state = "partial: `mome download` resumes it"
            else:
                state = "sha256 recorded" if recorded_sha256(path) else ""
            rows.append((f"{folder}/{path.name}", human_size(path.stat().st_size), state, str(path)))
    theirs = {}
    for name in names or list(PRESETS):
        theirs.update(users_copies(get_preset(name).face, home))
    for item, path in theirs.items():  # used from the user's own torch hub folder, where the cache lacks them
        if not item.path(home).is_file():
            rows.append((item.filename, human_size(path.stat().st_size), "in $TORCH_HOME", str(path)))
    lines += _table(rows) if rows else ["  (none)"]
    lines += ["", "Caches (remade as needed: safe to delete):"]
    rows = []
    for folder in sorted(p for p in (home / "cache").glob("*") if p.is_dir()):  # clips, features, train-clips
        files = sum(1 for f in folder.rglob("*") if f.is_file())
        rows.append((f"cache/{folder.name}", counted(files, "file"), human_size(_folder_size(folder)),
                     str(folder)))
    lines += _table(rows) if rows else ["  (none)"]
    lines += ["", "Presets:"]
    rows = []
    at = f" --revision {revision}" if revision else ""
    for name in names or list(PRESETS):
        preset = get_preset(name, revision)
        missing = missing_items(preset, home)
        if preset.source != "hub":  # its model is here; face-alignment's weights are for videos not cropped yet
            state = f"ready: {preset.note}"
            lacking = [d for d in FACE_ALIGNMENT_NEEDS if face_alignment_home(d, home) is None]
            if missing and lacking == ["blazeface"]:  # the default detector's set is there: it is all most need
                state += f"; --detector blazeface lacks its face-alignment weights: run `mome download {name}`"
            elif missing and lacking:
                has = [d for d in FACE_ALIGNMENT_NEEDS if d not in lacking]
                state += (f"; for videos that are not mouth crops (no --roi), missing {', '.join(missing)}: run "
                          f"`mome download {name}`" + (f"; --detector {has[0]} has its weights" if has else ""))
        else:
            state = "complete" if not missing else (f"incomplete: missing {', '.join(missing)}; "
                                                    f"run `mome download {name}{at}`")
        rows.append((name, state))
    lines += _table(rows)
    return "\n".join(lines) + "\n"


def _folder_size(folder: Path) -> int:
    """Bytes of the files under folder (each blob once: snapshots hold links to blobs)."""
    seen, total = set(), 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:  # a link whose blob is gone, or a link to itself (ELOOP): nothing to count
                continue
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


__all__ = ["HubError", "MissingModelError", "UnusableModelError", "ChecksumError", "CacheWriteError", "HubRepo",
           "RemoteFile", "Preset", "PRESETS", "WHISPER_MEDIUM_EN", "AVHUBERT_LARGE", "FACE_ALIGNMENT_FILES",
           "get_preset", "mome_home", "users_copies", "FACE_ALIGNMENT_NEEDS",
           "face_alignment_lacks", "face_alignment_home", "hub_cache_dir", "torch_home", "face_alignment_dir",
           "face_alignment_env", "hub_checkpoints", "hub_offline", "sha256_of", "verify_file", "fetch_url",
           "fetch_file", "fetch_repo", "ResolvedPreset", "locate", "snapshot_lacks", "missing_items", "resolve_preset",
           "download_preset", "cache_listing", "human_size"]
