"""Making a new or renamed file's name survive a power loss."""

import os
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename, a new file) to disk.

    A file's own fsync makes its bytes durable, not its name: after a rename into
    place, the folder must be flushed too.
    """
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
