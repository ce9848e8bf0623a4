"""Few-step generation: models that sample in one to a few network evaluations.

* :mod:`~scoresde.fewstep.consistency`: consistency models (the parameterisation, grids and curricula, CD and CT
  losses).
* :mod:`~scoresde.fewstep.progressive`: progressive distillation.
* :mod:`~scoresde.fewstep.reflow`: (noise, sample) couplings of a flow and the reflow loss.
* :mod:`~scoresde.fewstep.trigflow`: the TrigFlow process's maps to and from every other process.
* :mod:`~scoresde.fewstep.scm`: continuous-time consistency training / distillation (sCT / sCD).
* :mod:`~scoresde.fewstep.meanflow`: MeanFlow's average-velocity loss and sampler.
* :mod:`~scoresde.fewstep.ect`: easy consistency tuning's curriculum and loss.
"""
