"""Glyph sources: CJK characters rendered with Pillow from fonts (`glyphs`), and the CNS 11643
bitmaps of Debian's fonts-cns11643-pixmaps (`cns`)."""

from __future__ import annotations

import os
import subprocess
import unicodedata
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from began_dist.data.dataset import DataError
from began_dist.data.sources.folder import load_image

FIRST_CJK = 0x4E00  # start of the CJK Unified Ideographs block
LAST_CJK = 0x9FFF


# -- glyphs ------------------------------------------------------------------------------
def default_font() -> str:
    try:
        import noto_cjk_sans_otc
    except ImportError:
        raise DataError("data.font: no font given and the package noto-cjk-sans-otc is not installed") from None
    return os.path.join(os.path.dirname(noto_cjk_sans_otc.__file__), "NotoSansCJK-Regular.ttc")


def load_font(path: str, index: int, pixel_size: int) -> ImageFont.FreeTypeFont:
    if not os.path.isfile(path):
        raise DataError(f"data.font: no such font file {path!r}")
    try:
        return ImageFont.truetype(path, size=pixel_size, index=index)
    except OSError as error:
        raise DataError(f"data.font: cannot read {path!r} (face {index}): {error}") from None


def render_glyph(char: str, font: ImageFont.FreeTypeFont, size: int) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).text((size / 2, size / 2), char, fill=255, font=font, anchor="mm")
    return np.asarray(image)


def notdef_glyph(font: ImageFont.FreeTypeFont, size: int) -> np.ndarray:
    """What the font draws for a character it lacks: unassigned U+0378 renders as .notdef (tofu)."""
    return render_glyph("\u0378", font, size)


def is_real_glyph(image: np.ndarray, notdef: np.ndarray) -> bool:
    """Not blank and not the tofu box (some fonts have an empty .notdef, hence both tests)."""
    return bool(image.any()) and not np.array_equal(image, notdef)


def glyph_characters(count: int, font: ImageFont.FreeTypeFont, size: int) -> list[str]:
    """The first `count` ideographs from U+4E00 that the font really has (not its .notdef box)."""
    missing = notdef_glyph(font, size)
    chars = []
    for code in range(FIRST_CJK, LAST_CJK + 1):
        char = chr(code)
        if is_real_glyph(render_glyph(char, font, size), missing):
            chars.append(char)
            if len(chars) == count:
                return chars
    raise DataError(f"data.glyphs={count}: the font has only {len(chars)} CJK ideographs")


def glyph_pixel_size(size: int) -> int:
    """Font size for `size`-pixel glyph images (a small margin keeps strokes off the border)."""
    return round(size * 0.875)


def parse_fonts(spec: str) -> list[tuple[str, int]]:
    """`PATH[:FACE],...` -> [(path, face index)]; empty = the bundled Noto Sans CJK, face 2 (SC)."""
    fonts = []
    for item in (part.strip() for part in (spec or "").split(",")):
        if not item:
            continue
        path, colon, face = item.rpartition(":")
        if not colon or not face.isdigit():
            path, face = item, "0"
        fonts.append((os.path.expanduser(path), int(face)))
    return fonts or [(default_font(), 2)]


