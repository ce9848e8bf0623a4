"""Class-name captions (CIFAR-10): the vocabulary, the tokenizer's errors, and captions made from batch labels."""

import numpy as np
import pytest

from scoresde.data import class_captions as cc


def test_vocabulary_table_and_prompts():
    vocab = cc.vocabulary("cifar10")
    assert vocab[0] == "<pad>" and list(vocab[1:]) == sorted(vocab[1:]) and "airplane" in vocab
    assert (
        cc.class_prompt("cifar10", 0) == "a photo of an airplane"
        and cc.class_prompt("cifar10", 3) == "a photo of a cat"
    )
    table = cc.caption_table("cifar10", 8)
    assert table.shape == (10, len(cc.TEMPLATES), 8) and table.dtype == np.int32
    words = [" ".join(vocab[i] for i in row if i) for row in table[3]]
    assert words == [cc.class_prompt("cifar10", 3, t) for t in range(len(cc.TEMPLATES))]
    np.testing.assert_array_equal(cc.tokenize("", vocab, 8), np.zeros((1, 8), np.int32))  # the null caption


def test_unknown_words_sets_and_long_captions_are_refused():
    vocab = cc.vocabulary("cifar10")
    with pytest.raises(ValueError, match=r"unknown word 'zebra'.*vocabulary is: a, airplane"):
        cc.tokenize("a photo of a zebra", vocab, 8)
    with pytest.raises(ValueError, match="at most max_len=3"):
        cc.tokenize("a photo of a cat", vocab, 4 - 1)
    with pytest.raises(ValueError, match="unknown caption set 'cifar100'; expected one of: cifar10"):
        cc.vocabulary("cifar100")


def test_a_batch_of_labels_gets_its_class_captions_with_whole_caption_dropout():
    import jax

    from scoresde import build

    from conftest import load_config

    config = load_config("cifar10_t2i")
    labels = np.arange(2000) % 10
    y = np.asarray(build.class_labels(config, {"label": labels}, jax.random.key(0)))
    table = cc.caption_table("cifar10", int(config.data.caption_len))
    own = (y[:, None, :] == table[labels]).all(-1).any(-1)  # one of its own class's captions
    dropped = (y == 0).all(-1)
    assert np.all(own | dropped) and len({tuple(r) for r in y[labels == 3] if r.any()}) == len(cc.TEMPLATES)
    assert abs(dropped.mean() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 2000)
