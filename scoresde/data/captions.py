"""Captioned digits, made offline: captions from each image's label and attributes measured on the image.

Every 8x8 digit of scikit-learn's ``load_digits`` (pixels in [0, 1]) gets one caption built from its label and
three attributes measured on its pixels, each *relative to the typical digit of its class* (the class medians
below, measured once on the training split, images whose index is not a multiple of 10):

==========  ==========================================================  ===================  ====================
attribute   measurement ``m`` (``p`` = pixel values, ``(r, c)`` row/col) low word (``m <``)   high word (``m >``)
==========  ==========================================================  ===================  ====================
weight      ink mass ``sum(p)`` / the class median ``INK_MEDIAN[k]``       "thin" (0.92)        "bold" (1.08)
slant       ``cov(x, y) / var(y)`` - ``SLANT_MEDIAN[k]``, with ``x = c``,   "left" (-0.05)       "right" (+0.05)
            ``y = -r`` centred, moments weighted by ``p``: how far the
            top of the digit leans right of its bottom, per row
width       ``sqrt(var(x))`` / the class median ``WIDTH_MEDIAN[k]``        "narrow" (0.94)      "wide" (1.06)
==========  ==========================================================  ===================  ====================

Between the two thresholds an attribute is not mentioned. About a quarter of the training digits fall below
each low threshold and a quarter above each high one. Each attribute word has synonyms ("bold", "thick",
"heavy"), and a caption is one of several templates ("a bold seven, slanted to the right", "seven, thin and
wide", "the digit 7 in thin strokes", ...), drawn by a seeded generator, so :func:`make_captions` is a pure
function of ``(images, labels, seed)``.

The word-level tokenizer has a fixed vocabulary :data:`VOCAB` (index 0 = ``"<pad>"``): every word the templates
can produce, sorted. :func:`tokenize` lower-cases, treats ``","`` and ``"."`` as spaces and splits on whitespace;
an unknown word is a ``ValueError`` that lists the vocabulary. The empty caption ``""`` tokenizes to all
padding: the null caption of classifier-free guidance (Ho & Salimans 2022; GLIDE, Nichol et al. 2022).

Examples:
    >>> tokens = tokenize(["a bold seven", ""])  # (2, MAX_LEN) int32, the second row all 0
    >>> detokenize(tokens)
    ['a bold seven', '']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "VOCAB",
    "MAX_LEN",
    "tokenize_with",
    "DIGIT_WORDS",
    "ATTRIBUTE_WORDS",
    "SYNONYMS",
    "THRESHOLDS",
    "INK_MEDIAN",
    "SLANT_MEDIAN",
    "WIDTH_MEDIAN",
    "normalize",
    "tokenize",
    "detokenize",
    "measure_attributes",
    "describe",
    "make_captions",
    "digit_prompts",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMERALS = tuple(str(k) for k in range(10))

# attribute -> (low word, high word); the words a benchmark asks for.
ATTRIBUTE_WORDS = {"weight": ("thin", "bold"), "slant": ("left", "right"), "width": ("narrow", "wide")}
# attribute -> (low threshold, high threshold) on the measurement of :func:`measure_attributes`.
THRESHOLDS = {"weight": (0.92, 1.08), "slant": (-0.05, 0.05), "width": (0.94, 1.06)}
# word -> the words a caption may use for it (the word itself first).
SYNONYMS = {
    "thin": ("thin", "light", "fine"),
    "bold": ("bold", "thick", "heavy"),
    "narrow": ("narrow", "condensed"),
    "wide": ("wide", "broad"),
    "left": ("left",),
    "right": ("right",),
}
# Class medians on the training split of load_digits (pixels / 16): ink mass, raw slant, width in pixels.
INK_MEDIAN = np.array([19.5, 19.469, 19.781, 18.938, 19.625, 19.25, 19.438, 19.062, 20.5, 19.594])
SLANT_MEDIAN = np.array([-0.031, -0.011, -0.145, -0.081, 0.002, -0.012, -0.203, 0.134, -0.007, -0.098])
WIDTH_MEDIAN = np.array([1.469, 1.028, 1.244, 1.218, 1.318, 1.259, 1.331, 1.198, 1.186, 1.333])

_SLANT_PHRASES = ("slanted to the {}", "leaning {}", "tilted to the {}", "leaning to the {}")
_DIGIT_PROMPTS = ("a {word}", "the digit {numeral}", "{word}", "a handwritten {word}", "the number {numeral}")
_TEMPLATE_WORDS = "a an the digit number handwritten in strokes and slanted leaning tilted to"

MAX_LEN = 16
VOCAB: tuple[str, ...] = ("<pad>",) + tuple(
    sorted(
        set(_TEMPLATE_WORDS.split())
        | set(DIGIT_WORDS)
        | set(NUMERALS)
        | {w for ws in SYNONYMS.values() for w in ws}
        | {w for p in _SLANT_PHRASES for w in p.format("").split()}
    )
)
_INDEX = {w: i for i, w in enumerate(VOCAB)}


def normalize(caption: str) -> str:
    """Lower-case, ``","`` and ``"."`` as spaces, single spaces: the text :func:`detokenize` gives back."""
    return " ".join(caption.lower().replace(",", " ").replace(".", " ").split())


def tokenize(captions: str | Sequence[str], max_len: int = MAX_LEN) -> np.ndarray:
    """Word indices into :data:`VOCAB`, padded with 0.

    Args:
        captions: one caption or a sequence of them.
        max_len: tokens per caption (the padded length).

    Returns:
        int32 ``(B, max_len)``; ``B = 1`` for a single string. ``""`` gives a row of zeros (the null caption).

    Raises:
        ValueError: a word outside the vocabulary (naming it and listing the vocabulary), or a caption longer
            than ``max_len`` words.
    """
    return tokenize_with(captions, VOCAB, max_len, _INDEX)


def tokenize_with(captions: str | Sequence[str], vocab: Sequence[str], max_len: int, index=None) -> np.ndarray:
    """Word indices into any ``vocab`` (index 0 the padding), padded with 0: int32 ``(B, max_len)``; ``""`` is all
    padding. The tokenizer of :func:`tokenize` and of :mod:`scoresde.data.class_captions`.

    Raises:
        ValueError: a word outside ``vocab`` (naming it and listing the vocabulary), or more than ``max_len`` words.
    """
    index = index if index is not None else {w: i for i, w in enumerate(vocab)}
    captions = [captions] if isinstance(captions, str) else list(captions)
    out = np.zeros((len(captions), int(max_len)), np.int32)
    for row, caption in enumerate(captions):
        words = normalize(str(caption)).split()
        if len(words) > max_len:
            raise ValueError(f"caption {caption!r} has {len(words)} words; at most max_len={max_len} fit")
        for col, word in enumerate(words):
            if word not in index:
                raise ValueError(
                    f"unknown word {word!r} in caption {caption!r}; the vocabulary is: {', '.join(vocab[1:])}"
                )
            out[row, col] = index[word]
    return out


def detokenize(tokens) -> list[str]:
    """The captions of ``tokens`` ``(B, L)`` (or one ``(L,)`` row), padding dropped, words joined by one space.

    Raises:
        ValueError: an index outside ``[0, len(VOCAB))``.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(VOCAB)):
        raise ValueError(f"token indices must lie in [0, {len(VOCAB)}); got range [{tokens.min()}, {tokens.max()}]")
    return [" ".join(VOCAB[i] for i in row if i) for row in tokens]


