"""The package version.  Modules read it here, never from the package's __init__ (which imports them)."""

__version__ = "0.1.0"
