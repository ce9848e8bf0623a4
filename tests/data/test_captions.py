"""Captioned digits: the tokenizer, the attribute measurements and the caption generator."""

import numpy as np
import pytest

from scoresde.data import captions as C


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int32)


def test_vocab_is_fixed_and_starts_with_pad():
    assert C.VOCAB[0] == "<pad>"
    assert len(set(C.VOCAB)) == len(C.VOCAB)
    assert list(C.VOCAB[1:]) == sorted(C.VOCAB[1:])
    for word in C.DIGIT_WORDS + tuple(w for pair in C.ATTRIBUTE_WORDS.values() for w in pair):
        assert word in C.VOCAB


def test_tokenize_round_trips_normalised_text():
    caps = ["A Bold seven, slanted to the right.", "the digit 7 in thin strokes", "", "eight"]
    tokens = C.tokenize(caps)
    assert tokens.dtype == np.int32 and tokens.shape == (4, C.MAX_LEN)
    assert C.detokenize(tokens) == [C.normalize(c) for c in caps]
    assert C.detokenize(tokens)[0] == "a bold seven slanted to the right"
    np.testing.assert_array_equal(C.tokenize(C.detokenize(tokens)), tokens)
    assert C.tokenize("seven").shape == (1, C.MAX_LEN)


def test_empty_caption_is_all_padding():
    np.testing.assert_array_equal(C.tokenize(["", "  "]), np.zeros((2, C.MAX_LEN), np.int32))


def test_unknown_word_names_it_and_lists_the_vocabulary():
    with pytest.raises(ValueError, match="unknown word 'purple'") as err:
        C.tokenize("a purple seven")
    assert "bold" in str(err.value) and "zero" in str(err.value)


def test_too_long_caption_names_its_length():
    with pytest.raises(ValueError, match="has 5 words; at most max_len=4"):
        C.tokenize("a bold thin wide seven", max_len=4)


def test_detokenize_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="token indices"):
        C.detokenize(np.array([[len(C.VOCAB)]]))


def test_class_medians_are_those_of_the_training_split(digits):
    images, labels = digits
    train = np.arange(len(labels)) % 10 != 0
    raw = C.measure_attributes(images[train], labels[train])
    for k in range(10):
        assert np.median(raw["ink"][labels[train] == k]) == pytest.approx(C.INK_MEDIAN[k], abs=1e-3)
        assert np.median(raw["weight"][labels[train] == k]) == pytest.approx(1.0, abs=1e-4)
        assert np.median(raw["slant"][labels[train] == k]) == pytest.approx(0.0, abs=1e-3)
        assert np.median(raw["width"][labels[train] == k]) == pytest.approx(1.0, abs=1e-3)
    for name, (low, high) in C.THRESHOLDS.items():  # about a quarter below / above (module docstring)
        assert 0.2 < np.mean(raw[name] < low) < 0.3 and 0.2 < np.mean(raw[name] > high) < 0.3


def test_measurements_on_exact_shapes():
    img = np.zeros((3, 8, 8))
    img[0, 2:6, 3] = 1.0  # a vertical bar: no slant
    img[1, [1, 2, 3, 4, 5, 6], [5, 5, 4, 3, 2, 2]] = 1.0  # top right of bottom: leans right
    img[2] = img[1][:, ::-1]  # the mirror image leans left
    a = C.measure_attributes(img, np.array([1, 1, 1]))
    assert a["slant"][0] == pytest.approx(-C.SLANT_MEDIAN[1])
    assert a["slant"][1] > 0.5 > -0.5 > a["slant"][2]
    assert a["ink"][0] == 4.0 and a["x"][0] == 3.0 and a["y"][0] == 3.5
    assert a["weight"][0] == pytest.approx(4.0 / C.INK_MEDIAN[1])


def test_attribute_words_move_the_measured_attribute_the_right_way(digits):
    images, labels = digits
    attrs = C.measure_attributes(images, labels)
    caps = C.make_captions(images, labels)
    for name, (low_word, high_word) in C.ATTRIBUTE_WORDS.items():
        low_syn, high_syn = set(C.SYNONYMS[low_word]), set(C.SYNONYMS[high_word])
        has_low = np.array([bool(low_syn & set(C.normalize(c).split())) for c in caps])
        has_high = np.array([bool(high_syn & set(C.normalize(c).split())) for c in caps])
        lo, hi = C.THRESHOLDS[name]
        assert has_low.any() and has_high.any()
        assert (attrs[name][has_low] < lo).all() and (attrs[name][has_high] > hi).all()
        assert (attrs[name][~has_low & ~has_high] >= lo).all()


def test_captions_name_the_digit_and_are_deterministic(digits):
    images, labels = digits
    caps = C.make_captions(images[:300], labels[:300], seed=0)
    assert caps == C.make_captions(images[:300], labels[:300], seed=0)
    assert caps != C.make_captions(images[:300], labels[:300], seed=1)
    for c, k in zip(caps, labels[:300], strict=True):
        words = C.normalize(c).split()
        assert C.DIGIT_WORDS[k] in words or str(k) in words
    C.tokenize(C.make_captions(images, labels))  # every caption is in the vocabulary and fits MAX_LEN
    assert len(set(caps)) > 100  # several templates and synonyms


def test_digit_prompts_are_in_the_vocabulary():
    for k in range(10):
        prompts = C.digit_prompts(k)
        assert len(prompts) == 5 and C.tokenize(prompts).shape == (5, C.MAX_LEN)
    assert "an eight" in C.digit_prompts(8)
    with pytest.raises(ValueError, match="0..9"):
        C.digit_prompts(10)


def test_digit_batches_carry_their_captions(digits):
    import ml_collections

    from scoresde import data

    config = ml_collections.ConfigDict(
        {"data": {"dataset": "digits", "image_size": 8, "num_channels": 1, "random_flip": False, "captions": True}}
    )
    batch = next(data.get_dataset(config, split="test", batch_size=16, shuffle=False))
    images, labels = digits
    test = np.arange(len(labels)) % 10 == 0
    expected = C.tokenize(C.make_captions(images[test], labels[test]))[:16]
    np.testing.assert_array_equal(batch["caption"], expected)
    assert batch["caption"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"], labels[test][:16])
    config.data.random_flip = True
    with pytest.raises(ValueError, match="random_flip=False"):
        data.get_dataset(config, split="test", batch_size=16)
    config.data.random_flip, config.data.dataset = False, "gmm_grid"
    with pytest.raises(ValueError, match="needs dataset 'digits'"):
        data.get_dataset(config, batch_size=16)
