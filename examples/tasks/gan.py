"""A generative adversarial network as a jaxyard plugin: a task, a model and a loader in one local file.

    jaxyard --plugin examples/tasks/gan.py run --task gan --model gan --loader ring

The engine differentiates one loss with respect to the whole model and takes one optimizer step;
the task trains two networks against each other within that, with no special case in the engine:

- one loss, ``d_loss + g_loss``, in which each part reaches only its own network's parameters:
  the discriminator's loss sees the generated points through ``jax.lax.stop_gradient``, and the
  generator's loss reads a copy of the discriminator whose parameters are stop-gradient'ed. So
  the gradient of the sum is, per network, the gradient of its own loss.
- two optimizers: :meth:`GANTask.optimizer` combines two of the run's optimizer with
  ``optax.multi_transform``, labelling each parameter by the network its path starts with: the
  generator's peaks at ``task.generator_lr``, the discriminator's at ``task.discriminator_lr``
  (both follow the run's schedule; ``run.learning_rate`` sets neither peak), each with its own
  ``b1`` (``task.generator_b1``, ``task.discriminator_b1``) where the run's optimizer has one, as
  adam and adamw do. The two rates are traced: a sweep over them compiles one program.

- task ``gan``: the discriminator's binary cross-entropy on real (label 1) and generated (label 0)
  points, the generator's non-saturating loss (its points labelled 1), both
  ``optax.sigmoid_binary_cross_entropy``. Reports ``loss`` (their sum), ``d_loss``, ``g_loss`` and
  ``frechet``: the Fréchet distance between Gaussians fitted to the real and the generated points
  (their means and covariances come from additive sums, Σx and Σxxᵀ of each).
- model ``gan``: ``generator`` (noise -> a point) and ``discriminator`` (a point -> a logit) MLPs;
  called on points it gives the discriminator's logits; ``generate(n)`` draws n points. Its noise
  comes from the ``noise`` random stream (evaluation draws it too, from the stream as the
  checkpoint left it: ``eval`` of a checkpoint repeats its numbers).
- loader ``ring``: 2-D points from a mixture of Gaussians centred on a circle, from ``data_seed``:
  ``{"x": float32 (n, 2), "y": int32 the mixture component}``.

jax is imported inside the functions only: listing the plugin's components does not load it.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
from attrs import validators as v

from jaxyard import Dataset, PluginError, Task, UsageError, hookimpl, param
from jaxyard.core.task import COUNT, LOSS, features

NETWORKS = ("generator", "discriminator")

# -- task -------------------------------------------------------------------------------------


@attrs.frozen
class GANTaskParams:
    generator_lr: float = param(1e-3, "peak learning rate of the generator's optimizer (0: frozen)",
                                validator=v.ge(0.0), traced=True)
    discriminator_lr: float = param(1e-3, "peak learning rate of the discriminator's optimizer (0: frozen)",
                                    validator=v.ge(0.0), traced=True)
    generator_b1: float = param(0.5, "b1 of the generator's optimizer (where the run's optimizer has one)",
                                validator=[v.ge(0.0), v.lt(1.0)])
    discriminator_b1: float = param(0.5, "b1 of the discriminator's optimizer (where the run's optimizer has one)",
                                    validator=[v.ge(0.0), v.lt(1.0)])


class GANTask(Task):
    """Real points ``x`` (float, one vector per example); the model has ``generator`` and
    ``discriminator`` submodules and a ``noise`` random stream (see :func:`gan_model`)."""

    metrics = {LOSS: "min", "d_loss": "min", "g_loss": "min", "frechet": "min"}
    rng_streams = ("noise",)

    def __init__(self, p: GANTaskParams):
        self.p = p

    def context(self, data, example) -> dict[str, Any]:
        return {"num_outputs": 1}  # the discriminator's logit; the generator's points have the inputs' shape

    def check(self, batch, where, context) -> None:
        import numpy as np

        x = np.asarray(features(batch))
        if not np.issubdtype(x.dtype, np.floating):
            raise UsageError(f"{where} gives {x.dtype} points; task 'gan' needs float features (one point per example)")

    def optimizer(self, make):
        import optax

        def one(learning_rate, b1):
            try:
                return make(learning_rate=learning_rate, b1=b1)
            except PluginError:  # the run's optimizer has no b1 (sgd): its own settings
                return make(learning_rate=learning_rate)

        return optax.multi_transform({"generator": one(self.p.generator_lr, self.p.generator_b1),
                                      "discriminator": one(self.p.discriminator_lr, self.p.discriminator_b1)},
                                     network_labels)

    def loss(self, model, batch, mask):
        import jax
        import jax.numpy as jnp
        import optax

        real = features(batch)
        real = jnp.asarray(real, jnp.float32).reshape(real.shape[0], -1)
        fake = model.generate(real.shape[0])
        # the discriminator's loss: its own parameters only (the generated points are constants to it)
        d_real = model.discriminator(real)
        d_fake = model.discriminator(jax.lax.stop_gradient(fake))
        d_loss = (optax.sigmoid_binary_cross_entropy(d_real, jnp.ones_like(d_real))
                  + optax.sigmoid_binary_cross_entropy(d_fake, jnp.zeros_like(d_fake))).reshape(-1)
        # the generator's loss: the discriminator read with its parameters held constant
        g_logits = frozen(model.discriminator)(fake)
        g_loss = optax.sigmoid_binary_cross_entropy(g_logits, jnp.ones_like(g_logits)).reshape(-1)
        count = jnp.sum(mask)
        total = jnp.sum((d_loss + g_loss) * mask)
        sums = {LOSS: total, "d_loss": jnp.sum(d_loss * mask), "g_loss": jnp.sum(g_loss * mask), COUNT: count}
        fake = jax.lax.stop_gradient(fake)
        for name, points in (("real", real), ("fake", fake)):
            first = jnp.sum(points * mask[:, None], axis=0)
            second = jnp.einsum("n,ni,nj->ij", mask, points, points)
            for i in range(points.shape[1]):
                sums[f"{name}_{i}"] = first[i]
                for j in range(i, points.shape[1]):
                    sums[f"{name}_{i}_{j}"] = second[i, j]
        return total / jnp.maximum(count, 1.0), sums

    def summarize(self, sums) -> dict[str, float]:
        count = max(float(sums[COUNT]), 1.0)
        out = {name: float(sums[name]) / count for name in (LOSS, "d_loss", "g_loss")}
        out["frechet"] = frechet(*moments(sums, "real"), *moments(sums, "fake"))
        return out


def network_labels(params):
    """Each parameter's network, ``generator`` or ``discriminator``: the first key of its path."""
    import jax

    def label(path, _):
        first = path[0]
        name = getattr(first, "key", getattr(first, "name", first))
        if name not in NETWORKS:
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} is in neither {' nor '.join(NETWORKS)}")
        return name

    return jax.tree_util.tree_map_with_path(label, params)


