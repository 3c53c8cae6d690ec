"""Real image files from the Debian packages `make setup` installs, covering every PIL mode they hold.

openclipart-png (about 8,100 clip-art PNGs) and tuxpaint-stamps-default (Tux Paint stamps with
one-line descriptions) hold RGBA, LA, L, RGB, P and P-with-transparency PNGs; JPEG, CMYK and 16-bit
files are made from them (re-encoded, as users' photo collections are).
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

from PIL import Image

OPENCLIPART = Path("/usr/share/openclipart/png")
TUXPAINT = Path("/usr/share/tuxpaint/stamps")


@lru_cache(maxsize=1)
def by_mode(per_mode: int = 6, max_bytes: int = 150_000) -> Dict[Tuple[str, bool], List[Path]]:
    """Up to `per_mode` small files per (PIL mode, has transparency), from both packages, in name order."""
    assert OPENCLIPART.is_dir() and TUXPAINT.is_dir(), "install openclipart-png and tuxpaint-stamps-default (make setup)"
    found: Dict[Tuple[str, bool], List[Path]] = {}
    for root in (OPENCLIPART, TUXPAINT):
        for path in sorted(root.rglob("*.png")):
            if path.stat().st_size > max_bytes:
                continue
            with Image.open(path) as img:
                key = (img.mode, "transparency" in img.info)
            bucket = found.setdefault(key, [])
            if sum(1 for p in bucket if p.is_relative_to(root)) < per_mode:
                bucket.append(path)
    return found


def sample_files() -> List[Path]:
    """Every file of `by_mode`, in a fixed order."""
    return [p for key in sorted(by_mode()) for p in by_mode()[key]]


def reencoded(tmp: Path) -> List[Path]:
    """JPEG (RGB and CMYK) and 16-bit greyscale PNG versions of a few real clip-art files."""
    out = []
    sources = [p for key in sorted(by_mode()) for p in by_mode()[key][:2]]
    for k, src in enumerate(sources):
        with Image.open(src) as img:
            rgb = img.convert("RGB")
        out.append(tmp / f"rgb_{k}.jpg")
        rgb.save(out[-1], quality=90)
        if k % 3 == 0:
            out.append(tmp / f"cmyk_{k}.jpg")
            rgb.convert("CMYK").save(out[-1], quality=90)
        if k % 3 == 1:
            out.append(tmp / f"grey16_{k}.png")
            rgb.convert("L").point(lambda v: v * 256, mode="I").convert("I;16").save(out[-1])
    return out


def bomb_png(path: Path, width: int = 25_000, height: int = 24_937) -> Path:
    """A PNG whose header claims `width` x `height` pixels (623 megapixels by default: PIL refuses it as a
    decompression bomb before reading any pixel), with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path
