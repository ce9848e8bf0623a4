"""Stroke drawings: arc-length resampling, pen channel, padding mask, determinism, split, batches, rendering."""

import numpy as np
import pytest

from scoresde import data as data_lib
from scoresde.data import stroke_render, strokes


def test_resample_is_equally_spaced_by_arc_length():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], float)  # perimeter 4
    p = strokes.resample(square, 9)
    np.testing.assert_allclose(p, [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [0.5, 1], [0, 1], [0, 0.5], [0, 0]])
    step = np.linalg.norm(np.diff(strokes.resample(np.array([[0, 0], [3, 0], [3, 4]], float), 15), axis=0), axis=1)
    np.testing.assert_allclose(step, 0.5, atol=1e-12)  # length 7 in 14 equal steps, across the corner
    with pytest.raises(ValueError, match="n >= 2"):
        strokes.resample(square, 1)


def test_sequence_pen_channel_and_shares():
    a = np.array([[0, 0], [3, 0]], float)  # length 3
    b = np.array([[0, 1], [1, 1]], float)  # length 1
    seq, mask = strokes.to_sequence([a, b], 12)
    assert seq.shape == (12, 3) and np.all(mask == 1)
    # 12 points: 2 each, then the 8 spare ones shared 3:1 -> 8 and 4
    np.testing.assert_array_equal(seq[:, 2], [-1] * 7 + [1] + [-1] * 3 + [1])
    np.testing.assert_allclose(seq[:8, 0], np.linspace(0, 3, 8), atol=1e-6)
    back = strokes.strokes_of(seq)
    assert len(back) == 2 and np.allclose(back[0][[0, -1]], a) and np.allclose(back[1][[0, -1]], b)
    with pytest.raises(ValueError, match="num_points >= 4"):
        strokes.to_sequence([a, b], 3)


def test_spacing_pads_with_the_last_point_and_a_zero_mask():
    a = np.array([[0, 0], [1, 0]], float)
    seq, mask = strokes.to_sequence([a], 10, spacing=0.25)
    np.testing.assert_array_equal(mask, [1] * 5 + [0] * 5)
    np.testing.assert_allclose(seq[5:], np.repeat([[1.0, 0.0, 1.0]], 5, 0))
    assert len(strokes.strokes_of(seq, mask)) == 1
    with pytest.raises(ValueError, match="num_points=3 is fewer"):
        strokes.to_sequence([a], 3, spacing=0.25)


def test_dataset_is_a_pure_function_of_the_seed_and_index():
    x, m, y = strokes.make_dataset(30, 32, seed=3)
    x2, _, _ = strokes.make_dataset(12, 32, seed=3)
    np.testing.assert_array_equal(x[:12], x2)  # example i does not depend on how many are made
    assert not np.allclose(strokes.make_dataset(12, 32, seed=4)[0], x2)
    np.testing.assert_array_equal(y, np.arange(30) % 10)
    assert x.dtype == np.float32 and np.all(m == 1) and np.all(np.isin(x[..., 2], [-1, 1]))
    assert 0.9 < np.abs(x[..., :2]).max() < 1.5  # the glyph box spans about [-1, 1]
    # the 8 has three contours (outer and two holes): three pen lifts
    assert int((x[8, :, 2] > 0).sum()) == 3 and int((x[1, :, 2] > 0).sum()) == 1
    letters, _, ly = strokes.make_dataset(26, 32, chars=strokes.LETTERS)
    assert ly.tolist() == list(range(26)) and int((letters[1, :, 2] > 0).sum()) == 3  # B: outline and two holes


def test_split_holds_every_class_equally_and_get_dataset_batches():
    test = strokes.split(200)
    assert test.sum() == 20 and np.bincount(np.arange(200)[test] % 10).tolist() == [2] * 10
    from conftest import load_config

    config = load_config("strokes_vp", "smoke")
    assert data_lib.data_shape(config) == (16, 3) and not data_lib.is_image_data(config)
    b = next(data_lib.get_dataset(config, split="train", batch_size=8))
    assert b["image"].shape == (8, 16, 3) and b["label"].shape == (8,)
    test_batch = next(data_lib.get_dataset(config, split="test", batch_size=20, shuffle=False))
    assert np.bincount(test_batch["label"], minlength=10).tolist() == [2] * 10
    assert data_lib.num_examples(config, "train") == 180 and data_lib.num_examples(config, "test") == 20
    config.data.stroke_chars = "greek"
    with pytest.raises(ValueError, match="expected one of: digits, letters, digits\\+letters"):
        data_lib.num_examples(config)


def test_raster_of_a_segment_and_svg():
    seq = np.array([[[-1.0, 0.0, -1.0], [1.0, 0.0, 1.0]]])
    im = stroke_render.rasterize(seq, size=13, extent=1.3, width=0.05)[0]
    centre_row = im[6]
    assert np.all(centre_row[2:11] > 0.9)  # pixels on the line: exp(-0) up to the pixel offset
    assert im[0].max() < 1e-6 and im[12].max() < 1e-6  # far rows are dark
    svg = stroke_render.to_svg(seq[0], size=26)
    assert svg.count("<polyline") == 1 and 'points="3.00,13.00 23.00,13.00"' in svg
