"""The built-in ``cnn``: its parameters and factory (flax is imported only when a model is built)."""

from __future__ import annotations

import attrs
from attrs import validators as v

from jaxyard import UsageError, param

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu")
READOUTS = ("average", "flatten")


def _positive_sizes(instance, attribute, value):
    if not value or any(d < 1 for d in value):
        raise ValueError(f"needs one or more positive sizes, for example {attribute.default and ','.join(map(str, attribute.default))}",
                         attribute, None, value)


@attrs.frozen
class Params:
    channels: tuple[int, ...] = param((32, 64), "output channels of each convolution block (one block per value)", validator=_positive_sizes)
    kernel_size: tuple[int, ...] = param((3,), "kernel size of each block's convolution along every spatial axis (3: 3 or 3x3); "
                                               "one value for every block, or one per block", validator=_positive_sizes)
    pool: int = param(2, "max-pooling window and stride after each block (1: no pooling)", validator=v.ge(1))
    readout: str = param("average", "what the head reads: 'average' (global average pooling of each channel, any input size) "
                                    "or 'flatten' (every position's channels)", validator=v.in_(READOUTS))
    activation: str = param("relu", f"activation after each batch norm: {', '.join(ACTIVATIONS)}", validator=v.in_(ACTIVATIONS))
    dropout_rate: float = param(0.1, "dropout of the features the head reads, active only in training",
                                validator=[v.ge(0.0), v.lt(1.0)])
    norm_momentum: float = param(0.9, "momentum of batch norm's running statistics (what eval mode uses; closer to 1: slower)",
                                 validator=[v.ge(0.0), v.lt(1.0)])
    conv_dims: int = param(0, "1-D or 2-D convolutions; 0: from the input's shape ((L,) and (L, C): 1-D, (H, W, C): 2-D); "
                              "2 reads (H, W) rows as one-channel images", validator=v.in_((0, 1, 2)))


def layout(input_shape, conv_dims: int = 0):
    """``(spatial shape, channels)`` a row of ``input_shape`` is read as (a UsageError if none)."""
    shape = tuple(int(d) for d in input_shape)
    dims = conv_dims or (1 if len(shape) <= 2 else 2)
    if dims == 1 and len(shape) in (1, 2):
        return shape[:1], shape[1] if len(shape) == 2 else 1
    if dims == 2 and len(shape) in (2, 3):
        return shape[:2], shape[2] if len(shape) == 3 else 1
    given = f" with conv_dims={conv_dims}" if conv_dims else ""
    raise UsageError(
        f"model 'cnn' reads rows of shape (L,) or (L, C) (1-D convolutions) or (H, W, C) (2-D; (H, W) with conv_dims=2); "
        f"the data gives rows of shape {shape}{given}: use a loader giving such rows, or --model mlp, which flattens any shape"
    )


def factory(p: Params, *, input_shape, num_outputs, rngs, vocab_size=None):
    """Convolutional network, 1-D or 2-D by the input's shape: convolution, batch norm, activation, pooling per block.

    After the blocks, global average pooling (or flatten), dropout and a Linear to num_outputs (a task's logits or
    targets). The input's shape chooses the convolutions: a row (L,) is a one-channel signal and (L, C) a signal of C channels
    (1-D); (H, W, C) an image of C channels (2-D), as is (H, W) with conv_dims=2 (one channel). For classification,
    regression and multilabel; next_token is refused (it needs logits at each position)."""
    if vocab_size is not None:  # only next_token's context names vocab_size
        raise UsageError(
            "model 'cnn' does not fit task 'next_token', which needs logits for each position (batch, seq_len, vocab_size): "
            "use --model transformer, or --model mlp (a bigram baseline)"
        )
    spatial, channels = layout(input_shape, p.conv_dims)
    kernels = p.kernel_size * len(p.channels) if len(p.kernel_size) == 1 else p.kernel_size
    if len(kernels) != len(p.channels):
        raise UsageError(
            f"model 'cnn': kernel_size = {','.join(map(str, p.kernel_size))} gives {len(p.kernel_size)} sizes for "
            f"{len(p.channels)} blocks (channels = {','.join(map(str, p.channels))}); give one size, or one per block"
        )
    from jaxyard.plugins.models._cnn import CNN

    return CNN((spatial, channels), p.channels, kernels, num_outputs, pool=p.pool, readout=p.readout, activation=p.activation,
               dropout_rate=p.dropout_rate, norm_momentum=p.norm_momentum, rngs=rngs)
