"""Run modes: one module per ``--mode``, each a function ``fn(config, workdir)``.

A mode imports the config edge (:mod:`scoresde.build`) and the library below it, never another mode
(``evaluate`` alone composes ``likelihood`` and ``fid``, one way). :data:`scoresde.main.MODES` maps the
CLI names to these functions.
"""
