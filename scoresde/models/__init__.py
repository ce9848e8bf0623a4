"""Score networks (Flax NNX): NCSN++ / DDPM++ (:mod:`.ncsnpp`), DDPM (:mod:`.ddpm`), an MLP (:mod:`.mlp`).

Every network is called as ``net(x, labels, y=None, *, train=False, key=None)``: ``x`` is ``(B, ...)``
(NHWC for images), ``labels`` is the ``(B,)`` time/noise conditioning given by the parameterisation
layer (:mod:`scoresde.parameterization`), ``y`` optional ``(B,)`` class labels (the null label is
``num_classes``), ``key`` the dropout PRNG key used when ``train=True``.

Networks take plain constructor arguments; building one from a config is the config edge's job
(:func:`scoresde.build.get_model`).
"""
