"""Decoding every common image mode to 8 bits, polarity, padding, fit / keep-scale, and rejections."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from plankdiff.data.preprocess import (
    NOISE_CEILING,
    ImageRejected,
    PreprocessParams,
    border_level,
    corner_markers,
    decode,
    default_background,
    describe,
    keep_scale_factor,
    log_size_features,
    params_record,
    preprocess,
)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def blob(
    width: int, height: int, *, background: int, value: int, box: tuple[int, int, int, int]
) -> Image.Image:
    """A flat background with one rectangular object: box = (left, top, right, bottom), exclusive."""
    array = np.full((height, width), background, np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = value
    return Image.fromarray(array, "L")


def foreground(pixels: np.ndarray, background: int, threshold: int = 24) -> int:
    return int((np.abs(pixels.astype(int) - background) > threshold).sum())


# -- decoding --------------------------------------------------------------------------------------


def test_decode_8bit_grayscale_is_unchanged():
    array = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    decoded = decode(encode(Image.fromarray(array, "L"), "PNG"))
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), array)


def test_decode_16bit_grayscale_scales_the_full_range():
    array = np.array([[0, 1000, 32768, 65535]] * 3, dtype=np.uint16)
    data = encode(Image.fromarray(array), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode(data)
    assert decoded.mode == "L"
    # round(v / 65535 * 255): 65535 is white, mid-range is mid-gray, not clipped to 255.
    np.testing.assert_array_equal(np.asarray(decoded)[0], [0, 4, 128, 255])


def test_decode_16bit_tiff():
    decoded = decode(encode(Image.new("I;16", (5, 4), 4000), "TIFF"))
    assert decoded.mode == "L"
    assert np.asarray(decoded)[0, 0] == 16  # round(4000 / 65535 * 255)


def test_decode_rgb_keeps_colour():
    decoded = decode(encode(Image.new("RGB", (5, 4), (10, 200, 30)), "PNG"))
    assert decoded.mode == "RGB"
    assert tuple(np.asarray(decoded)[2, 2]) == (10, 200, 30)


def test_decode_rgba_flattens_alpha_onto_black():
    array = np.zeros((4, 6, 4), np.uint8)
    array[:, :3] = (200, 100, 50, 255)  # opaque half
    array[:, 3:] = (200, 100, 50, 0)  # transparent half
    decoded = decode(encode(Image.fromarray(array, "RGBA"), "PNG"))
    assert decoded.mode == "RGB"
    pixels = np.asarray(decoded)
    assert tuple(pixels[0, 0]) == (200, 100, 50)
    assert tuple(pixels[0, 5]) == (0, 0, 0)


def test_decode_palette_image():
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, 250, 20, 20] + [0] * (254 * 3))
    image.putpixel((0, 0), 0)
    decoded = decode(encode(image, "PNG"))
    assert decoded.mode == "RGB"
    assert tuple(np.asarray(decoded)[1, 1]) == (250, 20, 20)
    assert tuple(np.asarray(decoded)[0, 0]) == (0, 0, 0)


def test_decode_palette_with_transparency_is_flattened():
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, 250, 20, 20] + [0] * (254 * 3))
    image.info["transparency"] = 1
    decoded = decode(encode(image, "PNG"))
    assert tuple(np.asarray(decoded)[1, 1]) == (0, 0, 0)


def test_decode_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode(data)
    assert decoded.mode == "RGB"
    red, green, blue = (int(v) for v in np.asarray(decoded)[4, 4])
    assert red > 200 and green < 50 and blue > 200  # magenta


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "JPEG"])
def test_decode_other_formats(fmt):
    array = np.full((6, 9), 180, np.uint8)
    decoded = decode(encode(Image.fromarray(array, "L"), fmt))
    assert decoded.size == (9, 6)
    assert abs(int(np.asarray(decoded.convert("L"))[3, 4]) - 180) <= 2


def test_decode_bilevel_image():
    image = Image.new("1", (4, 4), 1)
    decoded = decode(encode(image, "BMP"))
    assert decoded.mode == "L"
    assert np.asarray(decoded).max() == 255


# -- rejections ------------------------------------------------------------------------------------


def test_zero_byte_file_is_rejected():
    with pytest.raises(ImageRejected, match="zero-byte file"):
        decode(b"")


def test_text_file_is_rejected():
    with pytest.raises(ImageRejected, match="not an image"):
        decode(b"label,count\ncopepod,3\n")


def test_one_pixel_image_is_rejected():
    with pytest.raises(ImageRejected, match="too small: 1×1 px"):
        decode(encode(Image.new("L", (1, 1)), "PNG"))


def test_very_long_image_is_rejected():
    with pytest.raises(ImageRejected, match="too large: 10001×2 px"):
        decode(encode(Image.new("L", (10001, 2)), "PNG"))


def test_sizes_at_the_limits_are_accepted():
    assert decode(encode(Image.new("L", (2, 2)), "PNG")).size == (2, 2)
    assert decode(encode(Image.new("L", (10000, 2)), "PNG")).size == (10000, 2)


def test_truncated_real_jpeg_is_rejected(small_ndsb_zip):
    with zipfile.ZipFile(small_ndsb_zip) as archive:
        names = [n for n in archive.namelist() if n.endswith(".jpg")]
        data = [archive.read(n) for n in names[:12]]
    for whole in data:
        assert decode(whole).size[0] >= 2
        with pytest.raises(ImageRejected, match="unreadable or truncated|not an image"):
            decode(whole[: len(whole) // 2])


def test_truncated_jpeg_body_is_rejected():
    rng = np.random.default_rng(0)
    whole = encode(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L"), "JPEG")
    with pytest.raises(ImageRejected, match="unreadable or truncated image data"):
        decode(whole[: len(whole) // 2])


# -- polarity and padding ---------------------------------------------------------------------------


def test_dark_object_on_white_is_inverted():
    image = blob(20, 20, background=250, value=30, box=(7, 7, 13, 13))
    prepared = preprocess(image, PreprocessParams(size=20))
    assert prepared.inverted
    pixels = prepared.pixels[0]
    assert pixels[0, 0] == 5 and pixels[-1, -1] == 5  # background now dark
    assert pixels[10, 10] == 225  # object now bright


def test_bright_object_on_dark_is_left_alone():
    image = blob(20, 20, background=10, value=220, box=(7, 7, 13, 13))
    prepared = preprocess(image, PreprocessParams(size=20))
    assert not prepared.inverted
    assert prepared.pixels[0, 0, 0] == 10
    assert prepared.pixels[0, 10, 10] == 220


def test_no_polarity_keeps_a_white_background():
    image = blob(20, 20, background=250, value=30, box=(7, 7, 13, 13))
    prepared = preprocess(image, PreprocessParams(size=20, normalise_polarity=False))
    assert not prepared.inverted
    assert prepared.pixels[0, 0, 0] == 250
    assert prepared.pixels[0, 10, 10] == 30


@pytest.mark.parametrize(("background", "expected_fill"), [(40, 40), (235, 20)])
def test_padding_uses_the_background_value(background, expected_fill):
    # 30 wide, 10 tall: the square gets 10 rows of padding above and below.
    image = blob(30, 10, background=background, value=255 - background, box=(10, 3, 20, 7))
    pixels = preprocess(image, PreprocessParams(size=15, mode="fit")).pixels[0]
    assert pixels.shape == (15, 15)
    np.testing.assert_array_equal(pixels[:4], expected_fill)  # padding rows
    np.testing.assert_array_equal(pixels[-4:], expected_fill)
    assert abs(int(pixels[7, 7]) - expected_fill) > 100  # the object is still there


def test_rgb_padding_uses_each_channel_background():
    array = np.zeros((10, 30, 3), np.uint8)
    array[:] = (5, 30, 60)
    array[3:7, 10:20] = (200, 200, 200)
    prepared = preprocess(Image.fromarray(array, "RGB"), PreprocessParams(size=15, channels=3))
    assert prepared.pixels.shape == (3, 15, 15)
    assert tuple(prepared.pixels[:, 0, 0]) == (5, 30, 60)


# -- fit and keep-scale ----------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(5, 40), (300, 7), (16, 16), (2, 2)])
def test_fit_gives_size_by_size(width, height):
    image = blob(width, height, background=0, value=200, box=(0, 0, 1, 1))
    prepared = preprocess(image, PreprocessParams(size=24, mode="fit"))
    assert prepared.pixels.shape == (1, 24, 24)
    assert prepared.pixels.dtype == np.uint8
    assert (prepared.width, prepared.height) == (width, height)
    assert not prepared.clipped


def test_keep_scale_keeps_a_small_object_at_native_size():
    image = blob(10, 10, background=0, value=200, box=(3, 3, 7, 7))  # 16 object pixels
    prepared = preprocess(image, PreprocessParams(size=32, mode="keep-scale"))
    assert prepared.pixels.shape == (1, 32, 32)
    assert not prepared.clipped
    assert foreground(prepared.pixels[0], 0) == 16
    assert prepared.object_area == 16.0
    # In fit mode the same object would fill a large part of the canvas.
    fitted = preprocess(image, PreprocessParams(size=32, mode="fit"))
    assert foreground(fitted.pixels[0], 0) > 100


def test_keep_scale_shrinks_a_large_object_and_flags_it():
    image = blob(100, 100, background=0, value=200, box=(20, 20, 80, 80))  # 3600 object pixels
    prepared = preprocess(image, PreprocessParams(size=32, mode="keep-scale"))
    assert prepared.clipped
    area = foreground(prepared.pixels[0], 0)
    assert 300 <= area <= 420  # 3600 × (32 / 100)² ≈ 369
    assert prepared.object_area == 3600.0


def test_keep_scale_applies_the_common_factor():
    image = blob(100, 100, background=0, value=200, box=(20, 20, 80, 80))
    prepared = preprocess(image, PreprocessParams(size=32, mode="keep-scale", scale_factor=0.25))
    assert not prepared.clipped
    pixels = prepared.pixels[0]
    # 100 px × 0.25 = 25 px square, centred on the 32 px canvas: 3 px of background each side.
    rows = np.flatnonzero(pixels.max(axis=1) > 24)
    assert 150 <= foreground(pixels, 0) <= 290  # 60 × 0.25 = 15 px object side: ≈ 225
    assert rows.min() >= 3 + 4 and rows.max() <= 32 - 3 - 4


def test_keep_scale_uses_the_original_size_of_a_downscaled_image():
    # The packager halved a 100 px image to 50 px; the common factor 0.25 applies to 100 px.
    image = blob(50, 50, background=0, value=200, box=(10, 10, 40, 40))
    prepared = preprocess(
        image, PreprocessParams(size=32, mode="keep-scale", scale_factor=0.25), orig_size=(100, 100)
    )
    assert not prepared.clipped
    assert 150 <= foreground(prepared.pixels[0], 0) <= 290  # same ≈ 15 px object as above
    assert prepared.object_area == 900 * 4  # counted in original pixels
    assert (prepared.width, prepared.height) == (50, 50)


def test_keep_scale_factor():
    sides = np.arange(1, 101)
    assert keep_scale_factor(sides, 32) == pytest.approx(32 / 95.05)  # 95th percentile = 95.05
    assert keep_scale_factor(sides, 32, quantile=0.5) == pytest.approx(32 / 50.5)
    assert keep_scale_factor(np.array([10, 20, 32]), 32) == 1.0  # never enlarges
    assert keep_scale_factor(np.array([]), 32) == 1.0


def test_params_are_validated():
    with pytest.raises(ValueError, match="--size 4: must be between 8"):
        PreprocessParams(size=4)
    with pytest.raises(ValueError, match="--channels 2: must be 1 or 3"):
        PreprocessParams(channels=2)
    with pytest.raises(ValueError, match="scale_factor"):
        PreprocessParams(scale_factor=1.5)


def test_log_size_features_and_describe():
    features = log_size_features(np.array([0, 9]), np.array([1, 99]), np.array([-5.0, 999.0]))
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, np.log1p([[0, 1, 0], [9, 99, 999]]), rtol=1e-6)
    assert describe(PreprocessParams(size=32, mode="keep-scale", scale_factor=0.5)) == (
        "32×32 keep-scale, 1 channel(s), dark background, common factor 0.5"
    )


# -- background and contrast normalisation ---------------------------------------------------------

NORMALISE = PreprocessParams(size=32, background="normalise")


def organism(height: int = 120, width: int = 90) -> np.ndarray:
    """An object brightness map u in [0, 255] on background 0: an ellipse brighter at its centre
    (120 at the rim to 255 in the middle) with a thin bright appendage, as an organism looks after
    polarity normalisation."""
    yy, xx = np.mgrid[:height, :width]
    radius = ((yy - height / 2) / (height * 0.35)) ** 2 + ((xx - width / 2) / (width * 0.3)) ** 2
    u = np.where(radius < 1, 120 + 135 * (1 - radius), 0.0)
    limb = (np.abs(yy - height / 2) < 2) & (xx > 5) & (xx < width - 5)
    u[limb] = np.maximum(u[limb], 200)
    return u


def on_backgrounds(u: np.ndarray, seed: int = 0) -> dict[str, Image.Image]:
    """The same object as three instruments would record it: dark on white (a shadowgraph), bright
    on black (a dark-field camera), and dark on a mid-grey background with sensor noise (σ = 10),
    whose contrast is then only half of the range."""
    rng = np.random.default_rng(seed)
    grey = 128 - u * 128 / 255 + rng.normal(0, 10, u.shape)
    return {
        "white": Image.fromarray(np.clip(255 - u, 0, 255).astype(np.uint8), "L"),
        "black": Image.fromarray(u.astype(np.uint8), "L"),
        "grey-noisy": Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), "L"),
    }


def test_same_object_on_white_grey_and_black_normalises_to_nearly_the_same_image():
    images = on_backgrounds(organism())
    out = {name: preprocess(image, NORMALISE) for name, image in images.items()}
    reference = out["white"].pixels.astype(int)
    assert reference.max() == 255 and reference[0, 0, 0] == 0
    for name in ("black", "grey-noisy"):
        difference = np.abs(out[name].pixels.astype(int) - reference)
        # Measured: mean 0.1 / 0.9 grey levels, largest 1 / 11 (noise at the object's edge).
        assert difference.mean() < 2.5, name
        assert difference.max() < 40, name
        assert out[name].object_area == pytest.approx(out["white"].object_area, rel=0.02)
    # Without the normalisation the grey background stays grey: far apart (measured mean 103).
    plain = {name: preprocess(image, PreprocessParams(size=32)) for name, image in images.items()}
    assert np.abs(plain["grey-noisy"].pixels.astype(int) - plain["white"].pixels.astype(int)).mean() > 50


def test_normalisation_keeps_the_objects_relative_brightness_and_undoes_halved_contrast():
    u = np.zeros((60, 60))
    u[10:30, 10:50] = 200  # a bright part
    u[30:50, 10:50] = 100  # a part half as bright
    full = preprocess(
        Image.fromarray(u.astype(np.uint8), "L"), PreprocessParams(size=60, background="normalise")
    )
    half = preprocess(
        Image.fromarray((u / 2).astype(np.uint8), "L"), PreprocessParams(size=60, background="normalise")
    )
    pixels = full.pixels[0].astype(int)
    assert pixels[20, 30] == 255 and abs(pixels[40, 30] - 128) <= 1  # 200 -> 255, 100 -> half of it
    assert np.abs(half.pixels.astype(int) - full.pixels.astype(int)).max() <= 2


@pytest.mark.parametrize(("background", "ink", "inverted"), [(131, 40, True), (124, 215, False)])
def test_polarity_follows_the_object_on_a_mid_grey_background(background, ink, inverted):
    # Backgrounds on either side of 127.5: the plain rule would invert the first and keep the second
    # whatever the object; the normalisation reads polarity from the object.
    rng = np.random.default_rng(1)
    array = np.clip(background + rng.normal(0, 8, (40, 40)), 0, 255)
    array[12:28, 12:28] = ink
    prepared = preprocess(
        Image.fromarray(array.astype(np.uint8), "L"), PreprocessParams(size=40, background="normalise")
    )
    assert prepared.inverted is inverted
    pixels = prepared.pixels[0]
    assert pixels[20, 20] == 255  # the object is bright
    assert np.median(pixels[:8]) == 0  # the background is dark


def test_polarity_is_still_right_on_white_and_black():
    dark_on_white = preprocess(blob(20, 20, background=250, value=30, box=(7, 7, 13, 13)), NORMALISE)
    bright_on_dark = preprocess(blob(20, 20, background=10, value=220, box=(7, 7, 13, 13)), NORMALISE)
    assert dark_on_white.inverted and not bright_on_dark.inverted
    for prepared in (dark_on_white, bright_on_dark):
        assert prepared.pixels[0, 0, 0] == 0 and prepared.pixels[0, 16, 16] == 255


def test_polarity_falls_back_to_the_level_where_the_object_fills_the_border(shared_datasets):
    # A real NDSB crop whose dark object fills 65 % of the frame and much of the border: the border
    # spread (126) leaves nothing beyond the noise band, and the white level must decide.
    with zipfile.ZipFile(shared_datasets / "ndsb.zip") as archive:
        image = decode(archive.read("ndsb/tunicate_partial/160426.jpg"))
    assert preprocess(image, NORMALISE).inverted
    assert preprocess(image, PreprocessParams(size=32)).inverted
    assert preprocess(image, CEILING).inverted


@pytest.mark.parametrize("level", [0, 128, 255])
@pytest.mark.parametrize("noise", [0.0, 6.0])
def test_blank_image_does_not_divide_by_zero(level, noise):
    rng = np.random.default_rng(2)
    array = np.clip(level + rng.normal(0, noise, (30, 40)), 0, 255).astype(np.uint8)
    with np.errstate(all="raise"):
        prepared = preprocess(Image.fromarray(array, "L"), NORMALISE)
    assert prepared.pixels.dtype == np.uint8
    # Flat: nothing at all; noisy (clipped at 0 or 255 included): only the rare noise pixel beyond
    # 3 spreads survives, as isolated specks (measured mean <= 1.4), not a frame of amplified noise.
    if noise == 0:
        assert prepared.pixels.max() == 0
    assert prepared.pixels.mean() < 3.0
    assert (prepared.pixels > 0).mean() < 0.1


def test_a_bright_marker_in_a_corner_does_not_set_the_objects_contrast():
    plain = blob(60, 60, background=0, value=150, box=(15, 15, 45, 45))
    marked = np.asarray(plain).copy()
    marked[3:9, 50:56] = 255  # a scale marker, brighter than the organism
    params = PreprocessParams(size=60, background="normalise")
    with_marker = preprocess(Image.fromarray(marked, "L"), params).pixels[0]
    assert preprocess(plain, params).pixels[0, 30, 30] == with_marker[30, 30] == 255
    assert with_marker[5, 52] == 255  # the marker itself stays (clipped)


def test_gain_is_capped_on_a_faint_object():
    faint = blob(20, 20, background=0, value=10, box=(7, 7, 13, 13))  # 10 levels above the background
    prepared = preprocess(faint, PreprocessParams(size=20, background="normalise"))
    assert prepared.pixels[0, 10, 10] == 80  # 10 × MAX_GAIN 8, not 255


def test_rgb_background_is_removed_per_channel():
    array = np.zeros((10, 30, 3), np.uint8)
    array[:] = (5, 30, 60)
    array[3:7, 10:20] = (200, 200, 200)
    prepared = preprocess(
        Image.fromarray(array, "RGB"), PreprocessParams(size=15, channels=3, background="normalise")
    )
    assert tuple(prepared.pixels[:, 0, 0]) == (0, 0, 0)
    centre = prepared.pixels[:, 7, 7].astype(int)
    assert centre.max() == 255 and centre[0] > centre[2]  # 195 / 170 / 140 above each background


def test_background_option_is_validated_and_recorded():
    with pytest.raises(ValueError, match="background must be"):
        PreprocessParams(background="white")
    with pytest.raises(ValueError, match="needs polarity"):
        PreprocessParams(background="normalise", normalise_polarity=False)
    assert default_background(True) == "normalise" and default_background(False) == "none"
    # Records made before the option existed lack it and must read back as "none".
    assert "background" not in params_record(PreprocessParams())
    record = params_record(NORMALISE)
    assert record["background"] == "normalise" and PreprocessParams(**record) == NORMALISE
    assert (
        describe(NORMALISE) == "32×32 fit, 1 channel(s), dark background, background and contrast normalised"
    )


# -- corner markers ------------------------------------------------------------------------------

MARKERS_REMOVED = PreprocessParams(size=32, background="normalise", markers="remove")


def test_a_corner_marker_is_removed_and_the_image_is_as_without_it():
    """The processing-shift benchmark's corner disc (a scale marker in the object's ink) costs the
    classifiers 23-25 accuracy points on NDSB; removed, the image is the clean one again."""
    from plankdiff.evaluation.processing_shift import CornerDisc

    clean = Image.fromarray(np.clip(255 - organism(), 0, 255).astype(np.uint8), "L")  # dark on white
    rng = np.random.default_rng(0)
    marked = CornerDisc(radius_fraction=0.08)(clean, rng)
    assert (np.asarray(marked) != np.asarray(clean)).sum() > 50  # the disc is there
    reference = preprocess(clean, NORMALISE).pixels.astype(int)
    kept = preprocess(marked, NORMALISE).pixels.astype(int)
    removed = preprocess(marked, MARKERS_REMOVED).pixels.astype(int)
    assert np.abs(kept - reference).max() > 100  # the bright disc survives without the option
    assert np.abs(removed - reference).max() == 0
    assert np.array_equal(preprocess(clean, MARKERS_REMOVED).pixels, preprocess(clean, NORMALISE).pixels)


def test_separate_parts_of_an_organism_are_kept():
    """A chain or a colony has several separate parts: only small parts wholly within a corner go."""
    u = np.zeros((100, 100))
    u[40:60, 10:45] = 200  # two cells of a chain, side by side, neither in a corner
    u[40:60, 55:90] = 180
    u[45:50, 92:97] = 150  # a small detached piece on the right edge, mid-height: not a corner
    u[3:8, 3:8] = 255  # a small marker in the top-left corner
    is_object = u > 0
    markers = corner_markers(is_object)
    assert markers.sum() == 25 and markers[3:8, 3:8].all()
    # A large part in a corner (more than a quarter of the largest part's area) is organism too.
    u[70:98, 70:98] = 200
    assert not corner_markers(u > 0)[70:98, 70:98].any()


def test_the_markers_option_is_validated_and_recorded():
    with pytest.raises(ValueError, match="needs background normalisation"):
        PreprocessParams(markers="remove")
    with pytest.raises(ValueError, match="markers must be"):
        PreprocessParams(background="normalise", markers="erase")
    # Records made before the option existed lack it and read back as "keep".
    assert "markers" not in params_record(NORMALISE)
    record = params_record(MARKERS_REMOVED)
    assert record["markers"] == "remove" and PreprocessParams(**record) == MARKERS_REMOVED
    assert describe(MARKERS_REMOVED).endswith("background and contrast normalised, corner markers removed")


# -- the ceiling on the border's noise spread --------------------------------------------------------

CEILING = PreprocessParams(size=32, background="normalise", noise_ceiling=NOISE_CEILING)


def frame_filling() -> Image.Image:
    """A dark textured object across the whole width of a white frame (background clipped at 255):
    it covers 80 of the 236 border pixels (34 %), enough to move the border's 25th percentile onto
    the object and so the spread read from the clipped side far beyond any real noise."""
    array = np.full((60, 60), 255, np.uint8)
    rows = np.arange(40)[:, None]
    array[10:50] = (40 + rows + np.arange(60)[None] // 2).astype(np.uint8)  # 40..109
    return Image.fromarray(array, "L")


def test_a_frame_filling_object_is_blanked_without_the_ceiling_and_kept_with_it():
    image = frame_filling()
    gray = np.asarray(image, dtype=np.float64)
    assert border_level(gray)[1] > 100  # the object read as noise
    assert border_level(gray, noise_ceiling=NOISE_CEILING)[1] == NOISE_CEILING
    # The bug, as every preparation before the ceiling made it: nothing is object, all zeros.
    old = preprocess(image, NORMALISE)
    assert old.inverted and old.pixels.max() == 0 and old.object_area == 0
    fixed = preprocess(image, CEILING)
    pixels = fixed.pixels[0].astype(int)
    assert fixed.inverted
    # Rows 10-49 of 60 are object: rows 6-25 of 32 after the fit (edges blended by the resize).
    assert (pixels[7:25] > 0).all() and pixels[7:25].max() == 255
    assert pixels[:4].max() == 0 and pixels[-4:].max() == 0  # the white background is dark
    assert fixed.object_area == pytest.approx(40 * 60, rel=0.02)
    # The object keeps its brightness order: darkest ink (left, top) brightest after inversion.
    assert pixels[8, 1] > pixels[23, 30]


def test_the_ceiling_does_not_bind_on_the_shift_benchmarks_grey_noisy_background():
    """The processing-shift benchmark's grey background carries Gaussian noise of σ 12 (below the
    ceiling of 20): a small object on it is prepared exactly as without the ceiling."""
    from plankdiff.evaluation.processing_shift import GreyBackground

    assert GreyBackground().noise_std == 12
    small = blob(60, 60, background=250, value=30, box=(25, 22, 37, 38))
    grey = GreyBackground()(small, np.random.default_rng(3))
    spread = border_level(np.asarray(grey, dtype=np.float64))[1]
    assert 9 < spread < NOISE_CEILING  # the noise is read (about 12) and the ceiling above it
    with_ceiling, without = preprocess(grey, CEILING), preprocess(grey, NORMALISE)
    assert np.array_equal(with_ceiling.pixels, without.pixels)
    assert with_ceiling.inverted == without.inverted and with_ceiling.object_area == without.object_area
    assert with_ceiling.pixels[0, 15, 15] > 200  # the object is there, bright


def test_a_frame_filling_ndsb_crop_is_blank_without_the_ceiling_only(shared_datasets):
    # One of the 273 NDSB tunicate_partial crops the uncapped estimate made all zero (level 252,
    # spread 88 from the clipped-at-255 side: docs/results/data.md).
    with zipfile.ZipFile(shared_datasets / "ndsb.zip") as archive:
        image = decode(archive.read("ndsb/tunicate_partial/100703.jpg"))
    assert preprocess(image, NORMALISE).pixels.max() == 0
    fixed = preprocess(image, CEILING).pixels
    assert fixed.max() > 200 and 0.3 < (fixed > 0).mean() < 0.9


def test_the_noise_ceiling_is_validated_and_recorded():
    for bad in (0, -5.0):
        with pytest.raises(ValueError, match=r"--noise-ceiling .*: must be above 0"):
            PreprocessParams(background="normalise", noise_ceiling=bad)
    # Records made before the option existed lack it and read back as no ceiling.
    assert "noise_ceiling" not in params_record(NORMALISE)
    assert PreprocessParams(**params_record(NORMALISE)).noise_ceiling is None
    record = params_record(CEILING)
    assert record["noise_ceiling"] == NOISE_CEILING and PreprocessParams(**record) == CEILING
    assert describe(CEILING).endswith(
        "background and contrast normalised, border noise at most 20 grey levels"
    )
