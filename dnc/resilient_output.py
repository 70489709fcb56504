"""Output for long-running foreground commands that must outlive their reader.

`make up | tee up.log`, then Ctrl-C: `tee` dies first, and the next write of `dnc up`
fails with EPIPE; a closed terminal fails with EIO. A supervisor that then crashes
leaves every process it started running. Writes go to the original stream while it
works and, once it fails, to a file in the data directory, so stopping never fails
because nobody is reading.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import TextIO


class ResilientOutput(io.TextIOBase):
    """A text stream that falls back to appending to ``fallback`` when ``stream`` breaks."""

    def __init__(self, stream: TextIO, fallback: Path) -> None:
        super().__init__()
        self._stream = stream
        self._fallback = fallback
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                written = self._stream.write(text)
                self._stream.flush()
                return written
            except (OSError, ValueError):  # EPIPE, EIO, or the stream was closed
                self._break()
        with contextlib.suppress(OSError), self._fallback.open("a", encoding="utf-8") as f:
            f.write(text)
        return len(text)

    def _break(self) -> None:
        """Stop using the stream; point its descriptor at /dev/null so no later flush fails."""
        self.broken = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._break()

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"
