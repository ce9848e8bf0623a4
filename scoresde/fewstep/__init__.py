"""Few-step generation: models that sample in one to a few network evaluations.

* :mod:`~scoresde.fewstep.consistency`: consistency models (the parameterisation, grids and curricula, CD and CT
  losses).
* :mod:`~scoresde.fewstep.progressive`: progressive distillation.
* :mod:`~scoresde.fewstep.reflow`: (noise, sample) couplings of a flow and the reflow loss.
"""
