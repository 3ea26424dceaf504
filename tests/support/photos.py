"""Photographs as people have them, made at run time from the real photographs that
scikit-learn and scikit-image ship (nothing is downloaded): crops at the sizes of an
ImageNet-like folder (around 500 x 375) and of 12-megapixel phone photos, written as
baseline and progressive JPEG, with EXIF orientations, with embedded Display P3 and Adobe
RGB profiles (pixels stored in that space, so that a decoder that ignores the profile gets
other colours), and as HEIC, WebP and AVIF, each by its own encoder.

Each source photograph is a class: a crop of it is labelled with the photo it came from,
a task a probe can learn and a decoder can spoil.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from tests.support.icc import ADOBE_RGB, DISPLAY_P3, SRGB, RgbSpace, rgb_profile

# (size class, width, height): the shapes of a photo folder; portrait ones are swapped.
IMAGENET_SIZES = ((500, 375), (500, 333), (400, 300), (500, 400), (640, 480))
PHONE_SIZE = (4032, 3024)  # 12 megapixels
LARGE_SIZES = ((1600, 1200), (2048, 1536), (1920, 1280))  # cameras' and web originals
KINDS = ("jpeg", "progressive", "exif", "p3", "adobe", "heic", "webp", "avif")
SUFFIX = {"heic": ".heic", "webp": ".webp", "avif": ".avif"}
EXIF_ORIENTATION = 0x0112


# The colour photographs among scikit-image's bundled files (read as files: its data API
# would fetch others from the network).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)


@cache
def source_photos() -> dict[str, np.ndarray]:
    """The colour photographs both libraries ship, uint8 RGB, by name."""
    from sklearn.datasets import load_sample_image

    photos = {name: load_sample_image(f"{name}.jpg") for name in ("china", "flower")}
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "pip install scikit-image"
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    for file in SKIMAGE_PHOTOS:
        with Image.open(folder / file) as image:
            photos[file.split(".")[0]] = np.asarray(image.convert("RGB"))
    return photos


def crop(rng: np.random.Generator, photo: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A random crop of ``photo`` (40-90 % of its shorter side, the target's aspect),
    resized to ``size``; flipped half the time. Sizes above the photo's are upscaled, with
    a little sensor grain so that they compress like photographs, not like smooth paint."""
    height, width = photo.shape[:2]
    aspect = size[0] / size[1]
    side = rng.uniform(0.4, 0.9) * min(width / aspect, height)
    w, h = min(width, int(side * aspect)), min(height, int(side))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = Image.fromarray(photo[top : top + h, left : left + w]).resize(
        size, Image.Resampling.BICUBIC
    )
    if size[0] > w:
        grain = rng.normal(0.0, 3.0, (size[1], size[0], 3))
        noisy = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255)
        image = Image.fromarray(noisy.astype(np.uint8))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


@cache
def _transform(space_name: str) -> ImageCms.ImageCmsTransform:
    space = {DISPLAY_P3.name: DISPLAY_P3, ADOBE_RGB.name: ADOBE_RGB}[space_name]
    source = ImageCms.ImageCmsProfile(io.BytesIO(rgb_profile(SRGB)))
    target = ImageCms.ImageCmsProfile(io.BytesIO(rgb_profile(space)))
    return ImageCms.buildTransform(source, target, "RGB", "RGB")


def in_space(image: Image.Image, space: RgbSpace) -> Image.Image:
    """``image`` (sRGB) with its pixels re-encoded in ``space``: what a camera set to that
    space writes, so that decoding with the embedded profile gives ``image`` back."""
    converted = ImageCms.applyTransform(image, _transform(space.name))
    assert converted is not None  # not in place: a new image
    return converted


def encode(image: Image.Image, kind: str, quality: int = 90) -> bytes:
    """``image`` as the bytes of a file of ``kind`` (see ``KINDS``; "png" too)."""
    out = io.BytesIO()
    if kind in ("jpeg", "progressive"):
        image.save(out, "JPEG", quality=quality, progressive=kind == "progressive")
    elif kind == "exif":  # stored a quarter turn off, with the tag that turns it back
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
        stored = image.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
        stored.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    elif kind in ("p3", "adobe"):
        space = DISPLAY_P3 if kind == "p3" else ADOBE_RGB
        in_space(image, space).save(out, "JPEG", quality=quality, icc_profile=rgb_profile(space))
    elif kind == "heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
        image.save(out, "HEIF", quality=quality)
    elif kind == "webp":
        image.save(out, "WEBP", quality=quality)
    elif kind == "avif":
        image.save(out, "AVIF", quality=quality)
    elif kind == "png":
        image.save(out, "PNG")
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return out.getvalue()


@dataclass(frozen=True)
class Photo:
    path: Path
    label: str  # the source photograph
    kind: str
    size: tuple[int, int]


def photo_sizes(rng: np.random.Generator, size_class: str) -> tuple[int, int]:
    if size_class == "phone":
        width, height = PHONE_SIZE
    elif size_class == "large":
        width, height = LARGE_SIZES[int(rng.integers(len(LARGE_SIZES)))]
    else:
        width, height = IMAGENET_SIZES[int(rng.integers(len(IMAGENET_SIZES)))]
    return (height, width) if rng.random() < 0.25 else (width, height)  # some portrait


def make_photos(
    root: Path,
    per_class: int,
    *,
    kinds: Sequence[str] = ("jpeg",),
    size_class: str = "imagenet",
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Photo]:
    """``root/<source>/<n>.<ext>``: ``per_class`` crops of each source photo, the kinds
    taken in turn; returns what was written."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    written = []
    for label in classes or sorted(photos):
        for n in range(per_class):
            kind = kinds[n % len(kinds)]
            size = photo_sizes(rng, size_class)
            path = root / label / f"{n:04d}{SUFFIX.get(kind, '.png' if kind == 'png' else '.jpg')}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(crop(rng, photos[label], size), kind))
            written.append(Photo(path, label, kind, size))
    return written