def frozen(module):
    """A copy of ``module`` reading its state through ``jax.lax.stop_gradient``: no gradient reaches it."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def moments(sums, name: str):
    """Mean and covariance of the ``name`` points from their sums Σx, Σxxᵀ and the count."""
    import numpy as np

    count = max(float(sums[COUNT]), 1.0)
    dims = sum(1 for key in sums if key.startswith(f"{name}_") and key.count("_") == 1)
    mean = np.array([float(sums[f"{name}_{i}"]) for i in range(dims)]) / count
    second = np.empty((dims, dims))
    for i in range(dims):
        for j in range(i, dims):
            second[i, j] = second[j, i] = float(sums[f"{name}_{i}_{j}"]) / count
    return mean, second - np.outer(mean, mean)


def frechet(mean_a, cov_a, mean_b, cov_b) -> float:
    """The Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b), squared:
    |mean_a - mean_b|² + tr(cov_a + cov_b - 2 (cov_a^½ cov_b cov_a^½)^½)."""
    import numpy as np

    def sqrt_psd(matrix):
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
        return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T

    root = sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0.0, None)).sum()
    return float(np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def gan_task(p: GANTaskParams):
    """GAN: discriminator and generator losses in one, each network with its own optimizer; loss, d_loss, g_loss, frechet."""
    return GANTask(p)


# -- model ------------------------------------------------------------------------------------


@attrs.frozen
class GANModelParams:
    noise_dim: int = param(8, "dimensions of the generator's input noise", validator=v.ge(1))
    hidden: int = param(64, "units of each hidden layer of both networks", validator=v.ge(1))
    layers: int = param(2, "hidden layers of each network", validator=v.ge(1))


@functools.cache
def _classes():
    import jax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, sizes, *, rngs: nnx.Rngs):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.leaky_relu(layer(x), 0.2)
            return self.layers[-1](x)

    class GAN(nnx.Module):
        def __init__(self, points: int, noise_dim: int, hidden: int, layers: int, *, rngs: nnx.Rngs):
            self.noise_dim = noise_dim
            self.generator = MLP([noise_dim, *[hidden] * layers, points], rngs=rngs)
            self.discriminator = MLP([points, *[hidden] * layers, 1], rngs=rngs)
            self.noise = rngs.noise.fork()  # the task's stream (`default` when another task runs it)

        def generate(self, n: int):
            """``n`` generated points, from fresh noise."""
            return self.generator(jax.random.normal(self.noise(), (n, self.noise_dim)))

        def __call__(self, x):
            """The discriminator's logit for each point of ``x``: (n, 1)."""
            return self.discriminator(x.reshape(x.shape[0], -1))

    return GAN


