"""Version numbers, where every layer can read them (the worker reports the engine version, and
worker and manager depend on common only, never on shoal)."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version
API_VERSION = "1.0"    # of the local (unix socket) API
