"""What the viewer accepts: upload and text limits, checked before anything is decoded."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("m2ib.serve")

MAX_UPLOAD_MB = 20.0  # default upload limit, in MB (10^6 bytes)
MAX_MEGAPIXELS = 40.0  # default pixel limit: larger images are refused before they are decoded
MAX_TEXT_CHARS = 10_000  # longer texts are refused (the models read 77 tokens or fewer)
KEEP_OUTPUTS_S = 3600  # a request's output files are deleted after an hour


def read_image(
    image: Any, max_bytes: float = MAX_UPLOAD_MB * 1e6, max_pixels: float = MAX_MEGAPIXELS * 1e6
) -> Image.Image:
    """An uploaded image as an RGB PIL image, or an :class:`InputError` that a person can act on.

    ``image`` is a file path (what the page uploads) or a PIL image. Files over ``max_bytes``
    and images over ``max_pixels`` (e.g. decompression bombs) are refused before decoding.
    """
    from PIL import Image

    from ..inputs import load_image

    if image is None or (isinstance(image, str) and not image.strip()):
        raise InputError("no image: upload one, or click one of the example scenes")
    if isinstance(image, Image.Image):
        _check_pixels("the image", image.size, max_pixels)
        return load_image(image)[0]
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"cannot use {type(image).__name__} as an image: upload an image file")
    path = Path(image)
    name = path.name
    if not path.is_file():
        raise InputError(f"{name}: the uploaded file is missing; upload it again")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"{name}: the file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")
    if size == 0:
        raise InputError(f"{name}: the file is empty; upload a PNG, JPEG or another common image format")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:  # reads the header only
                dims = opened.size
    except Image.DecompressionBombError:
        raise InputError(
            f"{name}: the image has too many pixels (a decompression bomb?); "
            f"the limit is {max_pixels / 1e6:g} megapixels"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        log.debug("cannot identify %s: %s", path, exc)
        raise InputError(
            f"{name}: cannot read this file as an image; upload a PNG, JPEG or another common image format"
        ) from None
    _check_pixels(name, dims, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return load_image(path)[0]
    except InputError as exc:
        log.debug("cannot decode %s: %s", path, exc)
        raise InputError(
            f"{name}: the image is damaged or incomplete and cannot be decoded; upload another file"
        ) from None


def _check_pixels(name: str, size: tuple[int, int], max_pixels: float) -> None:
    w, h = size
    if w * h > max_pixels:
        raise InputError(
            f"{name}: the image is {w} x {h} pixels ({w * h / 1e6:.1f} megapixels); "
            f"the limit is {max_pixels / 1e6:g} megapixels"
        )
    if w <= 0 or h <= 0:
        raise InputError(f"{name}: the image has no pixels ({w} x {h})")


def check_text(text: Any, max_chars: int = MAX_TEXT_CHARS) -> str:
    """The text to explain, stripped; an empty or overlong text is an :class:`InputError`."""
    if not isinstance(text, str) or not text.strip():
        raise InputError('empty text: type the words to explain, e.g. "a yellow star"')
    if len(text) > max_chars:
        raise InputError(
            f"the text has {len(text)} characters; the limit is {max_chars} (CLIP-style models read a few dozen words)"
        )
    return text.strip()


def prune(folder: Path, older_than_s: float) -> None:
    """Delete the request folders in ``folder`` older than ``older_than_s``."""
    import shutil
    import time

    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
