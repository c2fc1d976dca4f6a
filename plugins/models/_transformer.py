"""The transformer's nnx modules (imports flax; loaded only when a model is built)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxyard.plugins.models._precision import embedded

_SMALL = nnx.initializers.normal(0.02)  # GPT-2's embedding initialisation: tied logits start near 0


class Block(nnx.Module):
    """Pre-norm transformer block: x + Dropout(Attention(LayerNorm(x))), then x + Dropout(MLP(LayerNorm(x)))."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        # deterministic=False: dropout on the attention weights until model.eval() turns it off, as nnx.Dropout
        self.attention = nnx.MultiHeadAttention(heads, dim, dropout_rate=dropout_rate, deterministic=False,
                                                decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.dropout(self.attention(self.norm1(x), mask=mask))
        return x + self.dropout(self.down(jax.nn.gelu(self.up(self.norm2(x)))))


class _Trunk(nnx.Module):
    """Position embeddings, dropout, the blocks and a final LayerNorm, shared by both variants."""

    def __init__(self, *, layers: int, heads: int, dim: int, hidden: int, dropout_rate: float, max_len: int, rngs: nnx.Rngs):
        self.max_len = max_len
        self.position = nnx.Param(_SMALL(rngs.params(), (max_len, dim)))
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.blocks = nnx.List([Block(dim, heads, hidden, dropout_rate, rngs=rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)

    def trunk(self, h, *, causal: bool):
        length = h.shape[1]
        if length > self.max_len:
            raise ValueError(f"model 'transformer' reads at most max_len = {self.max_len} positions, got {length}: "
                             f"set model.max_len >= {length}")
        h = self.dropout(h + self.position[...][:length])
        mask = nnx.make_causal_mask(jnp.ones((1, length), jnp.int32)) if causal else None  # (1, 1, T, T)
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)


class LanguageModel(_Trunk):
    """Int tokens (batch, T) -> next-token logits (batch, T, vocab); position t attends to 0..t."""

    def __init__(self, vocab: int, *, tie: bool, rngs: nnx.Rngs, dim: int, **trunk):
        super().__init__(dim=dim, rngs=rngs, **trunk)
        self.embed = nnx.Embed(vocab, dim, embedding_init=_SMALL, rngs=rngs)
        self.head = None if tie else nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"the transformer's language model reads integer tokens (batch, T), got {tokens.dtype} "
                             f"of shape {tokens.shape}")
        table = self.embed.embedding[...]  # float32, or bfloat16 under run.precision = "bf16"
        h = self.trunk(embedded(self.embed, tokens), causal=True)
        # tied: the attend of flax's Embed, in the table's dtype (Embed's own fixes float32 when created)
        return jnp.dot(h, table.T.astype(h.dtype)) if self.head is None else self.head(h)


class SequenceClassifier(_Trunk):
    """Float features (batch, L) or (batch, L, C...) -> (batch, num_outputs): each position
    embedded linearly, attention over all positions, mean-pooled, then a linear head."""

    def __init__(self, channels: int, num_outputs: int, *, rngs: nnx.Rngs, dim: int, **trunk):
        super().__init__(dim=dim, rngs=rngs, **trunk)
        self.channels = channels
        self.embed = nnx.Linear(channels, dim, rngs=rngs)
        self.head = nnx.Linear(dim, num_outputs, rngs=rngs)

    def __call__(self, x):
        if jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"the transformer reads integer tokens {x.shape} only as a language model (task next_token); "
                             "as a classifier it reads float features (batch, L) or (batch, L, C)")
        x = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
        x = x.astype(jnp.promote_types(x.dtype, jnp.bfloat16))  # float32 or bfloat16 (run.precision) as given; float16: float32
        h = self.trunk(self.embed(x), causal=False)
        return self.head(h.mean(axis=1))
