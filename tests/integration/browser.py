"""Headless Chromium (Debian's package) driven from the command line, for page tests.

Chromium renders a page, runs its scripts for a bounded stretch of virtual time, then
prints the resulting DOM or writes a screenshot. The flags keep it from reaching for
any network but the page's own server: no background networking, no component
updates, no sync, no QUIC, a fresh profile each time.
"""

import subprocess
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM = "chromium"
RENDER_TIMEOUT = 60.0
SCRIPT_BUDGET_MS = 4000
"""Virtual milliseconds the page's scripts get before the DOM or picture is taken."""

QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


def _render(url: str, *mode: str) -> str:
    """Run chromium on `url` in a fresh profile; its standard output."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        finished = subprocess.run(
            [
                CHROMIUM,
                *QUIET_FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={SCRIPT_BUDGET_MS}",
                *mode,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT,
            check=False,
        )
    if finished.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {finished.stderr[-2000:]}")
    return finished.stdout


def rendered_dom(url: str) -> str:
    """The page's DOM after its scripts ran."""
    return _render(url, "--dump-dom")


def screenshot(url: str, path: Path, width: int = 900, height: int = 500) -> Path:
    """A PNG of the page after its scripts ran."""
    _render(url, f"--window-size={width},{height}", f"--screenshot={path}")
    if not path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
    return path


def pixels_near(path: Path, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels of a PNG are within `tolerance` of `colour` on every channel."""
    with Image.open(path) as image:
        raw = image.convert("RGB").tobytes()
    # Read off the raw bytes: Image.getdata is deprecated (gone in Pillow 14).
    pixels = zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
    return sum(
        1
        for pixel in pixels
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
    )
