"""A variational autoencoder as a jaxyard plugin: a task, a model and a loader in one local file.

    jaxyard --plugin examples/tasks/vae.py run --task vae --model vae --loader binary-digits

- task ``vae``: the negative evidence lower bound (ELBO) per example, ``recon + beta * kl``:
  the reconstruction term is ``optax.sigmoid_binary_cross_entropy`` of the decoder's logits summed
  over the pixels, the KL term the closed form of KL(N(mean, exp(logvar)) || N(0, I)) summed over
  the latent dimensions. Reports ``loss`` (the negative ELBO at ``beta = 1``), ``recon`` and
  ``kl``, all per example (validation and test: with z = mean, see the model). The model draws
  its noise from the ``sample`` random stream.
- model ``vae``: an MLP encoder to a mean and a log-variance, the reparameterised sample
  ``z = mean + exp(logvar / 2) * eps``, an MLP decoder to one logit per input value. It returns
  ``(logits, mean, logvar)``. In eval mode (``model.eval()``: validation and test) it decodes the
  mean instead of a sample, so that the reported numbers do not depend on how the rows are
  batched or split over devices (the reconstruction term is then that of z = mean, a common
  deterministic stand-in for its expectation).
- loader ``binary-digits``: 8x8 seven-segment digits with random shifts and flipped pixels, made
  from ``data_seed`` (no download): ``{"x": float32 (n, 64) of 0/1, "y": int32 digit}``, so that
  ``--task classification`` trains on it too.

jax is imported inside the functions only: listing the plugin's components does not load it.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
from attrs import validators as v

from jaxyard import Dataset, Task, UsageError, hookimpl, param
from jaxyard.core.task import COUNT, LOSS, features, masked_mean

# -- task -------------------------------------------------------------------------------------


@attrs.frozen
class VAETaskParams:
    beta: float = param(1.0, "weight of the KL term (1: the negative ELBO; other values: a beta-VAE)",
                        validator=v.ge(0.0), traced=True)


class VAETask(Task):
    """Inputs ``x`` of values in [0, 1] (a batch's ``x``; any shape per example, flattened)."""

    metrics = {LOSS: "min", "recon": "min", "kl": "min"}
    rng_streams = ("sample",)

    def __init__(self, p: VAETaskParams):
        self.p = p

    def context(self, data, example) -> dict[str, Any]:
        import numpy as np

        return {"num_outputs": int(np.prod(np.shape(features(example))[1:]))}

    def check(self, batch, where, context) -> None:
        import numpy as np

        x = np.asarray(features(batch))
        if not np.issubdtype(x.dtype, np.floating):
            raise UsageError(f"{where} gives {x.dtype} inputs; task 'vae' needs float values in [0, 1] (binary pixels)")
        if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise UsageError(f"{where} gives inputs {float(x.min()):g}..{float(x.max()):g}; task 'vae' needs values "
                             "in [0, 1] (scale the pixels to 0..1)")

    def loss(self, model, batch, mask):
        import jax.numpy as jnp
        import optax

        x = features(batch)
        x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
        logits, mean, logvar = model(x)
        recon = optax.sigmoid_binary_cross_entropy(logits.reshape(x.shape), x).sum(axis=1)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=1)
        loss, total, count = masked_mean(recon + self.p.beta * kl, mask)
        return loss, {LOSS: total, "recon": jnp.sum(recon * mask), "kl": jnp.sum(kl * mask), COUNT: count}


def vae_task(p: VAETaskParams):
    """Variational autoencoder: the negative ELBO (Bernoulli reconstruction + Gaussian KL); loss, recon, kl."""
    return VAETask(p)


# -- model ------------------------------------------------------------------------------------


@attrs.frozen
class VAEModelParams:
    latent_dim: int = param(8, "dimensions of the latent code z", validator=v.ge(1))
    hidden: int = param(128, "units of the encoder's and the decoder's hidden layer", validator=v.ge(1))


