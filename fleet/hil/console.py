"""Console drivers: read a board's console into a log, wait for text on it, type to it."""

from __future__ import annotations

import codecs
import os
import re
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import serial  # type: ignore[import-untyped]

from fleet.errors import FleetError, LabError

TAIL = 300  # characters of recent output an error shows
WINDOW = 4 * 1024 * 1024  # characters kept unmatched: a console left unread stays bounded


class ConsoleError(FleetError):
    """A console cannot be opened, read or written."""

    exit_code = LabError.exit_code


class ConsoleTimeout(ConsoleError):
    """What was expected did not come in time; ``tail`` is the console's last output."""

    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message)
        self.tail = tail


class Console:
    """Expect-style reading (as pexpect's): each match consumes the output up to its end,
    so the next ``expect`` looks only at what came after. Subclasses feed bytes."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log_path = log
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log, "ab")  # noqa: SIM115 (open as long as the console)
        except OSError as exc:
            raise ConsoleError(f"cannot write console log {log}: {exc.strerror}") from exc
        # Incremental: a UTF-8 character split between two reads decodes whole.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._unmatched = ""
        self._tail = ""
        self._ended: str | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = regex.search(self._unmatched)
                if found is not None:
                    self._unmatched = self._unmatched[found.end() :]
                    return found
                if self._ended is not None:
                    raise ConsoleError(f"{self._ended}; last output: {self._tail!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConsoleTimeout(
                        f"{regex.pattern!r} not seen on {self.name} within {timeout:g} s; "
                        f"last output: {self._tail!r}",
                        self._tail,
                    )
                self._changed.wait(left)

    def send(self, data: bytes) -> None:
        raise ConsoleError(f"console {self.name} is read-only")

    def close(self) -> None:
        self._stop.set()
        self._end(self._ended or f"console {self.name} is closed")
        with self._changed:
            if not self._log.closed:
                self._log.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _feed(self, data: bytes) -> None:
        with self._changed:
            if self._log.closed:
                return
            self._log.write(data)
            self._log.flush()
            text = self._decoder.decode(data)
            self._unmatched = (self._unmatched + text)[-WINDOW:]
            self._tail = (self._tail + text)[-TAIL:]
            self._changed.notify_all()

    def _end(self, reason: str) -> None:
        with self._changed:
            self._ended = reason
            self._changed.notify_all()

    def _start(self, reader: threading.Thread) -> None:
        reader.daemon = True  # a console never closed does not keep the process alive
        reader.start()
        self._reader = reader

    def _join(self) -> None:
        self._stop.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)


class SerialConsole(Console):
    """A board's UART through a serial port (a USB adapter, /dev/ttyUSB0)."""

    def __init__(self, port: str, baud: int, log: Path) -> None:
        super().__init__(port, log)
        try:
            self._serial = serial.Serial(port, baud, timeout=0.1)
        except (serial.SerialException, ValueError) as exc:
            self._log.close()
            raise ConsoleError(f"cannot open serial port {port}: {exc}") from exc
        self._start(threading.Thread(target=self._read, name=f"console {port}"))

    def send(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()
        except (serial.SerialException, OSError) as exc:
            raise ConsoleError(f"cannot write to {self.name}: {exc}") from exc

    def close(self) -> None:
        self._join()
        self._serial.close()
        super().close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._serial.read(self._serial.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                if not self._stop.is_set():
                    self._end(f"serial port {self.name} failed: {exc}")
                return
            if data:
                self._feed(bytes(data))


class FileConsole(Console):
    """A console that another program logs to a file (a virtual board's QEMU writes
    ``fleet.lab.get(name).console_log``): only what is written after opening counts."""

    def __init__(self, path: Path, log: Path, poll: float = 0.05) -> None:
        super().__init__(str(path), log)
        self.path = path
        self._poll = poll
        try:
            self._file, self._inode = self._open()
        except ConsoleError:
            self._log.close()
            raise
        if self._file is not None:
            self._file.seek(0, os.SEEK_END)
        self._start(threading.Thread(target=self._follow, name=f"console {path.name}"))

    def close(self) -> None:
        self._join()
        if self._file is not None:
            self._file.close()
        super().close()

    def _open(self) -> tuple[BinaryIO | None, int]:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (followed until close)
        except FileNotFoundError:
            return None, -1
        except OSError as exc:
            raise ConsoleError(f"cannot read console log {self.path}: {exc}") from exc
        return handle, os.fstat(handle.fileno()).st_ino

    def _follow(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self._turn()
            except (OSError, ConsoleError) as exc:
                self._end(f"console log {self.path} failed: {exc}")
                return

    def _turn(self) -> None:
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return
        old = self._file
        if old is None or now.st_ino != self._inode or now.st_size < old.tell():
            # Created, replaced or truncated (a board made anew): read it from the start,
            # after the last words of the one replaced.
            if old is not None:
                self._read(old)
                old.close()
            self._file, self._inode = self._open()
        if self._file is not None:
            self._read(self._file)

    def _read(self, handle: BinaryIO) -> None:
        data = handle.read()
        if data:
            self._feed(data)
