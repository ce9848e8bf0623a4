"""Import of the released score-SDE checkpoints (PyTorch ``.pth`` and Flax ``checkpoint_N``).

Both reference code bases build their networks from one flat, ordered list of modules, and so do ours
(:mod:`scoresde.models.ncsnpp`, :mod:`scoresde.models.ddpm`): module ``i`` of ``all_modules`` is

* ``all_modules.i`` in a score_sde_pytorch state dict (``module.`` prefix from ``DataParallel``;
  weights OIHW / out-in, transposed here to HWIO / in-out), and
* ``<Kind>_k`` in a score_sde Flax parameter tree, the ``k``-th module of its kind (``Conv_0``,
  ``ResnetBlockBigGANpp_3``, ``Downsample_1`` ...), already NHWC.

Inside a block the names coincide (``GroupNorm_0``, ``Conv_1``, ``NIN_0`` ...). The PyTorch EMA is
``shadow_params``, a list in ``model.parameters()`` order of the trainable parameters (the frozen
Fourier features are not in it); the Flax EMA is ``params_ema``.

Examples:
    Python::

        score_fn = reference_score_fn("checkpoint_26.pth", config)   # EMA weights, NHWC
        s = score_fn(x, t)

    Command line (writes an orbax checkpoint the sample / eval / likelihood modes load)::

        python -m scoresde.convert --checkpoint=checkpoint_26.pth \\
            --config=configs/vp/cifar10_ddpmpp_continuous.py --workdir=runs/ddpmpp_imported
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import pickle
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import build, parameterization
from scoresde.build import abstract_model, as_config, load_config

__all__ = [
    "reference_module_names",
    "torch_module_indices",
    "params_from_torch",
    "params_from_linen",
    "load_reference_checkpoint",
    "model_with_params",
    "reference_score_fn",
    "main",
]

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "W": "W", "b": "b", "weight": "weight"}
_FROZEN = {"GaussianFourierProjection"}  # modules whose parameters the PyTorch EMA does not track


def reference_module_names(model) -> list[str]:
    """The Flax reference name (``<Kind>_<k>``) of each entry of ``model.all_modules``."""
    counts: dict[str, int] = {}
    names = []
    for mod in model.all_modules:
        kind = type(mod).linen_name
        names.append(f"{kind}_{counts.get(kind, 0)}")
        counts[kind] = counts.get(kind, 0) + 1
    return names


def torch_module_indices(model) -> list[int | None]:
    """The score_sde_pytorch ``all_modules`` index of each entry of ``model.all_modules`` (None: absent)."""
    absent = set(getattr(model, "torch_absent", ()))
    out, j = [], 0
    for i in range(len(model.all_modules)):
        if i in absent:
            out.append(None)
        else:
            out.append(j)
            j += 1
    return out


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def _set(tree: dict, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _our_leaves(model):
    """(path, shape) of every parameter of ``model``; checks that all live in ``all_modules``."""
    if not hasattr(model, "all_modules"):
        raise ValueError(f"{type(model).__name__} has no reference layout (all_modules); cannot import into it")
    leaves = list(_flatten(nnx.state(model, nnx.Param).to_pure_dict()))
    extra = [p for p, _ in leaves if p[0] != "all_modules"]
    if extra:
        raise ValueError(
            f"the reference checkpoints have no parameters for {['/'.join(map(str, p)) for p in extra]};"
            " build the network with num_classes=0 to import one"
        )
    return [(p, tuple(v.shape)) for p, v in leaves]


def _check_shape(src_name, value, path, shape):
    if tuple(value.shape) != shape:
        raise ValueError(
            f"checkpoint entry {src_name!r} has shape {tuple(value.shape)}; the network expects "
            f"{shape} at {'/'.join(map(str, path))} (does the config match the checkpoint?)"
        )


def params_from_torch(state_dict: dict, model) -> dict:
    """Our pure-dict parameters from a score_sde_pytorch model state dict (``module.`` prefix optional)."""
    sd = {(k[len("module.") :] if k.startswith("module.") else k): np.asarray(v) for k, v in state_dict.items()}
    torch_index = torch_module_indices(model)
    out, used = {}, set()
    for path, shape in _our_leaves(model):
        _, i, *sub, leaf = path
        key = ".".join(["all_modules", str(torch_index[i]), *sub, _TORCH_LEAF[leaf]])
        if key not in sd:
            raise KeyError(f"PyTorch checkpoint has no entry {key!r} for {'/'.join(map(str, path))}")
        w = sd[key]
        if w.ndim == 4:  # conv OIHW -> HWIO
            w = w.transpose(2, 3, 1, 0)
        elif leaf == "kernel" and w.ndim == 2:  # nn.Linear (out, in) -> (in, out)
            w = w.T
        _check_shape(key, w, path, shape)
        _set(out, path, np.asarray(w, np.float32))
        used.add(key)
    unused = sorted(k for k in sd if k.startswith("all_modules.") and k not in used)
    if unused:
        raise ValueError(
            f"PyTorch checkpoint entries not used by the network: {unused[:8]}"
            f"{' ...' if len(unused) > 8 else ''} (does the config match the checkpoint?)"
        )
    return out


def torch_ema_state_dict(state_dict: dict, shadow_params, model) -> dict:
    """The state dict with the EMA ``shadow_params`` (``model.parameters()`` order) swapped in."""
    names = {j: type(m).linen_name for j, m in zip(torch_module_indices(model), model.all_modules) if j is not None}
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    trainable = [k for k in sd if k.startswith("all_modules.") and names[int(k.split(".")[1])] not in _FROZEN]
    if len(trainable) != len(shadow_params):
        raise ValueError(
            f"EMA has {len(shadow_params)} shadow parameters; the model state dict has {len(trainable)} trainable ones"
        )
    ema = dict(sd)
    for k, v in zip(trainable, shadow_params):
        if tuple(np.shape(v)) != tuple(np.shape(sd[k])):
            raise ValueError(
                f"EMA shadow parameter for {k!r} has shape {tuple(np.shape(v))}, expected {tuple(np.shape(sd[k]))}"
            )
        ema[k] = v
    return ema


def params_from_linen(params: dict, model) -> dict:
    """Our pure-dict parameters from a score_sde (Flax Linen) parameter tree."""
    if set(params) == {"params"}:
        params = params["params"]
    names = reference_module_names(model)
    out, used = {}, set()
    for path, shape in _our_leaves(model):
        _, i, *sub, leaf = path
        src = (names[i], *sub, leaf)
        node = params
        for k in src:
            if not isinstance(node, dict) or k not in node:
                raise KeyError(f"Flax checkpoint has no entry {'/'.join(src)} for {'/'.join(map(str, path))}")
            node = node[k]
        w = np.asarray(node)
        _check_shape("/".join(src), w, path, shape)
        _set(out, path, np.asarray(w, np.float32))
        used.add(src)
    unused = sorted("/".join(p) for p, _ in _flatten(params) if tuple(p) not in used)
    if unused:
        raise ValueError(
            f"Flax checkpoint entries not used by the network: {unused[:8]}"
            f"{' ...' if len(unused) > 8 else ''} (does the config match the checkpoint?)"
        )
    return out


def _latest_flax_checkpoint(directory: str) -> str:
    found = [
        (int(m.group(1)), p)
        for p in glob.glob(os.path.join(directory, "checkpoint_*"))
        if (m := re.fullmatch(r"checkpoint_(\d+)", os.path.basename(p)))
    ]
    if not found:
        raise FileNotFoundError(f"no checkpoint_N file in {directory!r}")
    return max(found)[1]


def load_reference_checkpoint(path: str, config, *, model: nnx.Module | None = None) -> dict[str, Any]:
    """Reads a reference checkpoint into our parameter layout.

    Args:
        path: a score_sde_pytorch ``.pth`` file, a score_sde Flax ``checkpoint_N`` (msgpack) file, or a
            directory of the latter (the newest is used).
        config: the checkpoint's config (ours, a reference ConfigDict or a plain dict).
        model: the (abstract) network of ``config``, if already built.

    Returns:
        ``{"params": ..., "ema_params": ..., "step": int}`` with pure-dict parameter trees.
    """
    model = abstract_model(config) if model is None else model
    if os.path.isdir(path):
        path = _latest_flax_checkpoint(path)
    if path.endswith((".pth", ".pt")):
        import torch  # noqa: PLC0415  only this path needs the `torch` extra

        # weights_only: a .pth is a pickle, and a full unpickler runs whatever code the file names; the
        # reference layout (dicts, lists, tensors, numbers) is all data, which the restricted one reads
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's message advises weights_only=False; keep only the line that names what was refused
            what = [ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
            raise ValueError(
                f"{path} is not a plain score_sde_pytorch checkpoint (a dict of tensors with 'model', "
                f"'ema', 'step'): it names code to run when unpickled, which is refused"
                f"{' (' + what[0].strip() + ')' if what else ''}"
            ) from None
        sd = {k: v.detach().cpu().numpy() for k, v in ckpt["model"].items()}
        shadow = [s.detach().cpu().numpy() for s in ckpt["ema"]["shadow_params"]]
        return {
            "params": params_from_torch(sd, model),
            "ema_params": params_from_torch(torch_ema_state_dict(sd, shadow, model), model),
            "step": int(ckpt.get("step", 0)),
        }
    from flax import serialization  # noqa: PLC0415  (only the Flax checkpoint path needs it)

    with open(path, "rb") as f:
        state = serialization.msgpack_restore(f.read())
    target = state["optimizer"]["target"] if "optimizer" in state else state["params"]
    return {
        "params": params_from_linen(target, model),
        "ema_params": params_from_linen(state["params_ema"], model),
        "step": int(np.asarray(state.get("step", 0))),
    }


def model_with_params(config, params: dict, *, model: nnx.Module | None = None) -> nnx.Module:
    """A concrete network of ``config`` holding ``params`` (a pure dict as returned above).

    ``model``, if given, is an (abstract) network of ``config`` to fill in place.
    """
    model = abstract_model(config) if model is None else model
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def reference_score_fn(path: str, config, ema: bool = True):
    """The reference-convention score function ``score_fn(x, t)`` of a reference checkpoint.

    Args:
        path: a ``.pth`` / ``checkpoint_N`` file (see :func:`load_reference_checkpoint`).
        config: the checkpoint's config: one of ours, or a dict / ConfigDict with the reference's
            sections (``training``, ``data``, ``model``).
        ema: use the EMA weights (as the reference samples and evaluates) or the raw ones.

    Returns:
        A jitted ``score_fn(x, t)`` for ``x`` of shape ``(B, H, W, C)`` and ``t`` of shape ``(B,)``; the
        labels and output scaling are the reference's (:func:`parameterization.reference_convention`).
    """
    config = as_config(config)
    model = abstract_model(config)
    loaded = load_reference_checkpoint(path, config, model=model)
    model = model_with_params(config, loaded["ema_params" if ema else "params"], model=model)
    graphdef, state = nnx.split(model)
    sde = build.make_sde(config)
    convention = build.score_convention(config, sde)

    def score_fn(x, t):
        return _network_score(
            state, jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32), graphdef=graphdef, sde=sde, **convention
        )

    return score_fn


@functools.partial(jax.jit, static_argnames=("graphdef", "sde", "output", "time_label"))
def _network_score(state, x, t, *, graphdef, sde, output, time_label):
    # One compiled program per architecture and convention, shared by raw and EMA weights.
    net = nnx.merge(graphdef, state)
    return parameterization.model_score_fn(
        lambda xx, labels: net(xx, labels), sde, output=output, time_label=time_label
    )(x, t)


def main(argv=None) -> str:
    """``python -m scoresde.convert --checkpoint=PATH --config=CONFIG --workdir=DIR``."""
    parser = argparse.ArgumentParser(prog="python -m scoresde.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="reference .pth, checkpoint_N file or directory")
    parser.add_argument("--config", required=True, help="our config .py (get_config()) or a reference JSON")
    parser.add_argument("--workdir", required=True, help="run directory to write the orbax checkpoint into")
    parser.add_argument("--step", type=int, default=None, help="step to record (default: the checkpoint's)")
    args = parser.parse_args(argv)

    from scoresde import checkpointing  # noqa: PLC0415  (orbax only for the command)

    config = load_config(args.config)
    loaded = load_reference_checkpoint(args.checkpoint, config)
    step = loaded["step"] if args.step is None else args.step
    params = jax.tree.map(jnp.asarray, loaded["params"])
    ema_params = jax.tree.map(jnp.asarray, loaded["ema_params"])
    checkpointing.save_model_checkpoint(args.workdir, params=params, ema_params=ema_params, step=step, config=config)
    n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    print(f"wrote {args.workdir} (step {step}, {n:,} parameters) from {args.checkpoint}")
    return args.workdir


if __name__ == "__main__":
    main()
