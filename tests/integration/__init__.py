"""Integration tests: real twistd processes and real clients."""
