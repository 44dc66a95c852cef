"""Turning one plankton crop into a fixed-size array.

Plankton crops are one object on a flat background, in any orientation, and the object's
size in pixels means something (ISIIS and SPC images are taken at a fixed magnification).
So preprocessing (1) decodes any common mode to 8-bit, (2) makes the background dark and the
object bright whatever the instrument, (2b) optionally (`background="normalise"`, the default of
new preparations) removes what the instrument and its processing add to the background: the
border's median level is subtracted, pixels within a few robust spreads of it (sensor noise,
JPEG ringing) become background, and the object is scaled so that a high percentile of its
pixels lands on 255, so a white, grey or noisy background gives the same dark background and the
object keeps its relative brightness, (3) pads to a square with the background value, and
(4) either fits the square to S×S (`fit`) or keeps native pixel size on an S×S canvas,
shrinking every image of the dataset by one common factor (`keep-scale`), so relative size
survives.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from plankdiff.choices import NOISE_CEILING, Background, Markers, SizeMode

MIN_SIDE = 2
MAX_SIDE = 10_000
# Decoding is refused above this many pixels, read from the header before any pixel is decoded:
# preprocessing holds a few float copies of an image, so 16 Mpx keeps one worker under ~1 GB
# (plankton crops are far smaller; a 10,000² PNG of a few KB would otherwise take GBs).
MAX_PIXELS = 16_000_000
# What new preparations use (`prepare`, `data prepare --background`), through `default_background`.
# `PreprocessParams` itself defaults to "none" because that is what a record written before the
# field existed means: an old prepare.json or classifier card read back must keep preprocessing
# exactly as it was trained.
DEFAULT_BACKGROUND: Background = "normalise"
# Likewise for corner markers (`default_markers`): removed in new preparations with a normalised
# background, where the object mask exists. The `markers` study measured it on NDSB: the corner-disc
# shift costs 4-8 points instead of 11-25, validation macro-F1 moves -1.7 to +1.5 (no measurable
# cost; docs/results/robustness.md, "Scale-marker removal measured").
DEFAULT_MARKERS: Markers = "remove"
# Background normalisation constants (see `normalise_background`).
# Pixels within NOISE_SPREADS robust standard deviations of the border median are background: 3
# keeps 99.9 % of Gaussian noise pixels out of the object (one-sided) while a faint object part
# a few noise levels above the background survives.
NOISE_SPREADS = 3.0
# On a flat border (spread 0) this many grey levels above it are still background: JPEG ringing
# and the last bit of a resampled edge, not object.
MIN_OBJECT_STEP = 4.0
# The object's brightness reference: a high percentile of its pixels rather than the maximum, so
# a few hot pixels or a small marker do not set the scale.
OBJECT_PERCENTILE = 99.0
# At most this gain: a nearly blank image (an empty frame, a faint speck) is not blown up into
# full-range noise. 8 still restores an object whose contrast was cut to an eighth.
MAX_GAIN = 8.0
# Corner markers (`markers="remove"`): a part of the object mask separate from the largest part,
# smaller than MARKER_MAX_SHARE of its area and lying wholly within CORNER_SHARE of the width and of
# the height from one corner, is a scale marker or a label burnt in by the instrument's software,
# not the organism. Separate parts elsewhere (chains, colonies, detached appendages) are kept.
MARKER_MAX_SHARE = 0.25
CORNER_SHARE = 0.3


MIN_SIZE, MAX_SIZE = 8, 1024  # the square side S in pixels
CHANNELS = (1, 3)


class ImageRejected(ValueError):
    """One image that cannot be used; the message is the reason written to the skip report."""


@dataclass(frozen=True)
class PreprocessParams:
    size: int = 32
    mode: SizeMode = "fit"
    channels: int = 1
    normalise_polarity: bool = True
    # keep-scale: every image is multiplied by this one factor (<= 1) before pasting;
    # objects still larger than the canvas are shrunk to fit and flagged.
    scale_factor: float = 1.0
    # "none" here, not DEFAULT_BACKGROUND: see the comment at DEFAULT_BACKGROUND.
    background: Background = "none"
    # "remove" needs background normalisation (it works on its object mask); "keep" is what every
    # record written before the field existed means.
    markers: Markers = "keep"
    # The ceiling on the border's noise spread (`NOISE_CEILING`); None, no ceiling, is what every
    # record written before the field existed means.
    noise_ceiling: float | None = None

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"--size {self.size}: must be between {MIN_SIZE} and {MAX_SIZE} pixels")
        if self.channels not in CHANNELS:
            raise ValueError(f"--channels {self.channels}: must be 1 or 3")
        if self.mode not in ("fit", "keep-scale"):
            raise ValueError(f"--mode {self.mode!r}: must be 'fit' or 'keep-scale'")
        if not 0 < self.scale_factor <= 1:
            raise ValueError(f"scale_factor {self.scale_factor}: must be in (0, 1]")
        if self.background not in ("none", "normalise"):
            raise ValueError(f"background must be 'none' or 'normalise', got {self.background!r}")
        if self.markers not in ("keep", "remove"):
            raise ValueError(f"markers must be 'keep' or 'remove', got {self.markers!r}")
        check_noise_ceiling(self.noise_ceiling)
        if self.markers == "remove" and self.background != "normalise":
            raise ValueError(
                "removing corner markers needs background normalisation (--background normalise)"
            )
        if self.background == "normalise" and not self.normalise_polarity:
            # The normalisation keeps what is brighter than the background: it needs a dark background.
            raise ValueError("background normalisation needs polarity normalisation (drop --no-polarity)")


def check_noise_ceiling(noise_ceiling: float | None) -> None:
    """A ceiling on the border's noise spread must be above 0: at 0 every grey background's noise
    would count as object (None is no ceiling)."""
    if noise_ceiling is not None and not noise_ceiling > 0:
        raise ValueError(f"--noise-ceiling {noise_ceiling:g}: must be above 0 grey levels (none: no ceiling)")


def default_background(normalise_polarity: bool) -> Background:
    """The background setting of a new preparation that did not choose one: normalised, except
    where polarity is kept as recorded (the normalisation needs a dark background, and a
    no-polarity ablation should change one thing only)."""
    return DEFAULT_BACKGROUND if normalise_polarity else "none"


def default_markers(background: Background) -> Markers:
    """The marker setting of a new preparation that did not choose one: removed where the
    background is normalised (removal works on its object mask), kept otherwise."""
    return DEFAULT_MARKERS if background == "normalise" else "keep"


def params_record(params: PreprocessParams) -> dict:
    """The parameters as stored in prepare.json (and so in the preparation's key and a classifier's
    card). `background="none"` is left out, as records made before the field existed lack it: those
    preparations keep their key, and reading any record back with `PreprocessParams(**record)` gives
    the preprocessing it was made with."""
    record = asdict(params)
    if params.background == "none":
        del record["background"]
    if params.markers == "keep":  # likewise: records made before the field existed lack it
        del record["markers"]
    if params.noise_ceiling is None:  # likewise
        del record["noise_ceiling"]
    return record


@dataclass
class Prepared:
    pixels: np.ndarray  # uint8 [C, S, S]
    width: int  # of the decoded file
    height: int
    inverted: bool
    object_area: float  # foreground pixels, in original-resolution pixels
    clipped: bool  # keep-scale only: the object had to be shrunk beyond the common factor


def decode(data: bytes) -> Image.Image:
    """Decode any supported file to an 8-bit 'L', 'RGB' image (alpha is flattened onto black)."""
    if not data:
        raise ImageRejected("zero-byte file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # PIL's own guard, when a caller left it on
        raise ImageRejected(f"too many pixels: {error}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as error:  # header cut short: "Truncated File Read"
        raise ImageRejected(f"unreadable or truncated image data: {error}") from None
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(f"too small: {width}×{height} px (minimum side {MIN_SIDE})")
    if max(width, height) > MAX_SIDE:
        raise ImageRejected(f"too large: {width}×{height} px (maximum side {MAX_SIDE})")
    if width * height > MAX_PIXELS:
        raise ImageRejected(f"too many pixels: {width}×{height} px (maximum {MAX_PIXELS:,})")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"unreadable or truncated image data: {error}") from None
    return _to_8bit(image)


def _to_8bit(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (0, 0, 0))
        background.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        return background
    if mode in ("L", "RGB"):
        return image
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def border_values(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def border_level(gray: np.ndarray, *, noise_ceiling: float | None = None) -> tuple[float, float]:
    """The background read from the image border: median and robust spread (a Gaussian σ), both
    unmoved by an object touching up to half of the border (median, 1.4826 × MAD).

    Where the background sits on 0 or 255 its noise is clipped on one side, and the MAD (then mostly
    zeros) misses it: where a quarter of the border is at the clip value, the spread is read from the
    other side (the 75th percentile's distance from the median, / 0.6745).

    `noise_ceiling`: the spread is at most this (`NOISE_CEILING`): an object covering much of the
    border makes the spread huge, and the object step would then exceed every pixel."""
    border = border_values(gray).astype(np.float64)
    level = float(np.median(border))
    spread = 1.4826 * float(np.median(np.abs(border - level)))
    if np.mean(border <= 0) >= 0.25:
        spread = max(spread, float(np.percentile(border, 75) - level) / 0.6745)
    elif np.mean(border >= 255) >= 0.25:
        spread = max(spread, float(level - np.percentile(border, 25)) / 0.6745)
    if noise_ceiling is not None:
        spread = min(spread, noise_ceiling)
    return level, spread


def object_step(spread: float) -> float:
    """How far above the background level a pixel must be to count as object."""
    return max(NOISE_SPREADS * spread, MIN_OBJECT_STEP)


def object_is_darker(gray: np.ndarray, level: float, spread: float) -> bool:
    """Polarity from the object, not from the background's absolute level: a mid-grey background
    (an instrument's other processing) sits on both sides of any fixed threshold, but the object
    still departs from it mostly one way. Compares the summed departures below and above the
    background beyond the noise band. Where nothing departs beyond it (a blank frame, or an object
    covering so much of the border that the spread is huge), the background's level decides, as
    without normalisation (found on an NDSB tunicate_partial crop filling 65 % of its frame)."""
    step = object_step(spread)
    departure = gray.astype(np.float64) - level
    below = np.clip(-departure - step, 0, None).sum()
    above = np.clip(departure - step, 0, None).sum()
    if below == above:
        return level > 127.5
    return bool(below > above)


def corner_markers(is_object: np.ndarray) -> np.ndarray:
    """The pixels of `is_object` [H, W] that belong to corner markers (see MARKER_MAX_SHARE)."""
    parts, count = ndimage.label(is_object, structure=np.ones((3, 3)))
    markers = np.zeros_like(is_object, dtype=bool)
    if count < 2:
        return markers
    sizes = np.bincount(parts.ravel())
    largest = 1 + int(np.argmax(sizes[1:]))
    height, width = is_object.shape
    near = (CORNER_SHARE * height, CORNER_SHARE * width)
    for label, (rows, cols) in enumerate(ndimage.find_objects(parts), start=1):
        if label == largest or sizes[label] > MARKER_MAX_SHARE * sizes[largest]:
            continue
        in_rows = rows.stop <= near[0] or rows.start >= height - near[0]
        in_cols = cols.stop <= near[1] or cols.start >= width - near[1]
        if in_rows and in_cols:
            markers |= parts == label
    return markers


def normalise_background(
    array: np.ndarray, *, markers: Markers = "keep", noise_ceiling: float | None = None
) -> np.ndarray:
    """uint8 [H, W, C] with a dark background (after polarity) -> the same with background 0 and a
    high object percentile at 255: subtract each channel's border median, set what lies within the
    noise band of the background to 0, scale by 255 / the object's `OBJECT_PERCENTILE` percentile
    (gain at most `MAX_GAIN`). A blank image (no pixel beyond the noise band) becomes all zeros.
    `markers="remove"`: corner markers (`corner_markers`) become background first.
    `noise_ceiling`: the most noise the border may claim (`border_level`)."""
    gray = array.mean(axis=2)
    level, spread = border_level(gray, noise_ceiling=noise_ceiling)
    above = gray - level
    is_object = above > object_step(spread)
    if markers == "remove":
        is_object &= ~corner_markers(is_object)
    if not is_object.any():
        return np.zeros_like(array)
    # The brightness reference is the largest connected part of the object: a scale marker or a
    # speck elsewhere in the frame must not set the contrast of the organism.
    parts, count = ndimage.label(is_object, structure=np.ones((3, 3)))
    largest = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:])) if count > 1 else is_object
    # > object_step >= MIN_OBJECT_STEP > 0, so the division is safe.
    peak = float(np.percentile(above[largest], OBJECT_PERCENTILE))
    gain = min(255.0 / peak, MAX_GAIN)
    channel_levels = np.median(
        np.stack([border_values(array[:, :, c]) for c in range(array.shape[2])], axis=1), axis=0
    )
    scaled = (array.astype(np.float32) - channel_levels.astype(np.float32)) * gain
    scaled[~is_object] = 0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def preprocess(
    image: Image.Image, params: PreprocessParams, orig_size: tuple[int, int] | None = None
) -> Prepared:
    """`orig_size` is the size before any downscaling by the data's packager, for keep-scale and metadata."""
    width, height = image.size
    orig_w, orig_h = orig_size or (width, height)
    target_mode = "L" if params.channels == 1 else "RGB"
    array = np.asarray(image.convert(target_mode), dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    gray = array.mean(axis=2)
    background = float(np.median(border_values(gray)))
    if params.background == "normalise":
        level, spread = border_level(gray, noise_ceiling=params.noise_ceiling)
        inverted = params.normalise_polarity and object_is_darker(gray, level, spread)
    else:
        inverted = params.normalise_polarity and background > 127.5
    if inverted:
        array = 255 - array
        gray = 255.0 - gray
        background = 255.0 - background
    if params.background == "normalise":
        # Before the object area is measured, so that noise on a grey background is not counted.
        array = normalise_background(array, markers=params.markers, noise_ceiling=params.noise_ceiling)
        gray, background = array.mean(axis=2), 0.0
    foreground = np.abs(gray - background) > 24
    object_area = float(foreground.sum()) * (orig_w * orig_h) / (width * height)
    fill = tuple(int(np.median(border_values(array[:, :, c]))) for c in range(array.shape[2]))

    side = max(width, height)
    square = np.empty((side, side, array.shape[2]), dtype=np.uint8)
    square[:] = np.asarray(fill, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = array
    pil_mode = "L" if params.channels == 1 else "RGB"
    square_image = Image.fromarray(square[:, :, 0] if params.channels == 1 else square, pil_mode)

    clipped = False
    if params.mode == "fit":
        out = square_image.resize((params.size, params.size), Image.Resampling.BILINEAR)
    else:
        # The square's side in original pixels, times the dataset's common factor.
        native_side = max(orig_w, orig_h) * params.scale_factor
        target = max(1, round(native_side))
        if target > params.size:
            target, clipped = params.size, True
        resized = square_image.resize((target, target), Image.Resampling.BILINEAR)
        out = Image.new(pil_mode, (params.size, params.size), fill[0] if params.channels == 1 else fill)
        offset = (params.size - target) // 2
        out.paste(resized, (offset, offset))
    pixels = np.asarray(out, dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return Prepared(np.ascontiguousarray(pixels), width, height, inverted, object_area, clipped)


def keep_scale_factor(longest_sides: np.ndarray, size: int, quantile: float = 0.95) -> float:
    """One factor for the whole dataset: the `quantile` of longest sides lands exactly on the canvas."""
    if len(longest_sides) == 0:
        return 1.0
    reference = float(np.quantile(np.asarray(longest_sides, dtype=np.float64), quantile))
    return 1.0 if reference <= size else size / reference


def log_size_features(width: np.ndarray, height: np.ndarray, area: np.ndarray) -> np.ndarray:
    """log of original width, height and object area: the size cue an SPC or ISIIS image carries."""
    return np.stack([np.log1p(width), np.log1p(height), np.log1p(np.maximum(area, 0))], axis=1).astype(
        np.float32
    )


def describe(params: PreprocessParams) -> str:
    extra = f", common factor {params.scale_factor:.4g}" if params.mode == "keep-scale" else ""
    polarity = "dark background" if params.normalise_polarity else "polarity as recorded"
    if params.background == "normalise":
        polarity += ", background and contrast normalised"
    if params.markers == "remove":
        polarity += ", corner markers removed"
    if params.background == "normalise" and params.noise_ceiling is not None:
        polarity += f", border noise at most {params.noise_ceiling:g} grey levels"
    return f"{params.size}×{params.size} {params.mode}, {params.channels} channel(s), {polarity}{extra}"


__all__ = [
    "DEFAULT_BACKGROUND",
    "DEFAULT_MARKERS",
    "NOISE_CEILING",
    "Background",
    "ImageRejected",
    "PreprocessParams",
    "Prepared",
    "border_level",
    "check_noise_ceiling",
    "corner_markers",
    "decode",
    "default_background",
    "default_markers",
    "normalise_background",
    "preprocess",
    "keep_scale_factor",
    "log_size_features",
    "params_record",
    "describe",
]
