"""The condition of a few-step student and its teacher: every call reads the batch's condition; the guided teacher;
the exact conditional sCD step; the checks on the teacher and on ``config.distill.teacher_guidance``.

Oracles: a two-component Gaussian mixture with class ``k`` = component ``k`` (:mod:`scoresde.analytic`): the
teacher network returning the exact class-conditional score (the null label ``2``: the mixture's score) and the
sCM network of each component in closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from scoresde import build
from scoresde.analytic import GaussianMixture

from conftest import load_config

MIX = GaussianMixture(np.array([[-1.0, -0.5], [1.0, 0.8]]), np.array([0.3, 0.2]))
VAR = np.array([0.3, 0.2]) ** 2  # component k is N(mean_k, VAR[k] I)
SD = 0.5
NULL = 2  # model.num_classes: the null label


def _with(config, **fields):
    with config.unlocked():
        for dotted, value in fields.items():
            section, name = dotted.split(".")
            config[section][name] = value
    return config


def _cond_config(method, **more):
    """A toy2d class-conditional (2 classes) config of ``method`` whose network outputs the score at labels ``t``."""
    fields = {
        "model.num_classes": NULL,
        "training.p_uncond": 0.1,
        "model.output": "score",
        "model.time_label": "t",
        "distill.method": method,
        **more,
    }
    if method == "meanflow":
        fields.update({"training.sde": "rectified_flow", "model.output": "flow_velocity", "model.second_time": True})
    return _with(load_config("toy2d_vp", "smoke"), **fields)


class _ScoreOracle(nnx.Module):
    """The exact score of class ``y`` at ``(x, t)`` (labels = ``t``): component ``y``, or the mixture for the null."""

    def __init__(self, sde):
        self.theta = nnx.Param(jnp.ones(()))
        self.sde = sde

    def __call__(self, x, labels, y=None, *, train=False, key=None):
        cond = MIX.conditional_score_fn(self.sde)(x, labels, jnp.minimum(y, 1))
        return self.theta * jnp.where((y == NULL)[:, None], MIX.score_fn(self.sde)(x, labels), cond)


class _SCMOracle(nnx.Module):
    """The exact sCM network ``F(x_in, t | y)`` of component ``y`` (``f = cos t x - sin t σ_d F`` is its flow map to
    data); with the parameter ``gate = 0`` it reads component 0 whatever ``y`` is."""

    def __init__(self):
        self.theta = nnx.Param(jnp.ones(()))
        self.gate = nnx.Param(jnp.ones(()))

    def __call__(self, x_in, t, y=None, *, train=False, key=None):
        x = SD * x_in
        c, s = jnp.cos(t)[:, None], jnp.sin(t)[:, None]
        k = jnp.round(y * self.gate).astype(jnp.int32)
        mu = jnp.asarray(MIX.means, jnp.float32)[k]
        var = self.theta * jnp.asarray(VAR, jnp.float32)[k][:, None]
        flow = mu + (x - c * mu) * jnp.sqrt(var / (c**2 * var + (SD * s) ** 2))
        return (c * x - flow) / (SD * s)


def _teacher(config, net):
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    return build.Teacher(graphdef, params, rest, build.make_score_model(config), config, 1, "oracle")


def _apply_gradients(state, grads, loss):
    return state, {"finite": jnp.array(True)}


def test_guided_teacher_is_classifier_free_guidance_of_the_exact_conditional_score():
    """``teacher_score(teacher, w)(x, t, y) = (1 + w) ∇log p_t(x | y) - w ∇log p_t(x)`` exactly; ``w = 0``: the
    conditional score."""
    config = _cond_config("cd")
    sde = build.make_sde(config)
    teacher = _teacher(config, _ScoreOracle(sde))
    x = jax.random.normal(jax.random.key(0), (8, 2))
    t = jnp.linspace(0.1, 0.9, 8)
    y = jnp.arange(8) % 2
    cond, uncond = MIX.conditional_score_fn(sde)(x, t, y), MIX.score_fn(sde)(x, t)
    plain, guided = jax.jit(
        lambda x, t, y: (build.teacher_score(teacher, 0.0)(x, t, y), build.teacher_score(teacher, 2.0)(x, t, y))
    )(x, t, y)
    np.testing.assert_allclose(plain, cond, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guided, 3 * cond - 2 * uncond, rtol=1e-5, atol=1e-5)


def test_exact_conditional_scd_step_has_zero_loss_and_needs_the_condition_in_the_student():
    """sCD with the exact conditional teacher: the exact conditional student is a fixed point (its tangent
    ``df/dt`` vanishes along the teacher's conditional flow, loss ~ 0); a student that ignores the condition is not."""
    config = _cond_config(
        "scm", **{"distill.scm_adaptive_weight": False, "distill.scm_warmup": 0, "distill.scm_tangent_c": 0.0}
    )
    sde = build.make_sde(config)
    teacher = _teacher(config, _ScoreOracle(sde))
    x0, labels = MIX.sample(jax.random.key(1), 256, return_labels=True)
    batch = {"image": x0, "label": labels.astype(jnp.int32)}
    tx = optax.sgd(0.0)
    graphdef, params, rest = nnx.split(_SCMOracle(), nnx.Param, ...)
    update = build.make_continuous_step(config, sde, graphdef, rest, tx, teacher=teacher)
    loss_of = jax.jit(lambda state: update(state, batch, jax.random.key(2), _apply_gradients)[1]["loss"])
    losses = {}
    for ignore in (False, True):
        p = jax.tree.map(lambda v: v, params)
        p["gate"] = nnx.Param(jnp.asarray(0.0 if ignore else 1.0))
        losses[ignore] = float(loss_of(build.init_continuous_state(config, p, tx)))
    assert losses[False] < 1e-6 < 1e-2 < losses[True], losses


class _Spy(nnx.Module):
    """A network that records (through a host callback) every condition it is called with."""

    def __init__(self, tag, log):
        self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        self.tag = tag
        self.log = log

    def __call__(self, x, labels, y=None, *, r=None, train=False, key=None):
        if y is None:
            raise AssertionError(f"the {self.tag} was called without a condition")
        jax.debug.callback(lambda v: self.log.append((self.tag, np.asarray(v).ravel().tolist())), y)
        h = self.lin(x) + 0.01 * labels[:, None] + 0.1 * y[:, None]
        return h if r is None else h + 0.01 * r[:, None]


LOG = []


@pytest.mark.parametrize(
    "method, guidance",
    [("cd", 1.0), ("ct", 0.0), ("pd", 0.0), ("pd", 1.0), ("scm", 1.0), ("ect", 0.0), ("meanflow", 0.0)],
)
def test_student_and_teacher_are_called_with_the_batchs_condition(method, guidance):
    """Every call of the student (online, target) reads the batch's labels (class 1), never the null label 2; the
    teacher's calls read them too, and with guidance also the null label."""
    LOG.clear()
    teacher_dir = "oracle" if method in ("cd", "pd", "scm", "ect") else ""
    more = {"distill.teacher_guidance": guidance, "distill.teacher_workdir": teacher_dir, "distill.start_steps": 2}
    config = build.with_defaults(_cond_config(method, **more))
    sde = build.make_sde(config)
    graphdef, params, rest = nnx.split(_Spy("student", LOG), nnx.Param, ...)
    teacher = _teacher(config, _Spy("teacher", LOG)) if teacher_dir else None
    tx = optax.sgd(1e-3)
    batch = {"image": jax.random.normal(jax.random.key(0), (4, 2)), "label": jnp.ones((4,), jnp.int32)}
    if build.is_continuous(config):
        update = build.make_continuous_step(config, sde, graphdef, rest, tx, teacher=teacher)
        state = build.init_continuous_state(config, params, tx)
    else:
        update = build.make_distill_step(config, sde, graphdef, rest, teacher=teacher)
        state = build.init_distill_state(params, tx, teacher_params=teacher.params if teacher else None)
    state = {**state, "ema": state["params"]}
    jax.block_until_ready(jax.jit(lambda st: update(st, batch, jax.random.key(1), _apply_gradients))(state))
    seen = {tag: {v for who, vals in LOG if who == tag for v in vals} for tag in ("student", "teacher")}
    guided = {1, NULL} if guidance else {1}
    if method == "pd":  # PD's teacher is the student's network with the teacher's weights: its calls count here
        assert seen == {"student": guided, "teacher": set()}, seen
        return
    assert seen["student"] == {1}, seen
    assert seen["teacher"] == (guided if method in ("cd", "scm") else set()), seen  # ect never calls its teacher


def test_a_student_conditioned_otherwise_than_its_teacher_is_refused():
    teacher_cfg = _cond_config("cd")
    student = _with(_cond_config("cd"), **{"model.num_classes": 5})
    with pytest.raises(ValueError, match=r"config.model.num_classes=5 but the teacher in T has 2"):
        build.check_same_conditioning(student, teacher_cfg, "the teacher in T")
    text = _with(load_config("toy2d_vp", "smoke"), **{"model.text_vocab": 40})
    with pytest.raises(ValueError, match=r"model.num_classes=0 but .* has 2"):
        build.check_same_conditioning(text, teacher_cfg, "the teacher in T")
    build.check_same_conditioning(_cond_config("scm"), teacher_cfg, "the teacher in T")  # the method may differ


def test_teacher_guidance_needs_a_called_conditional_teacher_with_condition_dropout():
    config = _cond_config("ct", **{"distill.teacher_guidance": 1.5})
    with pytest.raises(ValueError, match=r"teacher_guidance=1.5 .*method='ct' has no teacher"):
        build.teacher_guidance(config, None)
    config = _cond_config("ect", **{"distill.teacher_guidance": 1.5})
    teacher = _teacher(config, _ScoreOracle(build.make_sde(config)))
    with pytest.raises(ValueError, match=r"never calls the teacher"):
        build.teacher_guidance(config, teacher)
    config = _cond_config("cd", **{"distill.teacher_guidance": 1.5})
    no_dropout = _teacher(_with(_cond_config("cd"), **{"training.p_uncond": 0.0}), _ScoreOracle(build.make_sde(config)))
    with pytest.raises(ValueError, match=r"p_uncond=0.0 \(no condition dropout\)"):
        build.teacher_guidance(config, no_dropout)
    uncond = load_config("toy2d_vp", "smoke")
    with pytest.raises(ValueError, match=r"unconditional"):
        build.teacher_guidance(config, _teacher(uncond, _ScoreOracle(build.make_sde(config))))
    assert build.teacher_guidance(config, teacher) == 1.5
    with pytest.raises(ValueError, match=r"teacher_guidance"):
        build.with_defaults(_with(load_config("toy2d_vp", "smoke"), **{"distill.teacher_guidance": -1.0}))
