"""The engine's usage error, shared by every engine sub-package (so none has to import another's
module just to raise it)."""


class ConfigError(ValueError):
    """A configuration problem found before any work started (the CLI exits with code 2)."""
