"""Score networks (Flax NNX): NCSN++ / DDPM++ (:mod:`.ncsnpp`), DDPM (:mod:`.ddpm`), an MLP (:mod:`.mlp`).

Every network is called as ``net(x, labels, y=None, *, r=None, train=False, key=None)``: ``x`` is ``(B, ...)``
(NHWC for images), ``labels`` is the ``(B,)`` time/noise conditioning given by the parameterisation
layer (:mod:`scoresde.parameterization`), ``y`` optional ``(B,)`` class labels (the null label is
``num_classes``), ``key`` the dropout PRNG key used when ``train=True``. A network built with
``second_time=True`` is a two-time network ``u(x, r, t)`` (MeanFlow's average velocity): ``r`` is then
required, ``(B,)`` in the units of ``labels``, and the network embeds ``labels - r`` beside ``labels``
(:class:`~scoresde.models.layers.SecondTimeEmbedding`); without the flag ``r`` must be ``None``.

Networks take plain constructor arguments; building one from a config is the config edge's job
(:func:`scoresde.build.get_model`).
"""