def gan_model(p: GANModelParams, *, input_shape, rngs):
    """A generator MLP (noise -> point) and a discriminator MLP (point -> logit); called on points: the logits."""
    import math

    return _classes()(math.prod(input_shape), p.noise_dim, p.hidden, p.layers, rngs=rngs)


# -- loader -----------------------------------------------------------------------------------


@attrs.frozen
class RingParams:
    train_size: int = param(2000, "training points", validator=v.ge(1))
    val_size: int = param(500, "validation points", validator=v.ge(1))
    test_size: int = param(500, "test points", validator=v.ge(1))
    modes: int = param(8, "Gaussians on the circle", validator=v.ge(1))
    radius: float = param(2.0, "radius of the circle", validator=v.gt(0.0))
    std: float = param(0.2, "standard deviation of each Gaussian", validator=v.gt(0.0))
    data_seed: int = param(0, "seeds the data; runs with other seeds train on the same data", validator=v.ge(0))


def ring(p: RingParams, *, seed):
    """2-D points from equal Gaussians centred evenly on a circle: {"x": float32 (n, 2), "y": component}."""
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    sizes = (p.train_size, p.val_size, p.test_size)
    y = rng.integers(0, p.modes, size=sum(sizes))
    angle = 2.0 * np.pi * y / p.modes
    centres = p.radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = (centres + p.std * rng.normal(size=centres.shape)).astype(np.float32)
    ends = np.cumsum(sizes)
    splits = [{"x": x[a:b], "y": y[a:b].astype(np.int32)} for a, b in zip((0, *ends[:2]), ends, strict=True)]
    return Dataset(*splits, p.modes)


# -- registration ----------------------------------------------------------------------------


@hookimpl
def jaxyard_register_tasks(register):
    register("gan", gan_task, params=GANTaskParams)


@hookimpl
def jaxyard_register_models(register):
    register("gan", gan_model, params=GANModelParams)


@hookimpl
def jaxyard_register_loaders(register):
    register("ring", ring, params=RingParams)
