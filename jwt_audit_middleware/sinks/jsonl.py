"""``JSONLinesHandler``: audit events appended to a JSON-lines file, with rotation.

Several processes may append to one file (gunicorn workers, uvicorn workers):

- Safe: appending.  The file is opened with ``O_APPEND`` and every ``write()``
  carries whole lines only (one batch), so on a local filesystem the kernel puts
  each write at the end of the file in one piece; lines of different processes
  never interleave within a line.  Not safe on NFS and similar network
  filesystems, where ``O_APPEND`` is emulated by the client.
- Safe, with care: rotation by several processes.  Rotations are serialised
  with ``flock()`` on ``<path>.lock``; a process that finds the file already
  rotated by another just reopens it.  Each process notices a rotation (its own,
  another's, or ``logrotate``'s) before its next batch and reopens the path, so
  nothing is lost, but the last lines a process wrote just before it noticed may
  sit at the end of the rotated file, slightly after its rotation time.  With
  size rotation each process checks the size it sees, so a file may exceed
  ``max_bytes`` by a few batches.
- Not safe: two different rotation settings for one file, or two hosts sharing it.

A full disk (or a quota) can cut a ``write()`` short: the lines already in the
file are not written again, a line cut in two is truncated away at once (the
file stays whole lines) and written again in full by the retry.  Only if
another process appended right behind the cut piece, so it cannot be taken
back, is the piece left as a broken line of its own (ended with a newline
before the retry writes the line again).

With ``chain=True`` every line carries ``chain_id``, ``seq``, ``prev_hash`` and
``hash`` (``jwt_audit_middleware.chain``), added on the writer thread under the
file lock, as the batch is first written: the order of the chain is the order
of the file by construction, whoever writes (the writer, a request thread
spilling a full queue, ``close()``), and the request thread pays nothing for
it.  A handler (and each forked child) is one stream; the stream goes on in
the new file after a rotation; ``close()`` ends it with a closing line.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Final, Literal

from jwt_audit_middleware.audit import JSONFormatter, make_record
from jwt_audit_middleware.chain import CLOSING_EVENT, Chain, load_key
from jwt_audit_middleware.errors import ConfigurationError
from jwt_audit_middleware.events import rfc3339

from ._worker import BackgroundHandler, sink_logger

_UNITS = {"S": 1, "M": 60, "H": 3600, "D": 86400, "MIDNIGHT": 86400}
_BACKUP_SUFFIX = re.compile(r"\.\d{8}T\d{6}Z(?:-\d+)?$")
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


class Lines:
    """A batch's bytes and how far they are in the file, kept across retries.

    ``done``: the bytes in the file as whole lines, never written again.
    ``partial``: past ``done``, the bytes of a cut line still in the file
    (when it could not be truncated away); ``fragment`` is the file's
    ``(inode, device, size)`` just after it, so a retry that finds the file
    unchanged completes the line, and otherwise starts it again on a new line.
    """

    __slots__ = ("data", "done", "fragment", "partial", "unsealed")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = 0
        self.partial = 0
        self.fragment: tuple[int, int, int] | None = None
        #: Lines to be chained when first written (``data`` is empty until then).
        self.unsealed: list[str] | None = None

    def rest(self) -> bytes:
        """What is not yet in the file as whole lines."""
        if self.unsealed is not None:
            return "".join(self.unsealed).encode("utf-8", "backslashreplace")
        return self.data[self.done :]


class JSONLinesHandler(BackgroundHandler):
    """A logging handler that appends one JSON object per line to ``path``.

    Lines are ``JSONFormatter`` output (or the formatter you set), formatted as
    the event is logged, queued, and written by a background thread in batches
    of up to ``batch_size`` lines, at least every ``flush_interval`` seconds.

    Rotation: ``max_bytes`` (size; 0 = off) and/or ``when`` (``"S"``, ``"M"``,
    ``"H"``, ``"D"`` or ``"midnight"``, times ``interval``, in UTC, aligned to
    the epoch so every process agrees on the boundary).  A rotated file is
    renamed ``<path>.<UTC time>`` (e.g. ``audit.jsonl.20250520T000000Z``); the
    newest ``backup_count`` are kept (0 keeps all).

    ``chain=True`` makes the file tamper-evident (``jwt-audit verify-log``):
    each line gets ``chain_id``, ``seq``, ``prev_hash`` and ``hash``; with
    ``chain_key`` (bytes or str) or ``chain_key_file`` the hash is an
    HMAC-SHA256, so only holders of the key can re-chain an edited file.
    ``close()`` appends a closing line (``"event": "chain_closed"``).  A
    formatter you set must make one JSON object per line to be chained; other
    lines are ``JSONFormatter``'s.

    ``fsync="batch"`` makes every batch durable before the next (power-loss
    safe, slower); ``"never"`` leaves it to the OS (a crashed *process* still
    loses nothing that was written).  A full queue makes the request thread wait
    up to ``block_timeout`` seconds, then write its line itself (counted in
    ``stats()["spilled"]``): nothing is dropped.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        level: int | str = logging.NOTSET,
        *,
        max_bytes: int = 0,
        when: str | None = None,
        interval: int = 1,
        backup_count: int = 7,
        fsync: Literal["never", "batch"] = "never",
        mode: int = 0o600,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        block_timeout: float = 0.1,
        close_timeout: float = 30.0,
        chain: bool = False,
        chain_key: bytes | str | None = None,
        chain_key_file: str | os.PathLike[str] | None = None,
        metrics: object = None,
    ) -> None:
        key = load_key(chain_key, chain_key_file)
        if key is not None and not chain:
            option = "chain_key" if chain_key is not None else "chain_key_file"
            raise ConfigurationError(option, "a chain key needs chain=True")
        self._chain = Chain(key) if chain else None
        super().__init__(
            level,
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval=flush_interval,
            block_timeout=block_timeout,
            close_timeout=close_timeout,
            metrics=metrics,
        )
        if fsync not in ("never", "batch"):
            raise ValueError("fsync must be 'never' or 'batch'")
        if max_bytes < 0 or backup_count < 0 or interval < 1:
            raise ValueError("max_bytes and backup_count must be >= 0, interval >= 1")
        self.path = os.path.abspath(os.fspath(path))
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fsync = fsync
        self.mode = mode
        self._period: int | None = None
        if when is not None:
            unit = _UNITS.get(when.upper())
            if unit is None:
                raise ValueError(f"when must be one of {sorted(_UNITS)} or None")
            self._period = unit * interval
        self._json = JSONFormatter()
        self._file_lock = threading.Lock()
        self._closing_written = False  # close() has begun (it writes the closing line)
        self._stream_closed = False  # the closing line is in the file
        self._fd: int | None = None
        self._next_rollover = self._rollover_after(time.time())
        self._open()  # fail fast: a missing directory or a permission problem shows now

    # -- files ------------------------------------------------------------------

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _CLOEXEC
        self._fd = os.open(self.path, flags, self.mode)
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                if self.fsync != "never":
                    os.fsync(fd)
            os.close(fd)

    def _current_fd(self) -> int:
        """The open file, reopened if the path now names another file (rotated)."""
        fd = self._fd
        if fd is None:
            return self._open()
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(fd)
        if on_disk is None or (on_disk.st_ino, on_disk.st_dev) != (mine.st_ino, mine.st_dev):
            self._close_fd()
            return self._open()
        return fd

    def _rollover_after(self, now: float) -> float | None:
        if self._period is None:
            return None
        return (int(now) // self._period + 1) * self._period

    @contextlib.contextmanager
    def _rotation_lock(self) -> Iterator[None]:
        try:
            import fcntl  # noqa: PLC0415 - POSIX only
        except ImportError:  # pragma: no cover - Windows: one process per file
            yield
            return
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _maybe_rotate(self, fd: int, incoming: int) -> int:
        now = time.time()
        size = os.fstat(fd).st_size
        by_size = self.max_bytes > 0 and size > 0 and size + incoming > self.max_bytes
        by_time = self._next_rollover is not None and now >= self._next_rollover
        if not (by_size or by_time):
            return fd
        with self._rotation_lock():
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                on_disk = None
            mine = os.fstat(fd)
            rotated_by_other = on_disk is None or (on_disk.st_ino, on_disk.st_dev) != (
                mine.st_ino,
                mine.st_dev,
            )
            if not rotated_by_other and on_disk is not None and on_disk.st_size > 0:
                os.rename(self.path, self._backup_name(now))
            self._close_fd()
            fd = self._open()
            self._prune()
        if by_time:
            self._next_rollover = self._rollover_after(now)
        return fd

    def _backup_name(self, now: float) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        name = f"{self.path}.{stamp}"
        counter = 0
        while os.path.exists(name):
            counter += 1
            name = f"{self.path}.{stamp}-{counter}"
        return name

    def _prune(self) -> None:
        if not self.backup_count:
            return
        backups = sorted(
            (p for p in glob.glob(glob.escape(self.path) + ".*") if _BACKUP_SUFFIX.search(p)),
            key=_backup_key,
        )
        for old in backups[: -self.backup_count]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)

    def backups(self) -> list[str]:
        """The rotated files still kept, oldest first."""
        return sorted(
            (p for p in glob.glob(glob.escape(self.path) + ".*") if _BACKUP_SUFFIX.search(p)),
            key=_backup_key,
        )

    # -- writing -------------------------------------------------------------------

    def _write(self, lines: Lines) -> None:
        """Append what of ``lines`` is not in the file yet; raise, keeping track, if cut.

        Chained lines are sealed here, on their first attempt, under the lock
        that orders the file's writes; a retry writes the same bytes.
        """
        with self._file_lock:
            if lines.unsealed is not None and self._chain is not None:
                if self._stream_closed:  # a record logged after close(): a new stream
                    self._chain.restart()
                    self._stream_closed = False
                lines.data = self._chain.seal_lines(lines.unsealed)
                lines.unsealed = None
            fd = self._current_fd()
            fd = self._maybe_rotate(fd, len(lines.data) - lines.done)
            self._append(fd, lines)
            if self.fsync == "batch":
                os.fsync(fd)

    def _append(self, fd: int, lines: Lines) -> None:
        start = self._resume_at(fd, lines)
        view = memoryview(lines.data)[start:]
        written = 0
        try:
            while written < len(view):
                written += os.write(fd, view[written:])
        except OSError:
            if written:
                self._after_cut(fd, lines, start + written)
            raise
        lines.done = lines.partial = len(lines.data)
        lines.fragment = None

    def _resume_at(self, fd: int, lines: Lines) -> int:
        """Where the next write starts in ``lines.data``: on a line boundary of the file."""
        if lines.partial <= lines.done:
            return lines.done
        state = os.fstat(fd)
        if lines.fragment == (state.st_ino, state.st_dev, state.st_size):
            return lines.partial  # the cut line is still the file's end: complete it
        # someone wrote behind the cut piece (or the file changed): leave the
        # piece as a broken line of its own and write the whole line again
        if not self._ends_a_line(state):
            _write_all(fd, b"\n")
        lines.partial = lines.done
        lines.fragment = None
        return lines.done

    def _ends_a_line(self, state: os.stat_result) -> bool:
        """Whether the open file (``state``) is empty or ends with a newline.

        Read through the path (the file is open for writing only); False when
        that is not the same file or cannot be read.
        """
        if state.st_size == 0:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return False
        try:
            seen = os.fstat(fd)
            if (seen.st_ino, seen.st_dev) != (state.st_ino, state.st_dev):
                return False
            return os.pread(fd, 1, state.st_size - 1) == b"\n"
        except OSError:
            return False
        finally:
            os.close(fd)

    @staticmethod
    def _after_cut(fd: int, lines: Lines, end: int) -> None:
        """A write stopped at ``end`` in ``lines.data``: keep the file whole lines.

        The lines written completely count as done; the piece of a cut line
        is truncated away when it is still the file's end (nobody appended
        behind it), else remembered for ``_resume_at``.
        """
        newline = lines.data.rfind(b"\n", lines.done, end)
        if newline >= 0:
            lines.done = newline + 1
        lines.partial = end
        piece = end - lines.done
        if not piece:
            lines.fragment = None
            return
        try:
            file_end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: just after our bytes
            state = os.fstat(fd)
        except OSError:  # pragma: no cover - a regular file always answers
            lines.fragment = None
            return
        lines.fragment = (state.st_ino, state.st_dev, file_end)
        if state.st_size == file_end:
            with contextlib.suppress(OSError):  # an append-only file, say
                os.ftruncate(fd, file_end - piece)
                lines.partial = lines.done
                lines.fragment = None

    def enqueued(self, record: logging.LogRecord) -> str:
        """The record's finished line, formatted on the logging thread.

        Formatting here rather than on the writer costs the request thread about
        3 µs and saves more in all (``bench/bench_sinks.py``: 9-12 µs added to a
        request before, about 3 now): the writer would read each record from
        another core's cache and take the GIL from the event loop to do it.
        A formatter you set runs under the handler's lock, as ``Handler.handle``
        would run it (``JSONFormatter`` needs none).  One that raises is reported
        (``handleError``) and the line is ``JSONFormatter``'s instead: the event is
        not lost.  Should that fail too (an app's own event holding something
        ``str()`` refuses), ``emit`` reports the record and drops it, as any
        logging handler does.
        """
        formatter = self.formatter
        if formatter is not None:
            try:
                with self.lock:  # type: ignore[union-attr]
                    line = formatter.format(record)
            except Exception:  # noqa: BLE001 - a custom formatter's bug must not lose the event
                self.handleError(record)
            else:
                if self._chain is None or _one_object(line):
                    return line + "\n"
        return self._json.format(record) + "\n"

    def prepare(self, items: list[str]) -> Lines:
        """The batch's lines as one ``bytes``; a retry writes what is not in the file yet.

        Chained lines are sealed by their first write (``_write``), not here.
        """
        if self._chain is not None:
            lines = Lines(b"")
            lines.unsealed = items
            return lines
        return Lines("".join(items).encode("utf-8", "backslashreplace"))

    def write_batch(self, prepared: Lines) -> None:
        """Append the batch's lines (with one ``write()``, unless the disk cuts it short)."""
        self._write(prepared)

    def spill(self, items: list[str]) -> None:
        """Append the lines at once, on the calling thread; stderr if the file fails."""
        lines = self.prepare(items)
        try:
            self._write(lines)
        except OSError as exc:
            sink_logger.error("%s: cannot write %s (%s)", type(self).__name__, self.path, exc)
            sys.stderr.write(lines.rest().decode("utf-8"))
            sys.stderr.flush()

    def spill_target(self) -> str:
        """The file itself: a full queue is written through by the request thread."""
        return self.path + " (written by the request thread)"

    def release_resources(self) -> None:
        """Close the file (fsync first when ``fsync="batch"``)."""
        with self._file_lock:
            self._close_fd()

    def close(self) -> None:
        """Write everything queued, then (``chain=True``) the stream's closing line.

        See ``BackgroundHandler.close``.  The closing line is written once, by
        the first ``close()``, and only for a stream that has lines.  A record
        logged after that (written at once, as by any closed handler) starts a
        new stream, which stays open: the closed one stays whole.
        """
        with self._file_lock:
            first = not self._closing_written
            self._closing_written = True
        super().close()
        chain = self._chain
        if first and chain is not None:
            with self._file_lock:
                pending = chain.seq > 0
            if pending:
                self.spill([self._closing_line(chain)])
                with self._file_lock:
                    self._stream_closed = True
                self.release_resources()

    def _closing_line(self, chain: Chain) -> str:
        event = {
            "schema": "jwt-audit/1",
            "event": CLOSING_EVENT,
            "outcome": "closed",
            "time": rfc3339(time.time()),
            "records": chain.seq,
            "detail": "the writer closed this stream",
        }
        record = make_record(logging.getLogger("jwt_audit"), logging.INFO, (), event)
        return self._json.format(record) + "\n"

    @property
    def chain_id(self) -> str | None:
        """The id of this handler's stream (``chain=True``), else None."""
        return None if self._chain is None else self._chain.chain_id

    def _after_fork(self) -> None:
        super()._after_fork()
        self._file_lock = threading.Lock()
        self._closing_written = self._stream_closed = False
        if self._chain is not None:
            self._chain.restart()  # the child is a writer of its own: a stream of its own

    def __repr__(self) -> str:
        return f"<JSONLinesHandler {self.path} ({logging.getLevelName(self.level)})>"


def _one_object(line: str) -> bool:
    """Whether a formatter's line can be chained: one JSON object on one line."""
    return len(line) > 2 and line[0] == "{" and line[-1] == "}" and "\n" not in line


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _backup_key(path: str) -> tuple[str, int]:
    match = _BACKUP_SUFFIX.search(path)
    suffix = match.group(0) if match else ""
    stamp, _, counter = suffix.partition("-")
    return stamp, int(counter or 0)
