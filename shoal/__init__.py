"""shoal: a cluster orchestrator for Linux hosts in the style of Docker Swarm mode."""

from common.version import API_VERSION, __version__

__all__ = ["API_VERSION", "__version__"]
