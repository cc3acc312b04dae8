"""OHIF's page in Chromium: the viewport's pixels, and waiting until an image is drawn."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from playwright.sync_api import Error as PlaywrightError

# A drawn CT slice: the viewport canvas's grey levels spread (an empty one is flat black).
DRAWN_STD = 20.0
IMAGE_TIMEOUT = 60.0


def viewport_pixels(page: Any) -> np.ndarray:
    """The grey levels of OHIF's (first) viewport canvas, from a screenshot of it."""
    from PIL import Image

    canvas = page.locator("canvas.cornerstone-canvas").first
    shot = canvas.screenshot(timeout=10_000)
    return np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)


def wait_for_image(page: Any, timeout: float = IMAGE_TIMEOUT) -> tuple[float, np.ndarray]:
    """Seconds until the viewport shows an image (its pixels spread), and those pixels."""
    started = time.monotonic()
    pixels = np.zeros((1, 1))
    while time.monotonic() - started < timeout:
        try:
            if page.locator("canvas.cornerstone-canvas").count():
                pixels = viewport_pixels(page)
                if pixels.std() > DRAWN_STD:
                    return time.monotonic() - started, pixels
        except PlaywrightError:  # the page navigated meanwhile (OHIF's sign-in redirects)
            pass
        page.wait_for_timeout(100)
    raise AssertionError(f"no image drawn in {timeout:.0f}s (pixel std {pixels.std():.1f})")
