"""The task examples in examples/tasks/ (local plugins, loaded with --plugin FILE): the VAE and the GAN
train from the CLI; the GAN's two losses each reach only their own network, and its two optimizers
each follow their own learning rate."""

import importlib.util
import json
import math

import jax
import numpy as np
import pytest

import jaxyard
from jaxyard.core.train.build import build
from jaxyard.core.train.loop import make_loop
from jaxyard.core.train.steps import merged

from helpers import REPO, as_options

VAE = REPO / "examples" / "tasks" / "vae.py"
GAN = REPO / "examples" / "tasks" / "gan.py"


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def module(path):
    """A plugin file imported as a module of its own (its functions and classes, called directly)."""
    spec = importlib.util.spec_from_file_location(f"task_example_{path.stem}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


# -- VAE ---------------------------------------------------------------------------------------

VAE_SETS = ("model.hidden=64", "model.latent_dim=4", "run.warmup_steps=0")  # 1,000 images: 32 steps an epoch


def test_vae_trains_from_the_cli(run_cli, tmp_path):
    """The negative ELBO falls from the first epoch to the last; summary.json records the task and its metrics."""
    out = tmp_path / "vae"
    result = run_cli(["--strict-plugins", "--plugin", VAE, "run", "--task", "vae", "--model", "vae", "--loader", "binary-digits",
                      "--epochs", "5", "--checkpointer", "none", "--set", "run.curves=false", *as_options(VAE_SETS), "--out", out])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    records = history(out)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    for split in ("train", "val"):
        assert records[-1][f"{split}_loss"] < records[0][f"{split}_loss"], [r[f"{split}_loss"] for r in records]
        for r in records:  # the loss is the ELBO's two terms (beta = 1)
            assert r[f"{split}_loss"] == pytest.approx(r[f"{split}_recon"] + r[f"{split}_kl"], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "vae" and summary["metrics"] == {"loss": "min", "recon": "min", "kl": "min"}
    assert set(summary["test"]) == {"test_loss", "test_recon", "test_kl"}
    assert all(math.isfinite(v) and v > 0 for v in summary["test"].values())
    assert "  Test Recon: " in result.stdout


def test_vae_loss_is_the_negative_elbo():
    """Each row: the Bernoulli cross-entropy summed over the pixels, plus beta times the Gaussian KL in closed form;
    padded rows count nowhere."""
    vae = module(VAE)
    rng = np.random.default_rng(0)
    x = (rng.random((5, 6)) < 0.5).astype(np.float32)
    logits, mean, logvar = (rng.normal(size=s).astype(np.float32) for s in ((5, 6), (5, 3), (5, 3)))
    mask = np.array([1, 1, 1, 1, 0], np.float32)
    task = vae.VAETask(vae.VAETaskParams(beta=0.5))
    loss, sums = task.loss(lambda _: (logits, mean, logvar), {"x": x}, mask)
    recon = -(x * np.log(1 / (1 + np.exp(-logits))) + (1 - x) * np.log(1 - 1 / (1 + np.exp(-logits)))).sum(axis=1)
    kl = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).sum(axis=1)
    real = mask == 1
    assert float(sums["recon"]) == pytest.approx(recon[real].sum(), rel=1e-5)
    assert float(sums["kl"]) == pytest.approx(kl[real].sum(), rel=1e-5)
    assert float(loss) == pytest.approx((recon + 0.5 * kl)[real].mean(), rel=1e-5)
    assert float(sums["count"]) == 4


def test_vae_samples_in_training_and_decodes_the_mean_in_evaluation():
    from flax import nnx

    vae = module(VAE)
    model = vae.vae_model(vae.VAEModelParams(hidden=8, latent_dim=2), input_shape=(64,), num_outputs=64,
                          rngs=nnx.Rngs(params=0, sample=1))
    x = np.ones((3, 64), np.float32)
    assert not np.array_equal(model(x)[0], model(x)[0])  # a fresh sample per call
    model.eval()
    logits, mean, _ = model(x)
    np.testing.assert_array_equal(logits, model(x)[0])
    np.testing.assert_array_equal(logits, model.decode(mean))


def test_binary_digits_are_binary_and_the_same_for_a_data_seed():
    vae = module(VAE)
    params = vae.BinaryDigitsParams(train_size=50, val_size=10, test_size=10)
    a, b = vae.binary_digits(params, seed=0), vae.binary_digits(params, seed=1)
    assert a.train["x"].shape == (50, 64) and a.train["x"].dtype == np.float32 and set(np.unique(a.train["x"])) <= {0.0, 1.0}
    assert a.num_classes == 10 and a.sizes() == {"train": 50, "val": 10, "test": 10}
    assert all(np.array_equal(a.train[k], b.train[k]) for k in ("x", "y"))  # the run's seed does not change the data


# -- GAN ---------------------------------------------------------------------------------------

GAN_SETS = ("model.hidden=32", "run.warmup_steps=0")  # 2,000 points: 32 steps an epoch in batches of 64


def test_gan_trains_from_the_cli(run_cli, tmp_path):
    """Both networks train from one loss: every metric finite, the generated points' Fréchet distance to the real ones
    falls to under half its value after the first epoch (at initialisation it is about 4: the generator's points lie
    near one point, the ring's have a variance of 2 in each direction), and the best checkpoint follows the task's frechet."""
    out = tmp_path / "gan"
    result = run_cli(["--strict-plugins", "--plugin", GAN, "run", "--task", "gan", "--model", "gan", "--loader", "ring", "--epochs", "6",
                      "--batch-size", "64", *as_options(GAN_SETS), "--set", "run.monitor=val_frechet", "--set", "run.curves=false", "--out", out])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    records = history(out)
    assert all(math.isfinite(r[f"{split}_{m}"]) for r in records for split in ("train", "val") for m in ("loss", "d_loss", "g_loss", "frechet"))
    assert records[-1]["val_frechet"] < 0.5 * records[0]["val_frechet"], [r["val_frechet"] for r in records]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "gan" and summary["metrics"] == {"loss": "min", "d_loss": "min", "g_loss": "min", "frechet": "min"}
    assert summary["best"]["monitor"] == "val_frechet"
    assert summary["best"]["val_frechet"] == min(r["val_frechet"] for r in records)
    assert all(math.isfinite(v) for v in summary["test"].values())


def _ring(n=16):
    gan = module(GAN)
    return gan, gan.ring(gan.RingParams(train_size=n, val_size=1, test_size=1), seed=0).train


def test_gan_losses_each_reach_only_their_own_network():
    """The gradient of the discriminator's loss is zero for every generator parameter and that of the generator's loss
    zero for every discriminator parameter; the gradient of the loss trained on is, per network, that of its own loss."""
    from flax import nnx

    gan, batch = _ring()
    task = gan.GANTask(gan.GANTaskParams())
    model = gan.gan_model(gan.GANModelParams(hidden=16), input_shape=(2,), rngs=nnx.Rngs(params=0, noise=1))
    graphdef, state = nnx.split(model)
    mask = np.r_[np.ones(13), np.zeros(3)].astype(np.float32)

    @jax.jit
    def grads(state):  # each from a copy of the same state: the same noise
        return {part: nnx.grad(lambda m, part=part: task.loss(m, batch, mask)[1][part])(nnx.merge(graphdef, state, copy=True))
                for part in ("d_loss", "g_loss", "loss")}

    out = grads(state)
    for own, other, part in (("discriminator", "generator", "d_loss"), ("generator", "discriminator", "g_loss")):
        assert all(not np.asarray(g).any() for g in jax.tree.leaves(out[part][other])), f"{part} moves the {other}"
        assert all(np.asarray(g).any() for g in jax.tree.leaves(out[part][own])), f"{part} leaves some of the {own}'s parameters still"
        np.testing.assert_allclose(np.concatenate([np.ravel(g) for g in jax.tree.leaves(out["loss"][own])]),
                                   np.concatenate([np.ravel(g) for g in jax.tree.leaves(out[part][own])]), rtol=1e-5, atol=1e-7)


def test_gan_optimizer_labels_each_parameter_by_its_network():
    from flax import nnx

    gan, _ = _ring()
    model = gan.gan_model(gan.GANModelParams(hidden=4, layers=1), input_shape=(2,), rngs=nnx.Rngs(params=0, noise=1))
    labels = gan.network_labels(nnx.state(model, nnx.Param))
    assert set(jax.tree.leaves(labels["generator"])) == {"generator"}
    assert set(jax.tree.leaves(labels["discriminator"])) == {"discriminator"}


@pytest.fixture(scope="module")
def gan_registry():
    return jaxyard.build_registry(plugins=[str(GAN)], strict=True)


def trained(registry, programs, *sets, epochs=1):
    """The GAN's parameters before and after ``epochs`` epochs in batches of 64 (through the library: build, then the loop).
    ``programs``: shared by the calls, with the learning rates as inputs (as a sweep runs it): one compile per data shape."""
    from flax import nnx

    options = {"task": "gan", "model": "gan", "loader": "ring", "epochs": epochs, "batch_size": 64, "checkpointer": "none",
               "scheduler": "constant"}
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options, sets=[*GAN_SETS, *sets])
    built = build(config, programs)

    def params():
        return jax.tree.map(np.array, nnx.state(merged(built.train_graphdef, built.state)[0], nnx.Param))

    before = params()
    loop = make_loop(built)
    for epoch in range(1, epochs + 1):
        loop.train_epoch(epoch)
    return before, params()


