"""Built-in optimizers: thin wrappers over optax, each taking the run's schedule as its learning rate."""

from __future__ import annotations

import attrs
from attrs import validators as v

from jaxyard import hookimpl, param

_nonneg = v.ge(0.0)
_unit = [v.ge(0.0), v.lt(1.0)]


def _weight_decay(doc: str = "L2 penalty added to the gradient before the update (0: off)"):
    return param(0.0, doc, validator=_nonneg)


def _with_l2(tx, weight_decay: float):
    import optax

    return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


@attrs.frozen
class AdamParams:
    b1: float = param(0.9, "decay rate of the first-moment estimate", validator=_unit, traced=True)
    b2: float = param(0.999, "decay rate of the second-moment estimate", validator=_unit, traced=True)
    eps: float = param(1e-8, "added to the denominator for numerical stability", validator=v.gt(0.0), traced=True)
    weight_decay: float = param(1e-4, "L2 penalty added to the gradient before the update (0: off)", validator=_nonneg)


def adam(p: AdamParams, *, learning_rate):
    """Adam; weight_decay is a coupled L2 penalty (use adamw for decoupled decay)."""
    import optax

    return _with_l2(optax.adam(learning_rate, b1=p.b1, b2=p.b2, eps=p.eps), p.weight_decay)


@attrs.frozen
class AdamWParams:
    b1: float = param(0.9, "decay rate of the first-moment estimate", validator=_unit, traced=True)
    b2: float = param(0.999, "decay rate of the second-moment estimate", validator=_unit, traced=True)
    eps: float = param(1e-8, "added to the denominator for numerical stability", validator=v.gt(0.0), traced=True)
    weight_decay: float = param(1e-4, "decoupled weight decay, scaled by the learning rate", validator=_nonneg, traced=True)


def adamw(p: AdamWParams, *, learning_rate):
    """AdamW: Adam with decoupled weight decay."""
    import optax

    return optax.adamw(learning_rate, b1=p.b1, b2=p.b2, eps=p.eps, weight_decay=p.weight_decay)


@attrs.frozen
class SGDParams:
    momentum: float = param(0.0, "momentum coefficient (0: plain SGD)", validator=_unit)
    nesterov: bool = param(False, "use Nesterov momentum (needs momentum > 0)")
    weight_decay: float = _weight_decay()

    @nesterov.validator
    def _needs_momentum(self, attribute, value):
        if value and not self.momentum:
            raise ValueError("nesterov = true needs momentum > 0, for example momentum = 0.9", attribute, None, value)


def sgd(p: SGDParams, *, learning_rate):
    """Stochastic gradient descent, with optional (Nesterov) momentum."""
    import optax

    tx = optax.sgd(learning_rate, momentum=p.momentum or None, nesterov=p.nesterov)
    return _with_l2(tx, p.weight_decay)


@attrs.frozen
class RMSPropParams:
    decay: float = param(0.9, "decay rate of the squared-gradient average", validator=_unit, traced=True)
    eps: float = param(1e-8, "added to the denominator for numerical stability", validator=v.gt(0.0), traced=True)
    momentum: float = param(0.0, "momentum coefficient (0: none)", validator=_unit)
    centered: bool = param(False, "normalise by the variance instead of the second moment")
    weight_decay: float = _weight_decay()


def rmsprop(p: RMSPropParams, *, learning_rate):
    """RMSProp."""
    import optax

    tx = optax.rmsprop(learning_rate, decay=p.decay, eps=p.eps, momentum=p.momentum or None, centered=p.centered)
    return _with_l2(tx, p.weight_decay)


@attrs.frozen
class LionParams:
    b1: float = param(0.9, "interpolation rate for the update direction", validator=_unit, traced=True)
    b2: float = param(0.99, "decay rate of the momentum", validator=_unit, traced=True)
    weight_decay: float = param(1e-3, "decoupled weight decay", validator=_nonneg, traced=True)


def lion(p: LionParams, *, learning_rate):
    """Lion (evolved sign momentum); use a learning rate 3-10x smaller than Adam's."""
    import optax

    return optax.lion(learning_rate, b1=p.b1, b2=p.b2, weight_decay=p.weight_decay)


@attrs.frozen
class LambParams:
    b1: float = param(0.9, "decay rate of the first-moment estimate", validator=_unit, traced=True)
    b2: float = param(0.999, "decay rate of the second-moment estimate", validator=_unit, traced=True)
    eps: float = param(1e-6, "added to the denominator for numerical stability", validator=v.gt(0.0), traced=True)
    weight_decay: float = param(0.0, "decoupled weight decay", validator=_nonneg, traced=True)


def lamb(p: LambParams, *, learning_rate):
    """LAMB: layer-wise adaptive Adam, for large batches."""
    import optax

    return optax.lamb(learning_rate, b1=p.b1, b2=p.b2, eps=p.eps, weight_decay=p.weight_decay)


@attrs.frozen
class AdafactorParams:
    decay_rate: float = param(0.8, "decay exponent of the second-moment estimate", validator=v.gt(0.0), traced=True)
    clipping_threshold: float = param(1.0, "clip the update's RMS to this (0: off)", validator=_nonneg)
    weight_decay: float = param(0.0, "decoupled weight decay", validator=_nonneg)


def adafactor(p: AdafactorParams, *, learning_rate):
    """Adafactor: factored second moments, memory-light."""
    import optax

    return optax.adafactor(
        learning_rate,
        decay_rate=p.decay_rate,
        clipping_threshold=p.clipping_threshold or None,
        weight_decay_rate=p.weight_decay or None,
    )


@hookimpl
def jaxyard_register_optimizers(register):
    register("adam", adam, params=AdamParams)
    register("adamw", adamw, params=AdamWParams)
    register("sgd", sgd, params=SGDParams)
    register("rmsprop", rmsprop, params=RMSPropParams)
    register("lion", lion, params=LionParams)
    register("lamb", lamb, params=LambParams)
    register("adafactor", adafactor, params=AdafactorParams)
