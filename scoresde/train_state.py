"""The training state every trainer shares: init, restore, the guarded optimiser + EMA update, save.

A state is a dict of arrays (a pytree): ``params``, ``ema``, ``opt_state``, ``step``, ``updates`` (steps
whose update was applied), ``nonfinite_total`` and ``nonfinite_run`` (consecutive skipped steps). The
update in :func:`guarded_update` is applied only when the loss, the gradient norm and the update norm
are all finite; after ``max_nonfinite`` consecutive bad steps it becomes a no-op so the host can stop
the run with a clear message.
"""

from __future__ import annotations

import logging
import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["init_state", "restore_state", "save_state", "state_meta", "ema_update", "guarded_update"]

log = logging.getLogger(__name__)

_COUNTERS = ("updates", "nonfinite_total", "nonfinite_run")


def init_state(params, tx: optax.GradientTransformation) -> dict:
    """A fresh state: EMA equal to the parameters, zero counters."""
    # separate buffers: the train step donates its state, and one array donated twice is an error
    return {
        "params": params,
        "ema": jax.tree.map(jnp.copy, params),
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        **{k: jnp.zeros((), jnp.int32) for k in _COUNTERS},
    }


def state_meta(state) -> dict:
    """The counters stored in a checkpoint's ``meta`` (the step is stored by the checkpointer)."""
    return {k: int(state[k]) for k in _COUNTERS}


def save_state(ckpt, state, step: int, *, config=None, extra_meta: dict | None = None) -> None:
    """Saves ``state`` at ``step`` with ``ckpt`` (a :class:`scoresde.checkpointing.Checkpointer`)."""
    ckpt.save(
        step,
        params=state["params"],
        ema_params=state["ema"],
        opt_state=state["opt_state"],
        meta={**state_meta(state), **(extra_meta or {})},
        config=config,
    )


def restore_state(ckpt, state: dict, tx: optax.GradientTransformation) -> tuple[dict, dict | None]:
    """The newest loadable checkpoint of ``ckpt`` restored into ``state``'s structure.

    Returns:
        ``(state, meta)``; ``meta`` is ``None`` (and ``state`` unchanged) when there is no checkpoint. When the
        stored optimizer state has another structure than ``tx`` builds, the state gets a fresh one and
        ``meta["opt_state_change"]`` says what differs (the caller decides whether that is allowed).
    """
    params = state["params"]
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    restored = ckpt.restore_latest(params=pure, ema_params=pure, opt_state=state["opt_state"])
    if restored is None:
        return state, None
    meta = restored["meta"]

    def fill(tree):
        if isinstance(params, nnx.State):
            out = jax.tree.map(jnp.copy, params)
            nnx.replace_by_pure_dict(out, tree)
            return out
        return tree

    p, e = fill(restored["params"]), fill(restored["ema_params"])
    step = int(meta["step"])
    new = {
        **state,
        "params": p,
        "ema": e,
        "step": jnp.asarray(step, jnp.int32),
        "updates": jnp.asarray(meta.get("updates", step), jnp.int32),
        "nonfinite_total": jnp.asarray(meta.get("nonfinite_total", 0), jnp.int32),
        "nonfinite_run": jnp.asarray(meta.get("nonfinite_run", 0), jnp.int32),
    }
    log.info("resumed from %s at step %d", ckpt.directory, step)
    if jax.process_index() == 0:  # the CLI sends library log lines to log.txt: the user sees it here
        print(f"resumed from {ckpt.directory} at step {step}", file=sys.stderr, flush=True)
    if restored["opt_state"] is not None:
        new["opt_state"] = restored["opt_state"]
    elif restored.get("opt_state_change"):
        meta = {**meta, "opt_state_change": restored["opt_state_change"]}
        new["opt_state"] = state["opt_state"]
    else:
        log.warning("checkpoint at step %d has no optimizer state; starting a fresh optimizer", step)
        new["opt_state"] = tx.init(p)
    return new, meta


def _ema(e, p, rate):
    return e * rate + p * (1.0 - rate)


_ema_leaf = jax.jit(_ema, static_argnums=2)  # a Python rate: its 1 - rate in double precision, as before
_ema_leaf_traced = jax.jit(_ema)  # a rate computed in the program (a half-life EMA's ramp-up)


@jax.jit
def _select_leaf(ok, a, b):
    return jnp.where(ok, a, b)


def ema_update(ema, params, rate):
    """``rate · ema + (1 − rate) · params`` leaf by leaf (traced once per leaf shape: a U-Net's hundreds of
    leaves have a few dozen shapes)."""
    if isinstance(rate, (int, float)):
        return jax.tree.map(lambda e, p: _ema_leaf(e, p, rate), ema, params)
    return jax.tree.map(lambda e, p: _ema_leaf_traced(e, p, rate), ema, params)


def guarded_update(
    state: dict, grads, loss, tx: optax.GradientTransformation, *, ema_rate: float, max_nonfinite: int
) -> tuple[dict, dict]:
    """One optimiser + EMA step, applied only when the loss, gradient and update are finite (inside ``jit``).

    Returns:
        ``(new_state, stats)`` with ``stats`` = ``grad_norm``, ``finite`` (the update was applied) and
        ``nonfinite_run``.
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    active = state["nonfinite_run"] < max_nonfinite  # after max_nonfinite bad steps: no-ops until the host stops
    ok = finite & active
    params = optax.apply_updates(state["params"], updates)
    ema = ema_update(state["ema"], params, ema_rate)

    def keep(new, old):
        return jax.tree.map(lambda a, b: _select_leaf(ok, a, b), new, old)

    bad = (~finite & active).astype(jnp.int32)
    new_state = {
        **state,
        "params": keep(params, state["params"]),
        "ema": keep(ema, state["ema"]),
        "opt_state": keep(opt_state, state["opt_state"]),
        "step": state["step"] + 1,
        "updates": state["updates"] + ok.astype(jnp.int32),
        "nonfinite_total": state["nonfinite_total"] + bad,
        "nonfinite_run": jnp.where(ok, 0, state["nonfinite_run"] + bad),
    }
    return new_state, {"grad_norm": grad_norm, "finite": ok, "nonfinite_run": new_state["nonfinite_run"]}
