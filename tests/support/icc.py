"""Real ICC colour profiles written at run time (nothing is downloaded): the RGB spaces
that phones and cameras embed in their photos, as matrix/TRC display profiles (ICC v2.1,
the form such photos carry), and a reference conversion to sRGB computed here in numpy,
independently of LittleCMS, to check a decoder's colour management against.

    p3 = rgb_profile(DISPLAY_P3)                 # bytes, for Image.save(icc_profile=...)
    expected = to_srgb(pixels, DISPLAY_P3)       # uint8 [..., 3]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

D50 = (0.9642, 1.0, 0.8249)  # the ICC profile connection space's white
D65_XY = (0.3127, 0.3290)
# Bradford cone response matrix: how ICC profiles adapt colorants from D65 to D50.
BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


@dataclass(frozen=True)
class RgbSpace:
    name: str
    primaries: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]  # R, G, B xy
    gamma: float | None  # a pure power curve; None: the sRGB curve

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """Encoded values in [0, 1] -> linear light."""
        if self.gamma is not None:
            return np.power(encoded, self.gamma)
        return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)


SRGB = RgbSpace("sRGB", ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), None)
DISPLAY_P3 = RgbSpace("Display P3", ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)), None)
ADOBE_RGB = RgbSpace("Adobe RGB (1998)", ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06)), 563 / 256)


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz(space: RgbSpace) -> np.ndarray:
    """Linear RGB -> XYZ (D65 white, Y of white = 1)."""
    columns = np.stack([_xyz(*xy) for xy in space.primaries], axis=1)
    scale = np.linalg.solve(columns, _xyz(*D65_XY))
    return columns * scale


def _to_d50(matrix: np.ndarray) -> np.ndarray:
    cone = BRADFORD @ _xyz(*D65_XY), BRADFORD @ np.array(D50)
    adapt = np.linalg.inv(BRADFORD) @ np.diag(cone[1] / cone[0]) @ BRADFORD
    return adapt @ matrix


def to_srgb(pixels: np.ndarray, space: RgbSpace) -> np.ndarray:
    """uint8 pixels in ``space`` -> uint8 sRGB (relative colorimetric, clipped)."""
    linear = space.decode(pixels.astype(np.float64) / 255.0)
    convert = np.linalg.inv(rgb_to_xyz(SRGB)) @ rgb_to_xyz(space)
    out = np.clip(linear @ convert.T, 0.0, 1.0)
    encoded = np.where(out <= 0.0031308, out * 12.92, 1.055 * out ** (1 / 2.4) - 0.055)
    return np.rint(encoded * 255.0).astype(np.uint8)


# -- the ICC file ------------------------------------------------------------------------


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(values: np.ndarray | tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(float(v)) for v in values)


def _curve_tag(space: RgbSpace) -> bytes:
    if space.gamma is not None:  # one entry: a u8Fixed8 gamma
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(space.gamma * 256))
    table = space.decode(np.linspace(0.0, 1.0, 1024))
    entries = np.rint(table * 65535).astype(">u2").tobytes()
    return b"curv\0\0\0\0" + struct.pack(">I", 1024) + entries


def _text_tag(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    # ASCII part, then empty Unicode and ScriptCode parts (67 bytes of the latter).
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0" * 70


def rgb_profile(space: RgbSpace, description: str | None = None) -> bytes:
    """An ICC v2.1 RGB display profile of ``space`` (its colorants adapted to D50)."""
    colorants = _to_d50(rgb_to_xyz(space))
    curve = _curve_tag(space)
    tags = [
        (b"desc", _desc_tag(description or space.name)),
        (b"cprt", _text_tag("No copyright, use freely")),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(colorants[:, 0])),
        (b"gXYZ", _xyz_tag(colorants[:, 1])),
        (b"bXYZ", _xyz_tag(colorants[:, 2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = [struct.pack(">I", len(tags))], []
    for signature, body in tags:
        table.append(signature + struct.pack(">II", offset, len(body)))
        padded = body + b"\0" * (-len(body) % 4)
        data.append(padded)
        offset += len(padded)
    header = struct.pack(">I", offset) + b"lcms" + struct.pack(">I", 0x02100000)
    header += b"mntrRGB XYZ " + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp"
    header += b"\0" * 24 + struct.pack(">I", 0)  # platform .. attributes; perceptual intent
    header += b"".join(_s15(v) for v in D50) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28
    assert len(header) == 128
    return header + b"".join(table) + b"".join(data)
