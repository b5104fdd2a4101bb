"""Exit codes of every mome command and the per-input report that batch commands turn into one.

Torch-free: the CLI imports this before any library code.
"""

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success
    FAILURE = 1  # nothing succeeded
    USAGE = 2  # bad flag or value (what click.UsageError exits with)
    PARTIAL = 3  # a batch where some inputs failed and others succeeded
    MISSING = 4  # a needed model or dataset is not available; the message says how to get it


@dataclass
class Report:
    """How many inputs of a batch succeeded, were skipped (outputs already there) or failed."""

    ok: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def return_code(self) -> ExitCode:
        """OK when nothing failed (skipped counts as success; so does an empty batch),
        PARTIAL when some failed and some succeeded, FAILURE when every input failed."""
        if not self.failed:
            return ExitCode.OK
        if self.ok or self.skipped:
            return ExitCode.PARTIAL
        return ExitCode.FAILURE

    def summary(self) -> str:
        return f"{self.ok} ok, {self.skipped} skipped, {self.failed} failed"
