"""Pictures embedded in a report page: PNG and GIF as data URIs, and the HTML around them."""

from __future__ import annotations

import base64
import html
import io
from typing import Optional

from PIL import Image

from began_dist import storage

GIF_FRAMES = 40


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def shown_width(image: Image.Image) -> int:
    """An integer multiple of the grid's width near 300 px, so pixels stay square and sharp."""
    return image.width * max(1, round(300 / image.width))


def grid_figure(path: str, caption: str) -> str:
    image = open_image(path)
    return figure_html(png_uri(image), caption, width_px=shown_width(image))


def open_image(path: str) -> Image.Image:
    """A PNG of the run directory, read through the storage layer."""
    return Image.open(io.BytesIO(storage.read_bytes(path)))


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_uri(buffer.getvalue(), "image/png")


def gif_uri(paths: list[str]) -> Optional[str]:
    if len(paths) < 2:
        return None
    picked = [paths[round(i * (len(paths) - 1) / (GIF_FRAMES - 1))] for i in range(GIF_FRAMES)]
    frames = [open_image(path).convert("L") for path in dict.fromkeys(picked)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=350, loop=0)
    return data_uri(buffer.getvalue(), "image/gif")


def figure_html(uri: str, caption: str, css: str = "pixel", width_px: int = 0) -> str:
    size = f' style="width: {width_px}px"' if width_px else ""
    image = f'<img class="{css}" src="{uri}" alt="{html.escape(caption)}"{size}>'
    return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"
