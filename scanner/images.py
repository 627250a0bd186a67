"""Images of image-text samples: where a row's image comes from, and whether it decodes.

A row's image (the `--image-col` column) may be
- encoded bytes (a Parquet/Arrow binary column),
- an HF `datasets` Image value: {"bytes": ..., "path": ...} (bytes first, else the path),
- a path or URI (JSON lines, CSV); a relative path is relative to the folder of its input file.
The bytes are kept as they are, never re-encoded: how an image was stored (format, JPEG quality,
size) is exactly what the blind baseline must be able to see.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

from scanner.storage import join, open_input, parent

MAX_PIXELS = 64_000_000  # a larger image is quarantined rather than decoded (decompression bombs)


def image_bytes(value: Any, input_uri: str) -> tuple[bytes | None, str | None]:
    """(the encoded image, None) or (None, the reason the row is quarantined)."""
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
        value = value.get("bytes") or value.get("path")
    if value is None or value == b"" or value == "":
        return None, "missing image"
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        path = value if "://" in value or posixpath.isabs(value) else join(parent(input_uri), value)
        try:
            with open_input(path) as f:
                data = f.read()
        except (OSError, ValueError) as e:
            return None, f"unreadable image: {value}: {type(e).__name__}"
    else:
        return None, f"image is not bytes, a path or an HF Image: {type(value).__name__}"
    why = decode_problem(data)
    return (None, why) if why else (data, None)


def decode_problem(data: bytes) -> str | None:
    """Why these bytes are not a usable image, or None. Decodes fully: a truncated file opens
    but fails here."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                return f"image too large: {im.width}x{im.height} pixels"
            im.load()
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError ...) for bad data
        return f"undecodable image: {type(e).__name__}"
    return None


def decode_rgb(data: bytes):
    """The image as an RGB PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def encode(im, fmt: str = "PNG", **options) -> bytes:
    """A PIL image as encoded bytes (options: Pillow's, e.g. quality=30 for JPEG)."""
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()
