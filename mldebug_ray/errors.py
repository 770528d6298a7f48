"""The errors the tool raises on purpose; each message names the file or key at fault."""


class MldebugError(Exception):
    """Base of the tool's own errors."""


class ConfigError(MldebugError):
    """A bad invocation or configuration value (exit status 2)."""


class SchemaError(MldebugError):
    """A frame does not match its declared evidence-table schema."""


class ReadError(MldebugError):
    """A run's file could not be read; the message names the file and why."""
