"""treescale: an OCI registry whose blobs live as chunks on a tree of relays."""

__version__ = "0.1.0"
