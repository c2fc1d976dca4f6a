"""What the built-in models do so that run.precision = "bf16" computes in bfloat16 throughout
(imports flax; loaded only when a model is built)."""

from __future__ import annotations

from flax import nnx


def embedded(embed: nnx.Embed, tokens):
    """``embed(tokens)`` in the dtype its table has now: bfloat16 under run.precision = "bf16" (flax's
    Embed fixes its output dtype when created, float32, and would make all that follows float32)."""
    return embed(tokens).astype(embed.embedding[...].dtype)

