"""Unit tests: no real sockets, no real time."""
