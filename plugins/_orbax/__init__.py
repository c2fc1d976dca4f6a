"""Orbax-backed checkpointer: storage only, with checksums, durable and asynchronous saves.

Layout of ``directory``::

    jaxyard-checkpoints.json      marker: this directory belongs to this checkpointer
    <step>/                       one finished orbax checkpoint per step
        state/                    the arrays (orbax StandardSave of a flat dict of numpy arrays)
        meta/metadata             the engine's ``meta`` dict (JSON)
        checksums/metadata        the checksum record (JSON; :mod:`jaxyard.core.store.integrity`)
        _CHECKPOINT_METADATA      orbax bookkeeping
    <step>.orbax-checkpoint-tmp*  a save in progress (orbax renames it to <step> when done)
    <step>.damaged                a damaged checkpoint moved aside because the step was saved again

Storage only: which step is the latest intact one, which is best, how many to keep and passing
over damaged steps are decided by :class:`jaxyard.core.store.policy.CheckpointPolicy` for every
checkpointer. Orbax keeps every step it saves; a step goes away only through ``delete``.
(Steps written by earlier versions may also hold a ``metrics/`` item; it is never read.)

Orbax writes every step into a temporary directory and renames it when all items are committed,
so a kill mid-save never leaves a half-written ``<step>``; the checksum record is one of the items
of that same atomic step, so it exists exactly when the arrays do. Every file of a step is fsynced
before ``save`` (synchronous) or the next ``save``, ``wait`` or ``close`` (asynchronous) returns; an
asynchronous save fsyncs its items before orbax renames the step into place, so a step that is there
holds durable data (orbax's bookkeeping files, written after that, are fsynced once it is done).

Readers never change the directory: ``jaxyard eval RUN`` may open it while RUN is still training,
and a ``*.orbax-checkpoint-tmp*`` directory may be that run's save in progress. Opening, ``steps``
and ``load`` only read; leftovers of killed saves are removed by the first ``save`` of a process
(the writer), and a new directory is created and marked when opened.

Damage detection on load: each item is restored separately (so the cause names the item); any
orbax/tensorstore/JSON error is a cause; then the checksum record is checked -- the crc32 of every
array (flipped bytes inside array data, which orbax itself reads back silently), of ``meta``, of the
record itself, and the step it was written for (a step directory renamed to another step's number).

Quiet failures: every failure is one :class:`CheckpointError` line; notes about what was worked
around are :class:`CheckpointWarning` warnings. What keeps orbax from printing more is in :mod:`.quiet`.

Modules: :mod:`.adapter` (the checkpointer), :mod:`.arguments` (what its methods accept),
:mod:`.quiet` (workarounds on orbax's, absl's and CPython's private code, applied only to the orbax
releases they were tested with), :mod:`.oserrors` (the operating-system error behind a failed save),
:mod:`.durable` (fsync).
"""

from jaxyard.core.store.checkpoint import CheckpointError, CheckpointWarning
from jaxyard.plugins._orbax.adapter import FORMAT_VERSION, MARKER_FORMAT, MARKER_NAME, TMP_SUFFIX, OrbaxCheckpointer

__all__ = ["FORMAT_VERSION", "MARKER_FORMAT", "MARKER_NAME", "TMP_SUFFIX", "CheckpointError", "CheckpointWarning", "OrbaxCheckpointer"]
