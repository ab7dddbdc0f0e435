"""Exported and shipped models: ``export_model`` -> ``load_model`` round trip, names, ``--model``/``--export``.

Every test uses a tiny freshly initialised 2D :class:`RegistrationNet` (encoder (4, 4), decoder (4, 4, 4), 16x16)
whose parameters are saved in the layout of a :func:`fit` work folder (``model.json`` and an orbax checkpoint in
``best/``), so no test trains.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import jaxreg._models as shipped
from jaxreg.cli.main import main
from jaxreg.learn.networks import RegistrationNet
from jaxreg.learn.train import available_models, export_model, load_model, resolve_model, split_model

SHAPE = (16, 16)
META = {
    "grid": {"shape": list(SHAPE), "spacing": [1.0, 1.0], "affine": np.eye(3).tolist()},
    "mode": "unsupervised",
}


def _net(seed=0):
    return RegistrationNet(2, encoder=(4, 4), decoder=(4, 4, 4), rngs=nnx.Rngs(seed))


def _workdir(path, model, *, step=3):
    """A work folder as :func:`fit` leaves it: ``model.json`` and ``best/<step>`` (an orbax params checkpoint)."""
    path.mkdir(parents=True)
    (path / "model.json").write_text(json.dumps({"config": model.config, "metadata": META}))
    _, params = split_model(model)
    mgr = ocp.CheckpointManager(
        (path / "best").absolute(),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
    )
    mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    mgr.wait_until_finished()
    mgr.close()
    return path


def _pair(seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k1, (1, *SHAPE, 1)), jax.random.uniform(k2, (1, *SHAPE, 1))


def _perturbed(seed=0):
    """A net whose flow head is not zero (a fresh one predicts exactly zero, which would hide a bad load)."""
    net = _net(seed)
    net.flow.kernel[...] = jax.random.normal(jax.random.key(7), net.flow.kernel.shape) * 0.1
    return net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    net = _perturbed()
    work = _workdir(root / "work", net)
    dest = export_model(work, root / "export", metadata_extra={"description": "tiny test net"})
    return net, work, dest


def test_export_round_trip_is_exact(exported):
    net, work, dest = exported
    assert sorted(p.name for p in dest.iterdir()) == ["model.json", "params.npz"]
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    info = json.loads((dest / "model.json").read_text())
    assert info["config"] == net.config
    assert info["metadata"] == {**META, "description": "tiny test net"}
    assert info["export"] == {"which": "best", "step": 3, "dtype": "float32"}
    with np.load(dest / "params.npz") as npz:
        names = set(npz.files)
        assert all(npz[n].dtype == np.float32 for n in names)
    assert names == {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(net, nnx.Param))}
    fixed, moving = _pair()
    ref = net(fixed, moving).field
    assert float(jnp.abs(ref).max()) > 0
    for source in (dest, work):  # exported folder (build defaulted) and work folder give the same network
        model, meta = load_model(source)
        assert meta == ({**META, "description": "tiny test net"} if source == dest else META)
        np.testing.assert_array_equal(model(fixed, moving).field, ref)


def test_export_float16_is_smaller_and_close(exported, tmp_path):
    net, _, dest = exported
    half = export_model(dest, tmp_path / "half", dtype="float16")  # an exported folder re-exports
    assert json.loads((half / "model.json").read_text())["export"]["dtype"] == "float16"
    assert (half / "params.npz").stat().st_size < (dest / "params.npz").stat().st_size
    model, _ = load_model(half)
    fixed, moving = _pair()
    assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32
    np.testing.assert_allclose(model(fixed, moving).field, net(fixed, moving).field, atol=1e-2)


def test_export_refuses_a_foreign_folder_and_replaces_an_exported_one(exported, tmp_path):
    _, work, _ = exported
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="dest .*not an exported model"):
        export_model(work, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(FileExistsError, match="dest .*not a folder"):
        export_model(work, foreign / "notes.txt")
    # an exported model folder is replaced as a whole; its other files (a train.toml) are kept
    target = tmp_path / "target"
    export_model(work, target)
    (target / "train.toml").write_text("x = 1\n")
    export_model(work, target, metadata_extra={"version": 2})
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "params.npz", "train.toml"]
    assert json.loads((target / "model.json").read_text())["metadata"]["version"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="which"):
        export_model(work, tmp_path / "x", which="first")
    with pytest.raises(ValueError, match="dtype"):
        export_model(work, tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()


def test_mismatched_parameters_name_the_file(exported):
    _, _, dest = exported

    def build(config):
        return RegistrationNet.from_config({**config, "decoder": [4, 4, 8]}, rngs=nnx.Rngs(0))

    with pytest.raises(ValueError, match="params.npz"):
        load_model(dest, build=build)


def test_shipped_names_resolve(exported, tmp_path, monkeypatch):
    net, _, dest = exported
    models = tmp_path / "models"
    models.mkdir()
    (models / "notamodel").mkdir()  # no model.json: not listed
    export_model(dest, models / "tiny")
    monkeypatch.setattr(shipped, "MODELS_DIR", models)
    assert available_models() == ("tiny",)
    assert resolve_model("tiny") == models / "tiny"
    model, meta = load_model("tiny")
    assert meta["description"] == "tiny test net"
    fixed, moving = _pair()
    np.testing.assert_array_equal(model(fixed, moving).field, net(fixed, moving).field)
    with pytest.raises(FileNotFoundError, match=r"workdir 'nosuchmodel'.*model\.json.*shipped: tiny"):
        load_model("nosuchmodel")
    with pytest.raises(FileNotFoundError, match="shipped: tiny"):
        resolve_model("notamodel/")


def test_unknown_name_lists_no_models(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "MODELS_DIR", tmp_path / "absent")
    assert available_models() == ()
    with pytest.raises(FileNotFoundError, match=r"model 'brain'.*model\.json.*shipped: none"):
        resolve_model("brain")


def test_cli_predict_unknown_model_is_a_usage_error(tmp_path, capsys, monkeypatch):
    models = tmp_path / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "model.json").write_text("{}")
    monkeypatch.setattr(shipped, "MODELS_DIR", models)
    rc = main(["predict", "--model", "nosuchmodel", "f.nii.gz", "m.nii.gz", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("jaxreg: error: --model: ")
    assert "nosuchmodel" in err[0] and "tiny" in err[0] and "model.json" in err[0]
    assert not (tmp_path / "out").exists()
    assert main(["predict", "--help"]) == 0
    assert "tiny" in capsys.readouterr().out
