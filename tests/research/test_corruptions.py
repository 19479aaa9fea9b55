"""research.data.corruptions: seeded, shape- and dtype-keeping corruptions at five severities."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from research.data import corruptions

NAMES = list(corruptions.CORRUPTIONS)
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog", "elastic",
          "spatter", "rotate"]  # fmt: skip


def _photo(shape=(32, 32, 3), seed=0) -> np.ndarray:
    """A smooth random image with some edges, like a small photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, shape[-1]), dtype=np.uint8)
    image = Image.fromarray(coarse[..., 0] if shape[-1] == 1 else coarse)
    resized = np.asarray(image.resize(shape[1::-1], Image.Resampling.BILINEAR), np.uint8)
    return resized.reshape(shape)


@pytest.mark.parametrize("name", NAMES)
def test_a_corruption_is_a_function_of_image_name_severity_and_seed(name):
    """The same (image, name, severity, seed) gives the same bytes; another seed other bytes
    for the random corruptions."""
    image = _photo()
    first = corruptions.corrupt(image, name, 3, seed=7)
    assert np.array_equal(first, corruptions.corrupt(image.copy(), name, 3, seed=7))
    if name in RANDOM:
        assert not np.array_equal(first, corruptions.corrupt(image, name, 3, seed=8))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", corruptions.SEVERITIES)
def test_every_corruption_keeps_shape_and_dtype_and_changes_the_image(name, severity):
    """Colour [32, 32, 3] and grey [28, 28, 1] uint8 images come back in the same shape and
    dtype, changed (or the colour-only ones are refused for grey)."""
    for shape in ((32, 32, 3), (28, 28, 1)):
        image = _photo(shape)
        if shape[-1] == 1 and not corruptions.CORRUPTIONS[name].applies_to_grey:
            with pytest.raises(ValueError, match="colour images only"):
                corruptions.corrupt(image, name, severity)
            continue
        out = corruptions.corrupt(image, name, severity, seed=1)
        assert out.shape == shape and out.dtype == np.uint8
        assert not np.array_equal(out, image)


def test_noise_grows_with_severity():
    """The noise corruptions' deviation from the clean image grows with the severity."""
    image = _photo()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise"):
        spread = [
            np.std(corruptions.corrupt(image, name, s, seed=0).astype(float) - image)
            for s in corruptions.SEVERITIES
        ]
        assert spread == sorted(spread) and spread[0] < spread[-1], (name, spread)


def test_blur_and_contrast_remove_more_with_severity():
    """Higher severities leave less local detail (blur) and less spread of values (contrast)."""
    image = _photo(seed=3)
    detail = [
        np.abs(np.diff(corruptions.corrupt(image, "gaussian_blur", s).astype(float), axis=1)).mean()
        for s in corruptions.SEVERITIES
    ]
    spread = [corruptions.corrupt(image, "contrast", s).std() for s in corruptions.SEVERITIES]
    assert detail == sorted(detail, reverse=True)
    assert spread == sorted(spread, reverse=True)


def test_the_middle_severity_has_the_issues_parameters():
    """Severity 3: noise 0.08, blur radius 1, pixelate to half the side, JPEG 15, contrast x0.4,
    brightness x1.5, rotation 15 degrees."""
    table = {name: c.severities[2] for name, c in corruptions.CORRUPTIONS.items()}
    assert table["gaussian_noise"] == 0.08 and table["gaussian_blur"] == 1.0
    assert table["pixelate"] == 0.5 and table["jpeg"] == 15
    assert table["contrast"] == 0.4 and table["brightness"] == 1.5 and table["rotate"] == 15
    assert set(corruptions.ISSUE_SEVEN) <= set(corruptions.CORRUPTIONS)


def test_middle_pixelate_is_16x16_blocks_and_jpeg_is_pillows_quality_15():
    """Pixelate at 3 leaves 2x2 blocks of one value on 32x32; JPEG at 3 equals Pillow's at 15."""
    image = _photo(seed=5)
    pixelated = corruptions.corrupt(image, "pixelate", 3)
    assert np.array_equal(pixelated, np.repeat(np.repeat(pixelated[::2, ::2], 2, 0), 2, 1))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=15)
    assert np.array_equal(corruptions.corrupt(image, "jpeg", 3), np.asarray(Image.open(buffer)))


def test_brightness_multiplies_and_clips():
    """Brightness at 3 is every value x1.5, rounded, clipped at 255."""
    image = _photo(seed=2)
    expected = np.clip(np.round(image * 1.5), 0, 255).astype(np.uint8)
    assert np.array_equal(corruptions.corrupt(image, "brightness", 3), expected)


def test_a_batch_gives_each_image_its_own_seed():
    """corrupt_batch gives image i the seed (seed, i): identical images get different noise."""
    batch = np.stack([_photo()] * 3)
    out = corruptions.corrupt_batch(batch, "gaussian_noise", 3, seed=4)
    assert not np.array_equal(out[0], out[1])
    assert np.array_equal(out[2], corruptions.corrupt(batch[2], "gaussian_noise", 3, seed=(4, 2)))


def test_unknown_names_severities_and_shapes_are_refused_with_the_valid_values():
    """An unknown name or severity, a float or 2-D image: ValueError naming what is valid."""
    image = _photo()
    with pytest.raises(ValueError, match="valid: gaussian_noise, shot_noise"):
        corruptions.corrupt(image, "snow", 3)
    with pytest.raises(ValueError, match=r"one of \(1, 2, 3, 4, 5\)"):
        corruptions.corrupt(image, "jpeg", 6)
    with pytest.raises(ValueError, match="uint8"):
        corruptions.corrupt(image.astype(np.float32), "jpeg", 3)
    with pytest.raises(ValueError, match="uint8"):
        corruptions.corrupt(image[..., 0], "jpeg", 3)


def test_grey_images_get_every_corruption_but_saturate():
    """names_for(1) lists all corruptions but the colour-only saturate."""
    assert corruptions.names_for(3) == NAMES
    assert corruptions.names_for(1) == [n for n in NAMES if n != "saturate"]
