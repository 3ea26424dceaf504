"""Real image files for tests: every odd-but-good form, and every kind of bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_KINDS = ("png", "jpeg", "gray", "palette", "rgba", "cmyk", "png16", "gif_animated", "exif")
BAD_FILES = {
    "empty.png": b"",
    "notes.png": b"this is a text file, not an image\n",
}


def _pattern(seed: int, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8))


def write_image(path: Path, seed: int, kind: str = "png") -> Path:
    """Write one real image file of the given kind; the pixels depend on ``seed``."""
    pixels = _pattern(seed)
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        image.save(path, format="PNG")
    elif kind == "jpeg":
        image.save(path, format="JPEG", quality=95)
    elif kind == "gray":
        image.convert("L").save(path, format="PNG")
    elif kind == "palette":
        image.convert("P").save(path, format="PNG")
    elif kind == "rgba":
        rgba = image.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path, format="PNG")
    elif kind == "cmyk":
        image.convert("CMYK").save(path, format="JPEG")
    elif kind == "png16":
        gray16 = (pixels[..., 0].astype(np.uint16) * 257).astype(np.uint16)
        Image.fromarray(gray16).save(path, format="PNG")
    elif kind == "gif_animated":
        frames = [image.convert("P"), Image.fromarray(255 - pixels).convert("P")]
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        image.save(path, format="JPEG", exif=exif.tobytes())
    else:
        raise ValueError(kind)
    return path


def truncated_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pattern(seed, 64)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def make_dataset(
    root: Path, classes: int = 3, per_class: int = 6, *, bad: bool = True, start: int = 0
) -> list[Path]:
    """A ``root/<class>/<file>`` tree of real images of all good kinds, plus bad files."""
    written = []
    for c in range(classes):
        for i in range(start, start + per_class):
            kind = GOOD_KINDS[(c * per_class + i) % len(GOOD_KINDS)]
            suffix = (
                ".jpg" if kind in ("jpeg", "cmyk", "exif") else ".gif" if "gif" in kind else ".png"
            )
            written.append(
                write_image(root / f"class{c}" / f"img{i:04d}{suffix}", 1000 * c + i, kind)
            )
    if bad:
        for name, data in BAD_FILES.items():
            (root / "class0" / name).write_bytes(data)
            written.append(root / "class0" / name)
        second, last = root / f"class{min(1, classes - 1)}", root / f"class{classes - 1}"
        (second / "truncated.jpg").write_bytes(truncated_jpeg(7))
        written.append(second / "truncated.jpg")
        bomb = last / "bomb.png"
        # A real PNG whose header claims far more pixels than the decoder allows.
        Image.new("1", (20_000, 10_000)).save(bomb, format="PNG")
        written.append(bomb)
    return written