@functools.cache
def _vae_class():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    class VAE(nnx.Module):
        def __init__(self, features: int, hidden: int, latent: int, outputs: int, *, rngs: nnx.Rngs):
            self.latent = latent
            self.encoder = nnx.Linear(features, hidden, rngs=rngs)
            self.stats = nnx.Linear(hidden, 2 * latent, rngs=rngs)  # mean and log-variance
            self.decoder = nnx.Linear(latent, hidden, rngs=rngs)
            self.logits = nnx.Linear(hidden, outputs, rngs=rngs)
            self.sample = rngs.sample.fork()  # the task's stream (`default` when another task runs it)
            self.deterministic = False  # model.eval() sets it: decode the mean

        def encode(self, x):
            h = jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))
            mean, logvar = jnp.split(self.stats(h), 2, axis=-1)
            return mean, logvar

        def decode(self, z):
            return self.logits(jax.nn.relu(self.decoder(z)))

        def __call__(self, x):
            mean, logvar = self.encode(x)
            if self.deterministic:
                return self.decode(mean), mean, logvar
            eps = jax.random.normal(self.sample(), mean.shape, mean.dtype)
            return self.decode(mean + jnp.exp(0.5 * logvar) * eps), mean, logvar

        def generate(self, n: int):
            """``n`` new examples' pixel probabilities, decoded from z ~ N(0, I)."""
            return jax.nn.sigmoid(self.decode(jax.random.normal(self.sample(), (n, self.latent))))

    return VAE


def vae_model(p: VAEModelParams, *, input_shape, num_outputs, rngs):
    """MLP encoder to (mean, logvar), a reparameterised sample, MLP decoder to logits: returns (logits, mean, logvar)."""
    import math

    return _vae_class()(math.prod(input_shape), p.hidden, p.latent_dim, num_outputs, rngs=rngs)


# -- loader -----------------------------------------------------------------------------------


@attrs.frozen
class BinaryDigitsParams:
    train_size: int = param(1000, "training images", validator=v.ge(1))
    val_size: int = param(200, "validation images", validator=v.ge(1))
    test_size: int = param(200, "test images", validator=v.ge(1))
    flip: float = param(0.03, "share of pixels flipped at random (noise)", validator=[v.ge(0.0), v.lt(0.5)])
    data_seed: int = param(0, "seeds the data; runs with other seeds train on the same data", validator=v.ge(0))


# the seven segments lit for each digit: top, upper left, upper right, middle, lower left, lower right, bottom
_SEGMENTS = ("1110111", "0010010", "1011101", "1011011", "0111010", "1101011", "1101111", "1010010", "1111111", "1111011")


def _glyph(digit: int, width: int, height: int):
    """One digit's seven segments drawn into a (height, width) 0/1 array (a box 1 pixel thick)."""
    import numpy as np

    image = np.zeros((height, width), np.float32)
    mid, right, bottom = height // 2, width - 1, height - 1
    lines = [(0, slice(0, width)), (slice(0, mid + 1), 0), (slice(0, mid + 1), right), (mid, slice(0, width)),
             (slice(mid, height), 0), (slice(mid, height), right), (bottom, slice(0, width))]
    for lit, (rows, cols) in zip(_SEGMENTS[digit], lines, strict=True):
        if lit == "1":
            image[rows, cols] = 1.0
    return image


def binary_digits(p: BinaryDigitsParams, *, seed):
    """8x8 binary seven-segment digits, shifted and noisy, from data_seed: {"x": float32 (n, 64), "y": digit}."""
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    sizes = (p.train_size, p.val_size, p.test_size)
    n = sum(sizes)
    y = rng.integers(0, 10, size=n)
    width, height = rng.integers(4, 6, size=n), rng.integers(6, 8, size=n)  # 4-5 wide, 6-7 tall
    images = np.zeros((n, 8, 8), np.float32)
    for i in range(n):
        glyph = _glyph(int(y[i]), int(width[i]), int(height[i]))
        top, left = rng.integers(0, 9 - height[i]), rng.integers(0, 9 - width[i])
        images[i, top:top + height[i], left:left + width[i]] = glyph
    images = np.abs(images - (rng.random(images.shape) < p.flip)).astype(np.float32)
    x, y = images.reshape(n, 64), y.astype(np.int32)
    ends = np.cumsum(sizes)
    splits = [{"x": x[a:b], "y": y[a:b]} for a, b in zip((0, *ends[:2]), ends, strict=True)]
    return Dataset(*splits, 10)


# -- registration ----------------------------------------------------------------------------


@hookimpl
def jaxyard_register_tasks(register):
    register("vae", vae_task, params=VAETaskParams)


@hookimpl
def jaxyard_register_models(register):
    register("vae", vae_model, params=VAEModelParams)


@hookimpl
def jaxyard_register_loaders(register):
    register("binary-digits", binary_digits, params=BinaryDigitsParams)
