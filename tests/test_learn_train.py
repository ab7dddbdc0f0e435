"""Tests of jaxreg.learn.train: optimiser schedules, pure jitted steps, keys, checkpoints, resume, data parallelism."""

import csv
import json
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxreg.learn.train import (
    FitResult,
    fit,
    initialize_distributed,
    load_model,
    make_eval_step,
    make_optimizer,
    make_train_step,
    split_model,
)

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 16)
BATCH = 4


class TinyNet(nnx.Module):
    """One 3x3 2D convolution, channel-last: (B, H, W, 1) -> (B, H, W, 1)."""

    def __init__(self, width: int = 1, *, rngs: nnx.Rngs):
        self.config = {"width": width}
        self.conv = nnx.Conv(1, width, (3, 3), padding="SAME", rngs=rngs)

    @classmethod
    def from_config(cls, config, *, rngs):
        return cls(**config, rngs=rngs)

    def __call__(self, x):
        return self.conv(x).mean(axis=-1, keepdims=True)


# the target is a known 3x3 filter of the input, so a conv can fit it exactly
TRUE_KERNEL = np.array([[0.0, 0.2, 0.0], [0.1, 0.4, 0.1], [0.0, 0.2, 0.0]], np.float32)


def _target(x):
    return jax.lax.conv_general_dilated(
        x,
        jnp.asarray(TRUE_KERNEL)[:, :, None, None],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def loss_fn(model, batch, key):
    del key
    err = model(batch["x"]) - _target(batch["x"])
    mse = jnp.mean(err**2)
    return mse, {"mse": mse, "abs": jnp.mean(jnp.abs(err))}


def augment(key, batch):
    """Key-dependent intensity scaling per sample: the trajectory then depends on the step keys."""
    scale = 1.0 + 0.2 * jax.random.uniform(key, (batch["x"].shape[0], 1, 1, 1))
    return {**batch, "x": batch["x"] * scale}


def batch_at(step: int, batch: int = BATCH) -> dict:
    rng = np.random.default_rng(1000 + step)  # the batch of update `step` depends on the step only
    return {"x": rng.normal(size=(batch, *SHAPE, 1)).astype(np.float32)}


def train_data(start: int):
    step = start
    while True:
        yield batch_at(step)
        step += 1


def _params_equal(a, b, atol=0.0):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.allclose(x, y, atol=atol, rtol=0) for x, y in zip(la, lb))


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------------------------
# optimiser
# ----------------------------------------------------------------------------------------------------------------


def _adam_updates(opt, n, grad=1.0, param=0.0):
    """Adam's update for a constant gradient is -lr(t) * g / (|g| + eps): the schedule, read off directly."""
    p = jnp.array([param])
    state = opt.init(p)
    out = []
    for _ in range(n):
        u, state = opt.update(jnp.array([grad]), state, p)
        out.append(float(u[0]))
    return np.array(out)


