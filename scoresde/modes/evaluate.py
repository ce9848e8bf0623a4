"""``--mode=eval``: what ``config.eval`` enables, with the EMA parameters.

* ``enable_loss``: the test-split loss, written to ``workdir/eval_results.json``;
* ``enable_bpd``: bits/dim over ``bpd_dataset`` (:func:`scoresde.modes.likelihood.likelihood`);
* ``enable_sampling``: FID / IS / KID of ``num_samples`` samples (:func:`scoresde.modes.fid.evaluate_samples`).

The one mode allowed to compose others (one way: they never import it).
"""

from __future__ import annotations

import json
import logging
import os

import jax
from flax import nnx

from scoresde import build, parallel, runlog
from scoresde import data as data_lib
from scoresde.modes import fid, likelihood

__all__ = ["evaluate", "evaluate_loss"]

log = logging.getLogger(__name__)


def evaluate(config, workdir: str) -> dict:
    """Runs every evaluation ``config.eval`` enables; returns their results by name.

    Raises:
        ValueError: ``config.eval`` enables nothing.
    """
    config = build.with_defaults(config)
    result = {}
    if config.eval.enable_loss:
        result.update(evaluate_loss(config, workdir))
    if config.eval.enable_bpd:
        result["bpd"] = likelihood.likelihood(config, workdir)
    if config.eval.enable_sampling:
        result["sample_quality"] = fid.evaluate_samples(config, workdir)
    if not result:
        raise ValueError("config.eval enables nothing: set enable_loss, enable_bpd or enable_sampling")
    return result


def evaluate_loss(config, workdir: str) -> dict:
    """Test-split loss with the EMA parameters; writes ``workdir/eval_results.json``."""
    mesh = parallel.make_mesh()
    batch_size = int(config.eval.batch_size)
    parallel.check_batch_size(batch_size, mesh, "config.eval.batch_size")
    sde = build.make_sde(config)
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh, mode="eval")
    max_batches = int(config.eval.num_eval_batches) or None
    runlog.announce(
        f"scoresde eval: test loss at step {step}",
        {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "data": data_lib.describe(config, "test"),
            "batches": f"{max_batches or 'all whole'} batch(es) of {batch_size}",
            "workdir": os.path.abspath(workdir),
        },
    )
    loss_fn = build.make_loss_fn(config, sde)
    key = build.purpose_key(build.root_key(config), "eval_loss")

    @jax.jit
    def eval_fn(params, batch, i):
        model = nnx.merge(graphdef, params, rest)
        return loss_fn(lambda x, labels: model(x, labels), batch["image"], jax.random.fold_in(key, i))[0]

    total, n = 0.0, 0
    for i, batch in enumerate(
        data_lib.get_dataset(config, split="test", batch_size=batch_size, shuffle=False, repeat=False)
    ):
        if max_batches is not None and i >= max_batches:
            break
        total += float(eval_fn(params, parallel.shard_batch(mesh, batch), i))
        n += 1
    if n == 0:
        raise ValueError(f"the test split has fewer than one batch of config.eval.batch_size={batch_size}")
    result = {"step": step, "eval_loss": total / n, "num_batches": n, "batch_size": batch_size}
    path = os.path.join(workdir, "eval_results.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    log.info("eval at step %d: loss %.6g over %d batches", step, result["eval_loss"], n)
    print(json.dumps(result))
    runlog.conclude(
        f"eval loss at step {step}: {result['eval_loss']:.6g} over {n} test batches", results={"report": path}
    )
    return result
