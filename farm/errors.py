"""One error tree for the farm. Every error a user can cause maps to a one-line message and an
exit status; the CLI prints ``error: <message>`` and exits with ``exit_code``, never a traceback.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base of all farm errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str):
        # Keep messages to one line: scripts and people read the first line only.
        super().__init__(" ".join(str(message).split()))


class InputError(FarmError):
    """Bad input from the user: a spec field, a file, a flag. Nothing was written."""

    exit_code = 2

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ConfigError(FarmError):
    """A bad FARM_* setting; the message names the variable."""

    exit_code = 2

    def __init__(self, variable: str, message: str):
        self.variable = variable
        super().__init__(f"{variable}: {message}")


class NotFound(FarmError):
    """A batch, job or object that does not exist."""

    exit_code = 2


class ConflictError(FarmError):
    """The request contradicts what the ledger holds (e.g. an idempotency key reused for another spec)."""

    exit_code = 2


class QuotaExceeded(FarmError):
    """A submission would take a tenant past one of its quotas (issue 24); nothing was written."""

    exit_code = 4


class InfrastructureError(FarmError):
    """The broker, the database or the store failed; retrying later may succeed."""

    exit_code = 3


class FarmTimeout(FarmError):
    """A wait for a batch ran out of time; ``counts`` holds its counts per state at that moment,
    ``done`` how many of its jobs had ended (succeeded, failed or cancelled)."""

    exit_code = 1

    def __init__(self, batch: str, counts: dict[str, int], timeout: float, done: int):
        self.batch, self.counts, self.timeout = batch, counts, timeout
        super().__init__(f"batch {batch}: {done}/{sum(counts.values())} jobs done after {timeout:g}s")
