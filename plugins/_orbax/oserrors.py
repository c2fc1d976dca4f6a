"""The operating-system error behind a failed orbax save, as one short cause.

Orbax and tensorstore report a full disk as a long message embedding JSON specs and paths, with
the errno written into the text (``[os_error_code='28']``) or an :class:`OSError` somewhere down
the exception chain. :func:`save_cause` finds it and says ``No space left on device (ENOSPC)``.
"""

from __future__ import annotations

import errno
import os
import re

from jaxyard.core.store.checkpoint import describe_exception

__all__ = ["os_error_in", "save_cause"]

_ERRNO_IN_TEXT = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")
_KNOWN_ERRNOS = tuple(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO", "EACCES", "EPERM") if hasattr(errno, name)
)


def os_error_in(exc: BaseException) -> tuple[int, str | None] | None:
    """The errno of the operating-system error at the root of an orbax/tensorstore failure.

    Looks for an OSError anywhere in the chain (``__cause__``, ``__context__``, exception
    groups), then the ``os_error_code`` / ``[Errno N]`` tensorstore writes into its messages,
    then the text of a known error (``No space left on device``). Returns the errno and, for an
    OSError, the file it names; None when the failure is not the operating system's.
    """
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    texts: list[str] = []
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
            return e.errno, (None if e.filename is None else os.fsdecode(e.filename))
        text = str(e)
        m = _ERRNO_IN_TEXT.search(text)
        if m:
            return int(m.group(1) or m.group(2)), None
        texts.append(text)
        queue.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        queue.extend(x for x in (getattr(e, "exceptions", None) or ()) if isinstance(x, BaseException))
    for code in _KNOWN_ERRNOS:
        if any(os.strerror(code) in t for t in texts):
            return code, None
    return None


def save_cause(exc: BaseException) -> str:
    """One short cause for a failed save: ``No space left on device (ENOSPC)`` (and the file, when
    the OSError names one) when the operating system said so, else the first line of orbax's message."""
    found = os_error_in(exc)
    if found is None:
        return describe_exception(exc)
    code, filename = found
    cause = f"{os.strerror(code)} ({errno.errorcode.get(code, f'errno {code}')})"
    return f"{cause}: {filename}" if filename else cause
