"""Plain-URL downloads and SHA-256 checks that never leave a partial or wrong file under its final name.

`fetch_url` streams into `<file>.part` beside the final name, and resumes a `.part` left by an interrupted run with an
HTTP Range request (a server that ignores Range, or whose file changed, gets a fresh download). The ETag (or, lacking
one, the Last-Modified date) of the file a `.part` was begun from is kept in a hidden `.<file>.part.if-range` and
sent as If-Range when it is resumed: a server whose file has changed since then answers with the whole new file, not
the end of it joined to the old start. Before the rename it checks the `.part` as it is on disk: its size, where
known, and its SHA-256, full or a prefix of it (torch hub's names carry the first hex digits); on a mismatch it
deletes the `.part`. Where no checksum is published, the digest of the first download is recorded in `<file>.sha256`
(sha256sum's format) and `verify_file` compares against it later. A progress bar is drawn when a rich console is
given (the CLI gives one on a TTY).

Processes that share a cache take turns with each file: `download_lock` holds an inter-process lock on a hidden
`.<file>.lock` beside it while one of them downloads, so that two never write one `.part`, and one that waited finds
the file the other finished.

The errors carry the exit code of the contract (report.ExitCode): MISSING (4) when something cannot be fetched now
(no network, an interrupted download), FAILURE (1) for a checksum mismatch or a cache that cannot be written. hub.py
raises the same classes and re-exports them. Torch-free; httpx and rich are imported where they are used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .files import atomic_write_text
from .report import ExitCode

if TYPE_CHECKING:
    from .hub import RemoteFile

PART_SUFFIX = ".part"  # a download in progress, resumable
SHA256_SUFFIX = ".sha256"  # the recorded digest of a file that has no published checksum
LOCK_SUFFIX = ".lock"  # .<file>.lock: held by the process downloading <file>; hidden, so --list does not show it
IF_RANGE_SUFFIX = ".if-range"  # .<file>.part.if-range: which version of the file the .part holds the start of
CHUNK_BYTES = 1 << 20  # 1 MiB per read while streaming and hashing


# ---------------------------------------------------------------------------------------------------------------------
# Errors


class HubError(Exception):
    """A download or cache problem with a one-line message for the user and the exit code that goes with it."""

    exit_code = ExitCode.FAILURE


class MissingModelError(HubError):
    """Something a preset needs is not in the cache and cannot be fetched now; the message says what fixes it."""

    exit_code = ExitCode.MISSING


class UnusableModelError(HubError):
    """A model folder or file that is there but cannot be used: not a checkpoint, damaged, or not fitting its model."""

    exit_code = ExitCode.FAILURE


class ChecksumError(HubError):
    """A downloaded or cached file whose SHA-256 is not the expected one."""

    exit_code = ExitCode.FAILURE

    def __init__(self, path: Path, expected: str, got: str):
        self.path, self.expected, self.got = Path(path), expected, got
        super().__init__(f"{Path(path).name}: checksum mismatch: {self.expected_and_got}")

    def __reduce__(self):  # as it was made (Exception pickles its message alone)
        return type(self), (self.path, self.expected, self.got)

    @property
    def expected_and_got(self) -> str:  # of face-alignment's files only a prefix is known: their names give it
        expected = self.expected if len(self.expected) == 64 else f"one that starts {self.expected}"
        return f"expected SHA-256 {expected}, got {self.got}"


class CacheWriteError(HubError):
    """The cache cannot be written (disk full, no permission, read-only file system)."""

    exit_code = ExitCode.FAILURE


def _cache_write_error(e: OSError, path: Path) -> HubError | OSError:
    """A clear one-line error for an OSError met while writing the cache, or e itself for anything else."""
    where = e.filename or path
    fix = "free some space or choose another place with --cache-dir or MOME_HOME"
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CacheWriteError(f"cannot write to {where}: {e.strerror or 'permission denied'}; "
                               "choose another place with --cache-dir or MOME_HOME")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheWriteError(f"no space left to write {where}: {fix}")
    return e


def reraise_os_error(e: OSError, path: Path) -> None:
    error = _cache_write_error(e, path)
    if error is e:
        raise e
    raise error from e


def no_network_error(what: str, e: BaseException, home: Path | None = None, more: str = "") -> MissingModelError:
    where = f"the cache folder {home}" if home is not None else "the cache"
    said = (str(e).strip().splitlines() or [""])[0]  # huggingface_hub's messages go on with "For more information"
    return MissingModelError(f"no network: cannot reach {what} ({type(e).__name__}: {said}); run again when online, "
                             f"or copy {where} from a machine that has it{more}")


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error = _cache_write_error(e, folder)
        raise (CacheWriteError(f"cannot create {folder}: {e.strerror or e}") if error is e else error) from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CacheWriteError(f"cannot write to {folder}: permission denied; "
                              "choose another place with --cache-dir or MOME_HOME")


# ---------------------------------------------------------------------------------------------------------------------
# Checksums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(digest: str, expected: str) -> bool:
    """A full digest or a prefix of one (torch hub file names carry the first hex digits)."""
    return digest.startswith(expected.lower())


def recorded_sha256(path: Path) -> str | None:
    """The digest recorded in <path>.sha256 when the file was downloaded, if any."""
    sidecar = Path(f"{path}{SHA256_SUFFIX}")
    try:
        return sidecar.read_text().split()[0].lower()
    except (OSError, IndexError):
        return None


def verify_file(item: RemoteFile, path: Path) -> str:
    """Check a cached file against the registry's checksum or, lacking one, the recorded digest; return the digest.

    A file with neither (copied into the cache by hand) gets its digest recorded now.
    """
    digest = sha256_of(path)
    expected = item.sha256 or recorded_sha256(path)
    if expected is None:
        with contextlib.suppress(OSError):  # a read-only cache (copied from elsewhere) is still usable
            atomic_write_text(Path(f"{path}{SHA256_SUFFIX}"), f"{digest}  {path.name}\n")
    elif not _matches(digest, expected):
        raise ChecksumError(path, expected, digest)
    return digest


# ---------------------------------------------------------------------------------------------------------------------
# Downloads


def lock_path(dest: Path) -> Path:
    return Path(dest).with_name(f".{Path(dest).name}{LOCK_SUFFIX}")


@functools.lru_cache(maxsize=None)
def _file_lock(path: str):
    """One FileLock per lock file in this process: a FileLock counts nested holds, where a second one on the same
    file would wait for the first forever (flock is per open file)."""
    from filelock import FileLock

    return FileLock(path)


@contextlib.contextmanager
def download_lock(dest: Path, log: Callable[[str], None] = lambda m: None) -> Iterator[None]:
    """Hold dest's inter-process lock while it is checked, downloaded or replaced; says so on log if another process
    holds it, then waits for it. Nested holds in one thread (fetch_file's around fetch_url's) do not wait.

    The lock file stays after release: deleting it would let a process that is waiting on it and one that comes later
    lock two different files. The system drops the lock of a process that dies.
    """
    import filelock

    lock = _file_lock(str(lock_path(dest)))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            log(f"another process is downloading {Path(dest).name}; waiting for it to finish")
            lock.acquire()
    except OSError as e:
        reraise_os_error(e, lock_path(dest))
    try:
        yield
    finally:
        lock.release()


def _progress_bar(console):
    """A rich progress bar for one file on console (stderr), or None without a console."""
    if console is None:
        return None
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def fetch_url(url: str, dest: Path, sha256: str | None = None, size: int | None = None, *, console=None,
              client=None, log: Callable[[str], None] = lambda m: None) -> str:
    """Download url to dest through dest.part, resuming a .part left by an interrupted run; return the SHA-256.

    Holds download_lock(dest) throughout: another process fetching dest waits. Size and digest (full or prefix) of the
    .part on disk are checked before the rename; on a mismatch the .part is deleted. Without an expected digest, the
    one found is recorded in dest.sha256. console: a rich Console for a progress bar, or None; log: where a wait for
    another process is said.
    """
    import httpx

    dest = Path(dest)
    part = dest.with_name(dest.name + PART_SUFFIX)
    own_client = client is None
    if own_client:
        client = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0))
    try:
        with download_lock(dest, log):
            if size is not None and part.is_file() and part.stat().st_size > size:
                _discard(part)
            _download_part(client, url, part, console, dest.name)
            # The file as it is on disk, not the bytes this process received: whatever else wrote to the .part (a
            # mome older than the lock, sharing the cache), what is renamed into place is what was checked.
            got_size, got = part.stat().st_size, sha256_of(part)
            if size is not None and got_size != size:
                _discard(part)
                raise HubError(f"{dest.name}: expected {size} bytes, got {got_size}")
            if sha256 is not None and not _matches(got, sha256):
                _discard(part)
                raise ChecksumError(dest, sha256, got)
            os.replace(part, dest)
            _if_range_path(part).unlink(missing_ok=True)
            if sha256 is None:
                atomic_write_text(Path(f"{dest}{SHA256_SUFFIX}"), f"{got}  {dest.name}\n")
            return got
    except httpx.TransportError as e:
        if part.is_file() and part.stat().st_size:
            raise MissingModelError(f"download of {dest.name} interrupted after {part.stat().st_size} bytes "
                                    f"({type(e).__name__}: {e}); run again to resume it") from e
        raise no_network_error(url, e, dest.parent) from e
    except OSError as e:
        reraise_os_error(e, part)
    finally:
        if own_client:
            client.close()


def _download_part(client, url: str, part: Path, console, name: str) -> None:
    """Bring part up to the whole file at url, resuming it with a Range request.

    A server that ignores Range, or whose file is no longer the one part was begun from (If-Range), answers 200 with
    the whole file: part is then rewritten from the first byte.
    """
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        with contextlib.suppress(OSError):  # none kept (a .part of an older mome): resumed unchecked, as it was
            headers["If-Range"] = _if_range_path(part).read_text().strip()
    with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        misfit = offset and (status == 416 or status == 206 and not _range_starts_at(response, offset))
        if not misfit:
            if status not in (200, 206):
                raise HubError(f"{url}: the server answered HTTP {status}")
            if status == 200:
                offset = 0
                _keep_if_range(response, part)
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            _stream_to(response, part, "ab" if offset else "wb", offset, total, console, name)
    if misfit:  # the .part does not fit the file the server has now: start again without Range
        _discard(part)
        _download_part(client, url, part, console, name)
        return
    if total is not None and (got := part.stat().st_size) != total:
        raise MissingModelError(f"download of {name} stopped at {got} of {total} bytes; run again to resume it")


def _if_range_path(part: Path) -> Path:
    return part.with_name(f".{part.name}{IF_RANGE_SUFFIX}")


def _discard(part: Path) -> None:
    part.unlink()
    _if_range_path(part).unlink(missing_ok=True)


def _keep_if_range(response, part: Path) -> None:
    """Keep what identifies the file a 200 answer begins in part, for If-Range when part is resumed: its ETag, unless
    weak (If-Range takes strong ones only), else its Last-Modified date; nothing if it has neither."""
    etag = response.headers.get("ETag", "")
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
    if validator:
        atomic_write_text(_if_range_path(part), validator + "\n")
    else:
        _if_range_path(part).unlink(missing_ok=True)


def _range_starts_at(response, offset: int) -> bool:
    """Whether a 206 answer's Content-Range ("bytes START-END/TOTAL") starts where the .part ends."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset


def _stream_to(response, part: Path, mode: str, offset: int, total: int | None, console, name: str) -> None:
    """Write the response body to part (mode "ab" after the offset bytes already there, or "wb")."""
    written = offset
    bar = _progress_bar(console)
    with contextlib.ExitStack() as stack:
        task = None
        if bar is not None:
            stack.enter_context(bar)
            task = bar.add_task(name, total=total, completed=offset)
        f = stack.enter_context(open(part, mode))
        for chunk in response.iter_bytes(CHUNK_BYTES):
            f.write(chunk)
            written += len(chunk)
            if task is not None:
                bar.update(task, completed=written)


__all__ = ["HubError", "MissingModelError", "UnusableModelError", "ChecksumError", "CacheWriteError", "PART_SUFFIX",
           "SHA256_SUFFIX", "LOCK_SUFFIX", "IF_RANGE_SUFFIX", "sha256_of", "recorded_sha256", "verify_file",
           "lock_path", "download_lock", "fetch_url", "ensure_writable", "no_network_error", "reraise_os_error"]