def measure_attributes(images01, labels) -> dict[str, np.ndarray]:
    """The measurements of the table in the module docstring, one value per image.

    Args:
        images01: ``(N, 8, 8)`` or ``(N, 8, 8, 1)`` pixels in [0, 1].
        labels: ``(N,)`` digit classes 0..9.

    Returns:
        ``{"weight", "slant", "width"}`` (relative to the class medians, as in the table) and the raw
        ``"ink"``, ``"x"``, ``"y"`` (centroid column / row) for reference; float64 ``(N,)`` each.

    Raises:
        ValueError: images that are not ``(N, H, W[, 1])``, labels outside 0..9, or an image without ink.
    """
    x = np.asarray(images01, np.float64)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    labels = np.asarray(labels)
    if x.ndim != 3 or labels.shape != (len(x),):
        raise ValueError(f"expected images (N, H, W[, 1]) and labels (N,); got {x.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"digit labels must lie in 0..9; got range [{labels.min()}, {labels.max()}]")
    ink = x.sum((1, 2))
    if (ink <= 0).any():
        raise ValueError(f"image {int(np.argmin(ink))} has no ink; cannot measure its attributes")
    r, c = np.meshgrid(np.arange(x.shape[1]), np.arange(x.shape[2]), indexing="ij")
    cx = (x * c).sum((1, 2)) / ink
    cy = (x * r).sum((1, 2)) / ink
    dx = c[None] - cx[:, None, None]
    dy = cy[:, None, None] - r[None]  # up is positive
    var_x = (x * dx * dx).sum((1, 2)) / ink
    var_y = (x * dy * dy).sum((1, 2)) / ink
    cov = (x * dx * dy).sum((1, 2)) / ink
    return {
        "weight": ink / INK_MEDIAN[labels],
        "slant": cov / np.maximum(var_y, 1e-12) - SLANT_MEDIAN[labels],
        "width": np.sqrt(var_x) / WIDTH_MEDIAN[labels],
        "ink": ink,
        "x": cx,
        "y": cy,
    }


def describe(attributes: dict[str, np.ndarray]) -> list[dict[str, str]]:
    """Per image, the attribute words that apply: ``{"weight": "bold", "slant": "left"}`` (absent = typical)."""
    n = len(attributes["weight"])
    out: list[dict[str, str]] = [{} for _ in range(n)]
    for name, (low, high) in THRESHOLDS.items():
        lo_word, hi_word = ATTRIBUTE_WORDS[name]
        for i, v in enumerate(attributes[name]):
            if v < low:
                out[i][name] = lo_word
            elif v > high:
                out[i][name] = hi_word
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(label: int, words: dict[str, str], rng: np.random.Generator) -> str:
    """One caption of digit ``label`` mentioning exactly the attribute ``words``, in a random template."""
    word, numeral = DIGIT_WORDS[label], NUMERALS[label]
    syn = {k: str(rng.choice(SYNONYMS[w])) for k, w in words.items()}
    adjs = [syn[k] for k in ("width", "weight") if k in syn]
    rng.shuffle(adjs)
    slant = f", {str(rng.choice(_SLANT_PHRASES)).format(syn['slant'])}" if "slant" in syn else ""
    template = int(rng.integers(5))
    if template == 0:  # "a bold narrow seven, leaning left"
        phrase = " ".join([*adjs, word])
        return f"{_article(phrase)} {phrase}{slant}"
    if template == 1:  # "seven, bold and narrow, leaning left"
        return word + (f", {' and '.join(adjs)}" if adjs else "") + slant
    if template == 2:  # "the narrow digit 7 in bold strokes, leaning left"
        width = f"{syn['width']} " if "width" in syn else ""
        weight = f" in {syn['weight']} strokes" if "weight" in syn else ""
        return f"the {width}digit {numeral}{weight}{slant}"
    if template == 3:  # "a handwritten bold seven, leaning left"
        return f"a handwritten {' '.join([*adjs, word])}{slant}"
    phrase = " ".join(adjs)  # "the bold number 7, leaning left"
    return f"the {phrase + ' ' if phrase else ''}number {numeral}{slant}"


def make_captions(images01, labels, seed: int = 0) -> list[str]:
    """One caption per image (deterministic in ``(images01, labels, seed)``), every word in :data:`VOCAB`.

    Args:
        images01: ``(N, 8, 8[, 1])`` pixels in [0, 1].
        labels: ``(N,)`` digit classes 0..9.
        seed: the template / synonym generator's seed.
    """
    words = describe(measure_attributes(images01, labels))
    rng = np.random.default_rng(int(seed))
    return [_caption(int(k), w, rng) for k, w in zip(np.asarray(labels), words, strict=True)]


def digit_prompts(label: int) -> list[str]:
    """Attribute-free prompts for digit ``label`` ("a seven", "the digit 7", ...): zero-shot classification."""
    if not 0 <= int(label) <= 9:
        raise ValueError(f"digit label must lie in 0..9; got {label}")
    word, numeral = DIGIT_WORDS[int(label)], NUMERALS[int(label)]
    return [p.format(word=word, numeral=numeral).replace("a eight", "an eight") for p in _DIGIT_PROMPTS]
