"""The errors the tool raises on purpose, each naming the file or key at fault, and the exit statuses."""

EXIT_OK = 0
EXIT_UNREADABLE_RUNS = 1  # analysis complete, some runs could not be read (SPEC §2)
EXIT_BAD_INVOCATION = 2
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM: what was written is complete; rerun to resume


class MldebugError(Exception):
    """Base of the tool's own errors."""


class ConfigError(MldebugError):
    """A bad invocation or configuration value (exit status 2)."""


class SchemaError(MldebugError):
    """A frame does not match its declared evidence-table schema."""


class OutputError(MldebugError):
    """The output directory cannot take what must be written (disk full, read-only): the
    sweep stops with one line naming the path; parts already written stay whole."""


class ReadError(MldebugError):
    """A run's file could not be read; the message names the file and why."""
