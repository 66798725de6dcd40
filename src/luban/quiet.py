"""`luban.train(..., quiet=True)`: nothing on stdout or stderr from the calling thread.

sys.stdout / sys.stderr are wrapped (once, while any quiet call runs) in gates that drop what a muted thread writes
and pass everything else through, so trials that train quietly on worker threads (`luban tune --jobs N`) do not
silence the main thread's lines, and nested or concurrent quiet calls restore the streams correctly. Logging
handlers that write to the terminal get a filter with the same rule (libraries such as MLflow log through their own
handlers). Output written by C code straight to the file descriptors is not covered.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar

_MUTED: ContextVar[bool] = ContextVar("luban_muted", default=False)
_lock = threading.Lock()
_depth = 0
_installed: tuple | None = None  # (stdout gate, stderr gate, [(handler, filter)])


class _Gate(io.TextIOBase):
    """A text stream that forwards to `stream` unless the writing thread is muted."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, s):
        return len(s) if _MUTED.get() else self._stream.write(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if not _MUTED.get():
            self._stream.flush()

    def isatty(self):  # a muted thread sees no terminal: no progress bars are drawn for it
        if _MUTED.get():
            return False
        try:
            return self._stream.isatty()
        except ValueError:  # the wrapped stream was closed (e.g. a library kept the gate until exit)
            return False

    def writable(self):
        return True

    def __getattr__(self, name):  # encoding, errors, fileno, buffer ...
        return getattr(self._stream, name)


def _log_filter(record) -> bool:
    return not _MUTED.get()


def _install():
    out, err = _Gate(sys.stdout), _Gate(sys.stderr)
    filtered = []
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr):
                h.addFilter(_log_filter)
                filtered.append(h)
    sys.stdout, sys.stderr = out, err
    return out, err, filtered


def _uninstall(state):
    out, err, filtered = state
    if sys.stdout is out:  # someone who replaced the stream meanwhile keeps theirs; our gate then just forwards
        sys.stdout = out._stream
    if sys.stderr is err:
        sys.stderr = err._stream
    for h in filtered:
        h.removeFilter(_log_filter)


@contextmanager
def muted():
    """Drop this thread's output to stdout/stderr (print, warnings, logging, progress) inside the block."""
    global _depth, _installed
    token = _MUTED.set(True)
    with _lock:
        if _depth == 0:
            _installed = _install()
        _depth += 1
    try:
        from luban.training.progress import silent

        with silent():
            yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _installed is not None:
                _uninstall(_installed)
                _installed = None
        _MUTED.reset(token)
