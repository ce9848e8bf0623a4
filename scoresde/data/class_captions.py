"""Captions made from class names alone ("a photo of a cat"), for text-to-image on labelled image sets (CIFAR-10).

A caption set is a list of class names and the templates of :data:`TEMPLATES` (CLIP's prompt style, Radford et al.
2021, Sec. 3.1.4: "a photo of a {label}."); each training image gets one of its class's captions, a template drawn
per example and step (:func:`scoresde.build.class_labels`), so the network sees several phrasings of one class.
The vocabulary of a set is every word its captions can use, sorted after ``"<pad>"`` (index 0), fixed by the set's
names and templates. Tokenization follows :mod:`scoresde.data.captions` (lower case, ``","`` / ``"."`` as spaces);
an unknown word is a ``ValueError`` that lists the vocabulary, and ``""`` is all padding, the null caption.

Examples:
    >>> vocab = vocabulary("cifar10")
    >>> tokenize(["a photo of a cat", ""], vocab, 8)  # (2, 8) int32, the second row all 0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scoresde.data.captions import tokenize_with

__all__ = ["CAPTION_SETS", "TEMPLATES", "class_prompt", "vocabulary", "tokenize", "caption_table"]

CAPTION_SETS = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
TEMPLATES = (
    "a photo of {a} {name}",
    "a picture of {a} {name}",
    "an image of {a} {name}",
    "a small photo of the {name}",
    "a blurry photo of {a} {name}",
    "{a} {name}",
)


def _names(name: str) -> tuple[str, ...]:
    if name not in CAPTION_SETS:
        raise ValueError(f"unknown caption set {name!r}; expected one of: {', '.join(CAPTION_SETS)}")
    return CAPTION_SETS[name]


def class_prompt(name: str, label: int, template: int = 0) -> str:
    """Caption ``template`` of class ``label`` of caption set ``name`` ("a photo of an airplane")."""
    cls = _names(name)[int(label)]
    return TEMPLATES[int(template)].format(a="an" if cls[0] in "aeiou" else "a", name=cls)


def vocabulary(name: str) -> tuple[str, ...]:
    """``("<pad>", sorted words...)``: every word of the captions of caption set ``name``."""
    names = _names(name)
    words = {w for k in range(len(names)) for t in range(len(TEMPLATES)) for w in class_prompt(name, k, t).split()}
    return ("<pad>",) + tuple(sorted(words))


def tokenize(captions: str | Sequence[str], vocab: Sequence[str], max_len: int) -> np.ndarray:
    """Word indices into ``vocab``, padded with 0: int32 ``(B, max_len)`` (``""`` is all padding).

    Raises:
        ValueError: a word outside ``vocab`` (naming it and listing the vocabulary), or too many words.
    """
    return tokenize_with(captions, vocab, max_len)


def caption_table(name: str, max_len: int) -> np.ndarray:
    """Tokens of every caption of caption set ``name``: int32 ``(num_classes, len(TEMPLATES), max_len)``."""
    vocab, k = vocabulary(name), len(_names(name))
    prompts = [class_prompt(name, c, t) for c in range(k) for t in range(len(TEMPLATES))]
    return tokenize(prompts, vocab, max_len).reshape(k, len(TEMPLATES), int(max_len))
