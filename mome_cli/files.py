"""Writing files so that a crash never leaves a half-written file under its final name. Torch-free."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) for a temporary file beside path, then rename it to path; on failure remove it."""
    atomic_write_all([(path, write)])


def atomic_write_all(writes: list[tuple[object, Callable[[str], None]]]) -> None:
    """Files that belong together (a report and what it describes), each as atomic_write writes one: every one is
    written under a temporary name before any is renamed into place, so that a failure while writing (a full disk,
    an error in a writer) leaves them all as they were."""
    temps = []  # (temporary file, its path)
    try:
        for path, write in writes:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append((tmp, path))
            write(tmp)
            _fsync(tmp)  # the bytes on disk before the name points at them: a power cut leaves the old file or the new
            os.chmod(tmp, _mode_for(path))  # mkstemp's file is private (0600): the mode a plain open() would give
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(path.parent for _, path in temps):
        try:
            _fsync(folder)  # and the renames themselves
        except OSError:  # a file system that cannot sync a folder: the rename is still atomic
            pass


def refuse_file_in_the_way(path) -> None:
    """NotADirectoryError naming the file when a file (not a folder) is where the folder path, or the nearest of its
    parents that exists, is: said as such, where mkdir says "File exists" or "Not a directory"."""
    path = folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{'it' if folder == path else folder} is a file, not a folder",
                                 str(folder))


def writable_folder(path) -> list[Path]:
    """Make sure a file can be written in the folder path (made, with its missing parents, if missing), before long
    work that ends by writing there; OSError if not (NotADirectoryError naming the file when a file is where path or
    one of its parents should be a folder). Returns the folders made here, deepest first: remove_folders
    takes them away again if that work fails."""
    path = Path(os.path.abspath(path))  # normalised: no '..' among the folders to remove
    made, folder = [], path
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        refuse_file_in_the_way(path)
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        remove_folders(made)
        raise
    return made


def remove_folders(folders: list[Path]) -> None:
    """Remove each of the folders, deepest first, that is still empty (what writable_folder made and nothing used)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # in use: it stays, and so do its parents
                return
            # otherwise never made (mkdir failed below its parent: missing, or a name too long) or gone already


@contextlib.contextmanager
def removed_if_empty(folders: list[Path]):
    """The folders writable_folder made, for the with block's work: at its end, those it wrote nothing into are
    removed (a run whose every input failed leaves no empty output folder behind)."""
    try:
        yield
    finally:
        remove_folders(folders)


@contextlib.contextmanager
def interrupt_after():
    """Files written together (a report and what it describes) are all written, or a Ctrl-C leaves them all as they
    were: a SIGINT that comes inside this is delivered again when it ends. In the main thread only (the one Python
    delivers signals to); elsewhere nothing is held back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: came.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)  # None: set outside Python
        if came:  # now as it would have come: KeyboardInterrupt, ignored, or the end of the process, as was set
            signal.raise_signal(signal.SIGINT)


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode_for(path: Path) -> int:
    """The permissions the file should get: those of the file it replaces, else 0666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError as e:  # nothing there (a new file), or a link to itself (ELOOP) in its place: replaced as a
        if e.errno not in (errno.ENOENT, errno.ELOOP):  # dangling link is, not followed
            raise
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, text_writer(text))


def text_writer(text: str) -> Callable[[str], None]:
    """A writer for atomic_write(_all) that writes text as UTF-8."""
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


__all__ = ["atomic_write", "atomic_write_all", "atomic_write_text", "text_writer", "interrupt_after",
           "refuse_file_in_the_way", "writable_folder", "removed_if_empty", "remove_folders"]