def font_codepoints(path: str, face: int) -> set[int]:
    """Code points in the font's cmap (fontTools); a cheap first filter before the render test."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=face, lazy=True) as font:
            return set(font.getBestCmap() or {})
    except Exception as error:  # fontTools raises many types for a damaged font file
        raise DataError(f"--fonts: cannot read the character map of {path} (face {face}): {error}") from None


def parse_charset(spec: str, fonts: list[tuple[str, int]]) -> list[int]:
    """`--charset`: a range `4E00-9FFF` (hex, `U+` optional), a text file of characters, or `common`.

    `common` (the default) is every CJK Unified Ideograph (U+4E00-9FFF) in the cmap of every font.
    """
    spec = (spec or "common").strip()
    if spec == "common":
        shared = set(range(FIRST_CJK, LAST_CJK + 1))
        for path, face in fonts:
            shared &= font_codepoints(path, face)
        return sorted(shared)
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as handle:
            return sorted({ord(char) for char in handle.read() if not char.isspace()})
    low, _, high = spec.upper().replace("U+", "").partition("-")
    try:
        first, last = int(low, 16), int(high or low, 16)
    except ValueError:
        raise DataError(f"--charset {spec!r}: expected a hex range like 4E00-9FFF, a file, or common") from None
    if not 0 <= first <= last <= 0x10FFFF:
        raise DataError(f"--charset {spec!r}: not a range of code points")
    return list(range(first, last + 1))


def render_font_glyphs(codes: list[int], path: str, face: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 1) glyph images of `codes` in one font and a bool mask of the real ones."""
    font = load_font(path, face, glyph_pixel_size(size))
    missing = notdef_glyph(font, size)
    images = np.stack([render_glyph(chr(code), font, size) for code in codes]) if codes else np.zeros((0, size, size))
    real = np.array([is_real_glyph(image, missing) for image in images], dtype=bool)
    return images[..., None].astype(np.uint8), real


def render_glyphs(
    size: int, count: int, font_path: str = "", font_index: int = 2, chars: Optional[list[str]] = None
) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 1) uint8 glyph images and the characters they show."""
    font = load_font(font_path or default_font(), font_index, glyph_pixel_size(size))
    chars = chars or glyph_characters(count, font, size)
    images = np.stack([render_glyph(c, font, size) for c in chars])[..., None]
    return images, chars


# -- CNS 11643 pixmaps (Debian fonts-cns11643-pixmaps) ------------------------------------
CNS_ROOT = "/usr/share/pixmaps/cns11643"
CNS_PLANES = (1, 2, 3)  # the Hanzi planes glibc's EUC-TW maps to Unicode


def euc_tw_to_unicode(names: list[str]) -> list[Optional[str]]:
    """EUC-TW file names (8 hex digits, `8ea<plane>` + code) -> one Unicode character each, or None.

    Python has no EUC-TW codec; glibc's `iconv` has. Plane 1 decodes without its 8ea1 prefix.
    """
    raws = [bytes.fromhex(name[4:8] if name[:4] == "8ea1" else name[:8]) for name in names]
    try:
        done = subprocess.run(
            ["iconv", "-c", "-f", "EUC-TW", "-t", "UTF-8"],
            input=b"\n".join(raws) + b"\n",
            capture_output=True,
            check=False,
        )
    except OSError as error:
        raise DataError(f"cns: the iconv program (glibc) is needed to map EUC-TW names: {error}") from None
    lines = done.stdout.decode("utf-8").split("\n")[: len(raws)]
    if len(lines) != len(raws):
        raise DataError(f"cns: iconv returned {len(lines)} names for {len(raws)}")
    return [line if len(line) == 1 else None for line in lines]


def cns_files(root: str = CNS_ROOT) -> list[tuple[str, int, int]]:
    """(path, code point, plane) of every Hanzi bitmap of planes 1-3, in sorted path order."""
    found = []
    for plane in CNS_PLANES:
        folder = os.path.join(root, f"a{plane}")
        if not os.path.isdir(folder):
            raise DataError(f"cns: no plane directory {folder} (apt-get install fonts-cns11643-pixmaps)")
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png") and len(n) == 12)
        for name, char in zip(names, euc_tw_to_unicode([n[:8].lower() for n in names])):
            if char and unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH"):
                found.append((os.path.join(folder, name), ord(char), plane))
    return sorted(found)


def load_cns_glyph(path: str, size: int) -> np.ndarray:
    """A CNS bitmap (black on white, 24 px) as white ink on black like the rendered glyphs, size x size."""
    return 255 - load_image(path, size, 1, crop="center")
