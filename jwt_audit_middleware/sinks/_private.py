"""Private files for the SQL sink's spill: a directory of our own, a file of our own.

A spill file holds what the audit table would (subjects, client addresses,
token ids), so it must not be where another local user can read it or point
it elsewhere: a fixed name in ``/tmp`` let anyone plant a symbolic link there
or create the file first, world-readable, for us to append to.

- The default place is ``$XDG_STATE_HOME/jwt-audit/`` (else
  ``~/.local/state/jwt-audit/``), created 0700; a directory there that is not
  ours, or is open to others, is not used, and neither is one that cannot be
  made: the spill then goes to a fresh ``tempfile.mkdtemp`` directory (0700,
  unpredictable name), named in a warning.
- Every spill file (the default or ``spill_path``) is opened without following
  a symbolic link and created 0600; an existing file is used only if it is a
  regular file, ours, and open to nobody else (mode 0600 or stricter).
  Anything else is refused with ``UnsafeSpillFileError``, and the sink reports it
  and writes those records to stderr instead: the app never sees the error.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable

from .jsonl import JSONLinesHandler

SPILL_NAME = "jwt-audit-spill.jsonl"


class UnsafeSpillFileError(PermissionError):
    """A spill file (or its directory) that another user could read or redirect."""


def default_spill_dir() -> str:
    """``$XDG_STATE_HOME/jwt-audit``, or ``~/.local/state/jwt-audit``."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "jwt-audit")


def private_dir(path: str) -> str:
    """``path``, created 0700 if missing; raises unless it is our own private directory."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    _check(os.lstat(path), path, "directory", stat.S_ISDIR, 0o700)
    return path


def fallback_dir() -> str:
    """A new private directory under the temporary directory (0700, random name)."""
    return tempfile.mkdtemp(prefix="jwt-audit-")


def _check(
    state: os.stat_result, path: str, kind: str, is_kind: Callable[[int], bool], mode: int
) -> None:
    if not is_kind(state.st_mode):
        raise UnsafeSpillFileError(f"{path} is not a {kind} (refusing to spill there)")
    if hasattr(os, "geteuid") and state.st_uid != os.geteuid():
        raise UnsafeSpillFileError(
            f"{path} belongs to uid {state.st_uid}, not to this process (refusing to spill there)"
        )
    if stat.S_IMODE(state.st_mode) & ~mode:
        raise UnsafeSpillFileError(
            f"{path} has mode {stat.S_IMODE(state.st_mode):04o}, more open than "
            f"{mode:04o} (refusing to spill there)"
        )


def open_private_file(path: str, mode: int = 0o600) -> int:
    """Open ``path`` for appending: no symbolic link, created ``mode``, ours only."""
    flags = (
        os.O_WRONLY
        | os.O_APPEND
        | os.O_CREAT
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NOCTTY", 0)
        | getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not hang the open
    )
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: the BSDs' O_NOFOLLOW
            raise UnsafeSpillFileError(
                f"{path} is a symbolic link (refusing to spill there)"
            ) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # ENXIO: a FIFO with no reader
            raise UnsafeSpillFileError(
                f"{path} is not a regular file (refusing to spill there)"
            ) from None
        raise
    try:
        _check(os.fstat(fd), path, "regular file", stat.S_ISREG, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SpillFile(JSONLinesHandler):
    """The SQL sink's spill file: a ``JSONLinesHandler`` that opens only a private file."""

    def _open(self) -> int:
        self._fd = open_private_file(self.path, self.mode)
        return self._fd