def test_make_optimizer_schedules_match_closed_forms():
    lr, total, warm = 0.1, 20, 5
    t = np.arange(total)
    np.testing.assert_allclose(_adam_updates(make_optimizer(lr), total), -lr, rtol=1e-4)
    cosine = lr * 0.5 * (1 + np.cos(np.pi * t / total))
    np.testing.assert_allclose(
        _adam_updates(make_optimizer(lr, schedule="cosine", total_steps=total), total),
        -cosine,
        rtol=1e-4,
        atol=1e-7,
    )
    ramp = lr * t / warm
    decay = lr * 0.5 * (1 + np.cos(np.pi * (t - warm) / (total - warm)))
    expected = np.where(t < warm, ramp, decay)
    got = _adam_updates(
        make_optimizer(lr, schedule="warmup_cosine", total_steps=total, warmup_steps=warm), total
    )
    np.testing.assert_allclose(got, -expected, rtol=1e-4, atol=1e-7)
    # AdamW: decoupled decay adds -lr * wd * param
    got = _adam_updates(make_optimizer(lr, weight_decay=0.5), 3, param=2.0)
    np.testing.assert_allclose(got, -lr * (1 + 0.5 * 2.0), rtol=1e-4)
    # clipping bounds the global norm of the gradient before Adam: with SGD-like first step unchanged in sign
    opt = make_optimizer(lr, clip_norm=1e-3)
    assert np.all(_adam_updates(opt, 3, grad=50.0) < 0)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"schedule": "linear"}, "schedule"),
        ({"schedule": "cosine"}, "total_steps"),
        ({"schedule": "warmup_cosine", "total_steps": 5, "warmup_steps": 5}, "warmup_steps"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_make_optimizer_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_optimizer(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------------------------


def test_split_model_rejects_non_param_state():
    class WithDropout(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 2, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    with pytest.raises(ValueError, match="nnx.Param"):
        split_model(WithDropout(nnx.Rngs(0)))
    with pytest.raises(TypeError, match="model"):
        split_model(lambda x: x)


def test_train_step_decreases_loss_and_does_not_retrace():
    traces = []

    def counting_loss(model, batch, key):
        traces.append(1)  # runs only while tracing
        return loss_fn(model, batch, key)

    graphdef, params = split_model(TinyNet(rngs=nnx.Rngs(0)))
    opt = make_optimizer(3e-2)
    opt_state = opt.init(params)
    step = make_train_step(graphdef, counting_loss, opt)
    key = jax.random.key(0)
    losses = []
    for s in range(40):
        params, opt_state, m = step(params, opt_state, batch_at(s), jax.random.fold_in(key, s))
        losses.append(float(m["loss"]))
        assert set(m) == {"loss", "mse", "abs"}
        np.testing.assert_allclose(m["loss"], m["mse"], rtol=1e-6)
    assert len(traces) == 1, "train_step retraced on a later call with the same shapes"
    assert np.mean(losses[-5:]) < 0.2 * losses[0]
    # the learned kernel approaches the true filter (an independent check of what was learned)
    kernel = np.asarray(params["conv"]["kernel"][...])[:, :, 0, 0]
    assert np.abs(kernel - TRUE_KERNEL).max() < np.abs(TRUE_KERNEL).max()

    evals = []

    def eval_fn(model, batch):
        evals.append(1)
        return {"mse": loss_fn(model, batch, None)[0]}

    eval_step = make_eval_step(graphdef, eval_fn)
    b = batch_at(99)
    m1, m2 = eval_step(params, b), eval_step(params, batch_at(100))
    assert len(evals) == 1
    ref = np.mean((np.asarray(nnx.merge(graphdef, params)(b["x"])) - np.asarray(_target(b["x"]))) ** 2)
    np.testing.assert_allclose(m1["mse"], ref, rtol=1e-5)
    assert float(m1["mse"]) != float(m2["mse"])


def test_train_step_input_errors():
    graphdef, params = split_model(TinyNet(rngs=nnx.Rngs(0)))
    opt = make_optimizer()
    step = make_train_step(graphdef, loss_fn, opt)
    with pytest.raises(TypeError, match="batch"):
        step(params, opt.init(params), [np.zeros((2, 3))], jax.random.key(0))
    with pytest.raises(ValueError, match="leading batch size"):
        step(params, opt.init(params), {"x": np.zeros((2, 3)), "y": np.zeros((3, 3))}, jax.random.key(0))
    with pytest.raises(TypeError, match="graphdef"):
        make_train_step(params, loss_fn, opt)
    with pytest.raises(TypeError, match="optimizer"):
        make_train_step(graphdef, loss_fn, optax.adam)


def test_initialize_distributed_is_noop_without_environment(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert initialize_distributed() is False
    assert jax.process_count() == 1


# ----------------------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------------------


def _fit(workdir, steps, *, key=0, data=train_data, **kw):
    kw.setdefault("save_every", 3)
    kw.setdefault("log_every", 1)
    kw.setdefault("progress", False)
    return fit(
        TinyNet(rngs=nnx.Rngs(0)),
        loss_fn,
        make_optimizer(3e-2),
        data,
        steps=steps,
        key=jax.random.key(key) if isinstance(key, int) else key,
        workdir=workdir,
        augment=augment,
        **kw,
    )


def test_fit_determinism_resume_and_log(tmp_path):
    full = _fit(tmp_path / "full", 6)
    again = _fit(tmp_path / "again", 6)
    other = _fit(tmp_path / "other", 6, key=1)
    assert isinstance(full, FitResult)
    np.testing.assert_array_equal(full.history["train"]["step"], np.arange(1, 7))
    np.testing.assert_array_equal(full.history["train"]["loss"], again.history["train"]["loss"])
    assert _params_equal(nnx.state(full.model, nnx.Param), nnx.state(again.model, nnx.Param))
    assert not np.allclose(full.history["train"]["loss"][1:], other.history["train"]["loss"][1:])

    # interrupted run: 3 steps (checkpoint at 3), then a fresh call resumes to 6
    first = _fit(tmp_path / "resumed", 3)
    second = _fit(tmp_path / "resumed", 6)
    np.testing.assert_array_equal(second.history["train"]["step"], [4, 5, 6])
    losses = np.concatenate([first.history["train"]["loss"], second.history["train"]["loss"]])
    np.testing.assert_allclose(losses, full.history["train"]["loss"], rtol=1e-6, atol=1e-7)
    assert _params_equal(nnx.state(second.model, nnx.Param), nnx.state(full.model, nnx.Param), atol=1e-6)

    # metrics.csv: one row per log point, the right columns, appended across the resume
    rows = _rows(tmp_path / "resumed" / "metrics.csv")
    assert list(rows[0]) == ["step", "time_s", "train_loss", "train_abs", "train_mse"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(
        [float(r["train_loss"]) for r in rows], full.history["train"]["loss"], rtol=1e-6
    )
    assert (tmp_path / "resumed" / "metrics.png").is_file()
    assert sorted(
        int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir() if p.name.isdigit()
    ) == [3, 6]

    # a finished run resumed again does nothing more
    done = _fit(tmp_path / "resumed", 6)
    assert done.history["train"] == {}
    assert _params_equal(nnx.state(done.model, nnx.Param), nnx.state(full.model, nnx.Param), atol=1e-6)


def test_fit_resume_after_kill_mid_run(tmp_path):
    """An exception after update 4 (checkpoint at 3) leaves rows 1..4; the resumed run drops row 4 and redoes it."""

    def dying_data(start):
        for s, b in zip(range(start, 10**9), train_data(start)):
            if s == 4:
                raise KeyboardInterrupt
            yield b

    full = _fit(tmp_path / "full", 6, log_every=2)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "run", 6, data=dying_data, log_every=2)
    assert [int(r["step"]) for r in _rows(tmp_path / "run" / "metrics.csv")] == [2, 4]
    resumed = _fit(tmp_path / "run", 6, log_every=2)
    np.testing.assert_allclose(resumed.history["train"]["loss"], full.history["train"]["loss"][3:], rtol=1e-6)
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    # the row at step 4 averages updates 3 and 4 in the full run; after resume it was re-logged from 4 alone
    ref = _rows(tmp_path / "full" / "metrics.csv")
    np.testing.assert_allclose(float(rows[0]["train_loss"]), float(ref[0]["train_loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(rows[2]["train_loss"]), float(ref[2]["train_loss"]), rtol=1e-6)


def test_fit_best_checkpoint_and_load_model(tmp_path):
    scores = iter([0.2, 0.9, 0.5, 0.1])  # validation "Dice" per evaluation: best at the 2nd (step 4)

    def eval_data():
        value = next(scores)
        yield {"score": np.full((2,), value, np.float32), "x": batch_at(50, 2)["x"]}
        yield {"score": np.full((4,), value, np.float32), "x": batch_at(51, 4)["x"]}

    def eval_fn(model, batch):
        mse = jnp.mean((model(batch["x"]) - _target(batch["x"])) ** 2)
        return {"dice": jnp.mean(batch["score"]), "mse": mse}

    workdir = tmp_path / "run"
    meta = {"grid": {"shape": list(SHAPE), "affine": np.eye(3).tolist()}}
    result = _fit(
        workdir,
        8,
        eval_fn=eval_fn,
        eval_data=eval_data,
        eval_every=2,
        save_every=2,
        max_to_keep=10,
        log_every=4,
        metadata=meta,
    )
    np.testing.assert_array_equal(result.history["eval"]["step"], [2, 4, 6, 8])
    np.testing.assert_allclose(result.history["eval"]["dice"], [0.2, 0.9, 0.5, 0.1], rtol=1e-6)
    rows = _rows(workdir / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]  # log points are the union of log and eval steps
    assert {"val_dice", "val_mse", "train_loss"} <= set(rows[0])
    best_row = max(rows, key=lambda r: float(r["val_dice"]))
    assert [p.name for p in (workdir / "best").iterdir() if p.name.isdigit()] == [best_row["step"]] == ["4"]

    info = json.loads((workdir / "model.json").read_text())
    assert info == {"config": {"width": 1}, "metadata": meta}

    build = lambda c: TinyNet.from_config(c, rngs=nnx.Rngs(123))
    latest, meta_out = load_model(workdir, build=build, which="latest")
    assert meta_out == meta
    assert _params_equal(nnx.state(latest, nnx.Param), nnx.state(result.model, nnx.Param))
    best, _ = load_model(workdir, build=build)
    assert not _params_equal(nnx.state(best, nnx.Param), nnx.state(result.model, nnx.Param), atol=1e-6)
    # the best parameters are those of step 4: rerun 4 steps with the same key and data
    ref = _fit(tmp_path / "ref", 4)
    assert _params_equal(nnx.state(best, nnx.Param), nnx.state(ref.model, nnx.Param), atol=1e-6)
    x = batch_at(7)["x"]
    np.testing.assert_allclose(best(x), ref.model(x), atol=1e-6)

    with pytest.raises(FileNotFoundError, match="best"):
        load_model(tmp_path / "ref", build=build)
    with pytest.raises(ValueError, match="which"):
        load_model(workdir, build=build, which="first")


def test_fit_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        _fit(tmp_path, 0)
    with pytest.raises(ValueError, match="best_mode"):
        _fit(tmp_path, 2, best_mode="largest")
    with pytest.raises(ValueError, match="eval_fn and eval_data"):
        _fit(tmp_path, 2, eval_fn=lambda m, b: {})
    with pytest.raises(ValueError, match="ran out"):
        _fit(tmp_path / "short", 3, data=lambda s: [batch_at(s)])
    with pytest.raises(ValueError, match="best_metric"):
        _fit(
            tmp_path / "nodice",
            2,
            eval_fn=lambda m, b: {"mse": jnp.mean(b["x"])},
            eval_data=lambda: [batch_at(0)],
            eval_every=1,
        )
    with pytest.raises(TypeError, match="metadata"):
        _fit(tmp_path / "meta", 1, metadata={"x": object()})


# ----------------------------------------------------------------------------------------------------------------
# data parallelism over 4 CPU devices (a subprocess: the device count is fixed when JAX starts)
# ----------------------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, json
    # four CPU devices, plus the compile flags of the test run (tests/conftest.py), handed over by the parent
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 " + os.environ.pop("PARENT_XLA_FLAGS", "")
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, sys.argv[1])
    import jax, numpy as np
    from flax import nnx
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    import test_learn_train as t
    from jaxreg.learn.train import make_mesh, make_train_step, make_optimizer, shard_batch, split_model
    out = {"devices": jax.device_count()}
    res = t._fit(sys.argv[2], 4, save_every=2)
    out["fit4"] = res.history["train"]["loss"].tolist()
    # the same training on one device
    graphdef, params = split_model(t.TinyNet(rngs=nnx.Rngs(0)))
    opt = make_optimizer(3e-2)
    opt_state = opt.init(params)
    step = make_train_step(graphdef, t.loss_fn, opt, augment=t.augment, mesh=make_mesh(devices=jax.devices()[:1]))
    key = jax.random.key(0)
    losses = []
    for s in range(4):
        params, opt_state, m = step(params, opt_state, t.batch_at(s), jax.random.fold_in(key, s))
        losses.append(float(m["loss"]))
    out["fit1"] = losses
    out["params_close"] = all(
        np.allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.state(res.model, nnx.Param))))
    sharded = shard_batch(t.batch_at(0))
    out["batch_shards"] = len({s.device for s in sharded["x"].addressable_shards})
    out["shard_rows"] = [s.data.shape[0] for s in sharded["x"].addressable_shards]
    try:
        shard_batch(t.batch_at(0, batch=3))
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


def test_data_parallel_over_four_cpu_devices_matches_one_device(tmp_path, child_result):
    out = child_result(CHILD, REPO, tmp_path / "dp")
    assert out["devices"] == 4
    assert out["batch_shards"] == 4 and out["shard_rows"] == [1, 1, 1, 1]
    np.testing.assert_allclose(out["fit4"], out["fit1"], rtol=1e-5)
    assert out["params_close"]
    assert out["error"] is not None and "divisible" in out["error"] and "4" in out["error"]
