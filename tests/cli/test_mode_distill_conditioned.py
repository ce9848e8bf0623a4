"""``--mode=distill`` of conditioned teachers end to end: a class-conditional toy teacher (CD, sCD, then samples of one
class; exact resume) and, under -m slow, the caption-conditioned digits teacher (``configs/digits_t2i.py``) into CD
and sCD students sampled from a prompt."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from scoresde import main as main_lib
from scoresde.checkpointing import Checkpointer
from scoresde.runlog import read_metrics

from conftest import load_config

# a teacher trained here and a U-Net student each: ~20-60 s a test on 2 shared cores; the math and the edge are
# tested fast in tests/test_build_fewstep_condition.py and tests/fewstep/
pytestmark = pytest.mark.slow

STUDENTS = {  # method -> its sampler and the fields a student of a score-model config needs
    "cd": {"sampling.method": "consistency"},
    "scm": {"sampling.method": "scm", "distill.scm_warmup": 1},
}


def _config(name, variant="smoke", **fields):
    config = load_config(name, variant)
    with config.unlocked():
        for dotted, value in fields.items():
            section, key = dotted.split(".")
            config[section][key] = value
    return config


def _student(name, teacher, method, **more):
    fields = {"distill.method": method, "distill.teacher_workdir": teacher, "sampling.steps": 1}
    return _config(name, **{**fields, **STUDENTS[method], **more})


@pytest.fixture(scope="module")
def class_teacher(tmp_path_factory):
    """A 2-step toy2d_vp_cond smoke teacher: 9 classes, label dropout 0.1."""
    workdir = str(tmp_path_factory.mktemp("cond") / "teacher")
    main_lib.run(load_config("toy2d_vp_cond", "smoke"), workdir, "train")
    return workdir


def _samples(workdir):
    files = sorted(f for f in os.listdir(os.path.join(workdir, "samples")) if f.startswith("samples_"))
    with np.load(os.path.join(workdir, "samples", [f for f in files if f.endswith(".npz")][0])) as z:
        return z["samples"], int(z["nfe"])


@pytest.mark.parametrize("method", ["cd", "scm"])
def test_class_conditional_student_distils_then_samples_a_class(tmp_path, class_teacher, method):
    workdir = str(tmp_path / method)
    config = _student("toy2d_vp_cond", class_teacher, method, **{"distill.teacher_guidance": 1.0})
    out = main_lib.run(config, workdir, "distill")
    assert out["step"] == 2 and np.isfinite(out["loss"])
    with open(os.path.join(workdir, "student.json")) as f:
        assert json.load(f)["teacher_workdir"] == os.path.abspath(class_teacher)
    sampling = {"sampling.class_label": 4, "distill.teacher_guidance": 1.0}
    main_lib.run(_student("toy2d_vp_cond", class_teacher, method, **sampling), workdir, "sample")
    samples, nfe = _samples(workdir)
    assert nfe == 1 and np.all(np.isfinite(samples))


def test_a_student_conditioned_otherwise_than_its_teacher_is_refused(tmp_path, class_teacher):
    config = _student("toy2d_vp_cond", class_teacher, "cd", **{"model.num_classes": 4})
    with pytest.raises(ValueError, match=r"config.model.num_classes=4 but the teacher in .* has 9"):
        main_lib.run(config, str(tmp_path / "cd"), "distill")


def test_killed_conditioned_cd_run_resumes_exactly(tmp_path, class_teacher):
    """A guided class-conditional CD run, killed after step 1 and resumed, logs the same losses and ends at the
    same parameters as the uninterrupted run, bit for bit."""
    n_iters = 3
    fields = {
        "training.n_iters": n_iters,
        "training.snapshot_freq": n_iters,
        "training.snapshot_freq_for_preemption": 1,
        "training.keep_checkpoints": 10,
        "training.snapshot_sampling": False,
        "distill.teacher_guidance": 1.0,
    }
    workdir = str(tmp_path / "run")
    main_lib.run(_student("toy2d_vp_cond", class_teacher, "cd", **fields), workdir, "distill")
    full = read_metrics(workdir)
    final = _params(workdir, n_iters)
    for step in range(2, n_iters + 1):
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    main_lib.run(_student("toy2d_vp_cond", class_teacher, "cd", **fields), workdir, "distill")
    resumed = read_metrics(workdir)
    assert [r["step"] for r in resumed] == list(range(1, n_iters + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    again = _params(workdir, n_iters)
    assert again.keys() == final.keys()
    for k in final:
        np.testing.assert_array_equal(again[k], final[k], err_msg=k)


def _params(workdir, step):
    """The checkpoint's params, EMA and aux trees (target, teacher), flattened."""
    ckpt = Checkpointer(workdir, max_to_keep=None, async_save=False)
    try:
        restored = ckpt.manager.restore(step)
    finally:
        ckpt.close()
    leaves = jax.tree_util.tree_leaves_with_path({k: restored[k] for k in ("params", "ema_params", "opt_state")})
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


@pytest.mark.parametrize("method", ["cd", "scm"])
def test_caption_conditioned_digits_student_samples_a_prompt(tmp_path_factory, method):
    teacher = str(tmp_path_factory.getbasetemp() / "t2i_teacher")
    if not os.path.isdir(os.path.join(teacher, "checkpoints")):
        main_lib.run(load_config("digits_t2i", "smoke"), teacher, "train")
    workdir = str(tmp_path_factory.mktemp("t2i") / method)
    main_lib.run(_student("digits_t2i", teacher, method, **{"training.n_iters": 2}), workdir, "distill")
    main_lib.run(_student("digits_t2i", teacher, method, **{"sampling.prompt": "a bold seven"}), workdir, "sample")
    samples, nfe = _samples(workdir)
    assert nfe == 1 and samples.shape[0] == 10 and np.all(np.isfinite(samples))
    with open(os.path.join(workdir, "samples", "samples_0.txt")) as f:
        assert "a bold seven" in f.read()
