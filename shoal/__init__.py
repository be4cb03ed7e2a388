"""shoal: a cluster orchestrator for Linux hosts in the style of Docker Swarm mode."""

__version__ = "0.1.0"
API_VERSION = "1.0"
