"""Bits/dim settings from ``config.eval`` (the ``bpd_*`` fields): :class:`LikelihoodSettings`."""

from __future__ import annotations

import dataclasses

from scoresde import data as data_lib
from scoresde.build.score import conditioning_kind


@dataclasses.dataclass(frozen=True)
class LikelihoodSettings:
    """What ``--mode=likelihood`` computes: split, batches, repeats, dequantisation, the probability-flow solve.

    The field order is the order of the settings recorded with partial results and reports.
    """

    split: str  # train | test
    batch_size: int
    num_eval_batches: int  # 0 = the whole split
    num_repeats: int  # K passes with fresh dequantisation noise and probes
    dequantization: str  # uniform | none
    num_bits: int | None  # None: a continuous density (no bins)
    hutchinson: str  # rademacher | gaussian | exact
    n_probes: int
    rtol: float
    atol: float
    eps: float  # the smallest time of the solve
    solver: str  # tsit5 | dopri5
    max_steps: int
    seed: int
    conditional: bool  # log p(x | c) of a conditional model, each example under its own label / caption

    def as_dict(self) -> dict:
        """The settings as a plain dict (JSON), in field order; ``conditional`` only when set, so partial results
        recorded before the field existed still match an unconditional run."""
        d = dataclasses.asdict(self)
        if not self.conditional:
            del d["conditional"]
        return d

    def solve_kwargs(self) -> dict:
        """The keyword arguments of one probability-flow solve (:func:`scoresde.likelihood.bits_per_dim_batch`,
        :func:`scoresde.latent.variational_bound`): bins, dequantisation, estimator, solver."""
        return {k: getattr(self, k) for k in SOLVE_FIELDS}

    def report_fields(self) -> dict:
        """How the solve was made, as a report records it (:data:`REPORT_FIELDS`)."""
        return {k: getattr(self, k) for k in REPORT_FIELDS}


SOLVE_FIELDS = ("num_bits", "dequantization", "hutchinson", "n_probes", "rtol", "atol", "eps", "solver", "max_steps")
REPORT_FIELDS = (
    "dequantization",
    "num_bits",
    "eps",
    "solver",
    "rtol",
    "atol",
    "hutchinson",
    "n_probes",
    "conditional",
)


def likelihood_settings(config) -> LikelihoodSettings:
    """The :class:`LikelihoodSettings` of ``config.eval``; ``""`` / ``0`` fields mean the default for the data.

    Image data: uniform dequantisation of 8-bit values, 5 repeats (the reference). Vector data: no
    dequantisation, a continuous density, 1 repeat. ``bpd_batch_size`` 0 is ``eval.batch_size``.

    Raises:
        ValueError: fewer than one repeat.
    """
    e = config.eval
    image = data_lib.is_image_data(config)
    deq = str(e.bpd_dequantization or ("uniform" if image else "none")).lower()
    bits = e.bpd_num_bits or (8 if image else None)
    settings = LikelihoodSettings(
        split=str(e.bpd_dataset).lower(),
        batch_size=int(e.bpd_batch_size or e.batch_size),
        num_eval_batches=int(e.num_eval_batches or 0),
        num_repeats=int(e.bpd_num_repeats or (5 if deq == "uniform" else 1)),
        dequantization=deq,
        num_bits=None if bits is None else int(bits),
        hutchinson=str(e.bpd_hutchinson).lower(),
        n_probes=int(e.bpd_n_probes),
        rtol=float(e.bpd_rtol),
        atol=float(e.bpd_atol),
        eps=float(e.bpd_eps),
        solver=str(e.bpd_solver).lower(),
        max_steps=int(e.bpd_max_steps),
        seed=int(config.seed),
        conditional=bool(e.bpd_conditional),
    )
    if settings.num_repeats < 1:
        raise ValueError(f"config.eval.bpd_num_repeats must be >= 1; got {settings.num_repeats}")
    if settings.conditional:
        kind = conditioning_kind(config)
        if kind not in ("class", "text"):
            raise ValueError(
                f"config.eval.bpd_conditional=True measures log p(x | c) of a class- or caption-conditioned model; "
                f"this config's model is conditioned on: {kind} (set bpd_conditional=False)"
            )
    return settings
