"""The package version, in a module of its own so that modules which record it (run directories)
need not import ``longtail/__init__.py``."""

__version__ = "0.1.0"
