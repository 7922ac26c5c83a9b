"""One error root, one family per concern, each carrying the exit code the CLI ends with.

`cli.main` catches `SweeperError` alone and exits with `exit_code` (docs/operator-contract.md,
"Exit codes"): 2 when the operator's input, config or environment must change and nothing was
changed; 1 for a runtime failure. Concrete errors live next to the code that raises them
(`sweeper.provider.errors`, `sweeper.chain.errors`, `sweeper.config`, `sweeper.ledger`, …) and
derive from a family here, so a caller can catch a whole family without knowing its members.

Texts never contain a secret: the provider and chain clients scrub theirs, and nothing else ever
puts a key, secret or mnemonic into a message.
"""

from __future__ import annotations

from typing import ClassVar, Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # a runtime failure: retrying later may succeed
EXIT_USAGE: Final = 2  # usage, config or a refused operator action: nothing changed
EXIT_INTERRUPTED: Final = 130


class SweeperError(Exception):
    """The root of every error this project raises on purpose."""

    exit_code: ClassVar[int] = EXIT_FAILURE

    def lines(self) -> list[str]:
        """What the CLI prints, one `sweeper: error:` line each."""
        return str(self).splitlines() or [type(self).__name__]


# --- usage and configuration (exit 2) --------------------------------------------------------------


class UsageError(SweeperError):
    """Bad input from the operator (options, files, addresses): message printed, nothing changed."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """One or more problems in a config file; each line names the file, the key and the problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def lines(self) -> list[str]:
        return list(self.problems)


class StartupError(SweeperError):
    """The daemon cannot start: the message says what to fix (the API key refused, the listen
    address taken, a mnemonic that does not match the ledger, another process holding the ledger)."""

    exit_code = EXIT_USAGE


class KeySourceError(SweeperError):
    """A key cannot be derived or loaded, or does not match the address it is for. Never contains
    key material."""

    exit_code = EXIT_USAGE


# --- runtime (exit 1) ------------------------------------------------------------------------------


class RuntimeFailure(SweeperError):
    """Work that could not be completed now (a scan that could not read every address, `work
    --timeout`, the demo failing): retrying later may succeed."""


# --- the ledger ------------------------------------------------------------------------------------


class LedgerError(SweeperError):
    """The ledger refuses an operator action or is not ready (unknown id, a sweep in the wrong
    state, an un-migrated schema, another process holding the SQLite lock): exit 2."""

    exit_code = EXIT_USAGE


class LedgerUnavailable(SweeperError):
    """The ledger database cannot be reached or errs: exit 1."""


# --- the outside parties -------------------------------------------------------------------------------


class ChainError(SweeperError):
    """Base of every error the TRON node client raises."""


class ProviderError(SweeperError):
    """Base of every error the energy provider client raises. Texts never contain the API key or secret.

    `raw` is the provider's answer (truncated, secrets scrubbed) for the ledger; `message` the
    provider's own message when it gave one (often Chinese; kept verbatim, never interpreted).
    """

    def __init__(
        self,
        summary: str,
        *,
        message: str | None = None,
        errno: int | None = None,
        http_status: int | None = None,
        raw: str | None = None,
    ) -> None:
        self.summary = summary
        self.message = message
        self.errno = errno
        self.http_status = http_status
        self.raw = raw
        parts = [summary]
        if http_status is not None:
            parts.append(f"http={http_status}")
        if errno is not None:
            parts.append(f"errno={errno}")
        if message:
            parts.append(f"message={message!r}")
        super().__init__(" ".join(parts))
