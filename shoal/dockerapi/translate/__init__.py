"""shoal's objects as Docker Engine API JSON: pure functions, no I/O, no request."""
