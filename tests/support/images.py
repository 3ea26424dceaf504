"""Real image files for tests: every odd-but-good form, and every kind of bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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


# -- image sets that carry their class ------------------------------------------------------
# The sets above are random patterns: a head can only score chance on them. The sets below
# carry their class in their pixels, so a test can demand accuracy well above chance.

SHAPES = ("circle", "square", "triangle")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def draw_shape(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A light ``kind`` (one of SHAPES) on a dark background: random side (40-85% of the
    image), position and grey levels, so neither brightness nor place gives the class away
    as plainly as the outline does. Its area does differ by class (a triangle covers half
    its box, a circle 79%), one cue among several for a feature extractor."""
    background, foreground = int(rng.integers(0, 100)), int(rng.integers(160, 256))
    image = Image.new("RGB", (size, size), (background,) * 3)
    side = int(rng.integers(int(0.4 * size), int(0.85 * size) + 1))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    box = (x, y, x + side - 1, y + side - 1)
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        draw.ellipse(box, fill=(foreground,) * 3)
    elif kind == "square":
        draw.rectangle(box, fill=(foreground,) * 3)
    elif kind == "triangle":
        apex = (x + (side - 1) / 2, y)
        draw.polygon(
            [(x, y + side - 1), (x + side - 1, y + side - 1), apex], fill=(foreground,) * 3
        )
    else:
        raise ValueError(kind)
    return image


def make_shapes(root: Path, per_class: int, *, seed: int = 0, size: int = 32) -> list[Path]:
    """A ``root/<shape>/<file>.png`` tree: ``per_class`` drawn images of each of SHAPES."""
    rng = np.random.default_rng(seed)
    written = []
    for i in range(per_class):
        for kind in SHAPES:  # interleaved: every class sees the same stretch of the RNG
            path = root / kind / f"{kind}{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_shape(kind, rng, size).save(path, format="PNG")
            written.append(path)
    return written


def fashion_mnist_folder() -> Path | None:
    """The folder of Fashion-MNIST's IDX files (Debian's dataset-fashion-mnist), or None."""
    return FASHION_MNIST if (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists() else None


def make_fashion_mnist(root: Path, per_class: int, folder: Path = FASHION_MNIST) -> list[Path]:
    """A ``root/<class>/<file>.png`` tree of the first ``per_class`` images of every class
    of Fashion-MNIST's test file, written as real PNG files (28x28 greyscale)."""
    from transfer_pipe.data.idx import FASHION_MNIST_CLASSES, read_idx

    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    written = []
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        for index in np.flatnonzero(labels == label)[:per_class]:
            path = root / name.replace("/", "-") / f"{index:05d}.png"  # "T-shirt/top"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(path, format="PNG")
            written.append(path)
    return written


def beyond_luck(rows: int, rate: float, odds: float = 1e-3) -> float:
    """The accuracy on ``rows`` test rows that a classifier right on each row with
    probability ``rate`` (chance: 1 / classes; or another model's accuracy) reaches with
    probability at most ``odds``. An accuracy at or above it is not luck."""
    from scipy.stats import binom

    return float(binom.isf(odds, rows, rate) + 1) / rows