def moved(before, after, network):
    return jax.tree.leaves(jax.tree.map(lambda a, b: b - a, before[network], after[network]))


def test_gan_optimizers_follow_their_own_learning_rates(gan_registry):
    """A learning rate of 0 freezes its network alone, over an epoch of 32 steps; and on one step (the same
    gradients) each network's Adam step scales with its own learning rate and not with the other's. The rates are
    inputs of one compiled program (traced task parameters), as in a sweep over them."""
    from jaxyard.core.train.traced import Programs

    programs = Programs(["task.generator_lr", "task.discriminator_lr"])
    for frozen_net, free in (("generator", "discriminator"), ("discriminator", "generator")):
        before, after = trained(gan_registry, programs, f"task.{frozen_net}_lr=0")
        assert not any(d.any() for d in moved(before, after, frozen_net)), f"{frozen_net}_lr = 0, yet the {frozen_net} moved"
        assert all(d.any() for d in moved(before, after, free)), f"the {free} did not train"
    one_step = "loader.train_size=64"  # one batch
    before, a = trained(gan_registry, programs, one_step, "task.generator_lr=2e-3", "task.discriminator_lr=1e-3")
    _, b = trained(gan_registry, programs, one_step, "task.generator_lr=1e-3", "task.discriminator_lr=3e-3")
    for network, ratio in (("generator", 2.0), ("discriminator", 1 / 3)):  # a's step over b's
        for step_a, step_b in zip(moved(before, a, network), moved(before, b, network), strict=True):
            np.testing.assert_allclose(step_a, ratio * step_b, rtol=2e-3, atol=1e-7, err_msg=network)
    assert programs.compiles == 2  # one training program per data shape, whatever the rates
