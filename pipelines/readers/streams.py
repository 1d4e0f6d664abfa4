"""Opening an input: compression found by magic bytes and read member by member, with damage bookkeeping.

``open_stream`` gives the decompressed bytes of a file as a ``_Stream`` (peek, readline, scan and rewind within what
is buffered) and the codec found (gzip, zstd, bz2, xz, or None). A damaged or cut member becomes a ``Damage`` that
the format readers turn into an error row where it falls (see ``pipelines.readers``).
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pipelines.shards import filesystem

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass
class Damage:
    """A gap in a decompressed stream: ``at`` is the offset where the good data before it ends."""

    at: int
    reason: str
    detail: str
    preview: bytes = b""


def _zstd_decompressor():
    import zstandard

    return zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()


def _zstd_errors() -> tuple[type[Exception], ...]:
    import zstandard

    return (zstandard.ZstdError,)


# name: (magic at the start of a member, new decompressor, exceptions of damaged data)
_CODECS: dict[str, tuple[bytes, Callable, Callable[[], tuple[type[Exception], ...]]]] = {
    "gzip": (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), lambda: (zlib.error,)),
    "zstd": (b"\x28\xb5\x2f\xfd", _zstd_decompressor, _zstd_errors),
    "bz2": (b"BZh", bz2.BZ2Decompressor, lambda: (OSError, ValueError, EOFError)),
    "xz": (b"\xfd7zXZ\x00", lzma.LZMADecompressor, lambda: (lzma.LZMAError, EOFError)),
}


def _compression(head: bytes) -> str | None:
    for name, (magic, _, _) in _CODECS.items():
        if head.startswith(magic[:4]):
            return name
    return None


class _PlainSource:
    def __init__(self, f, head: bytes):
        self.f = f
        self.head = head
        self.damages: list[Damage] = []

    def read_chunk(self) -> bytes:
        if self.head:
            chunk, self.head = self.head, b""
            return chunk
        return self.f.read(1 << 20)


class _MemberSource:
    """Concatenated compressed members (gzip members, zstd frames, bz2/xz streams), each checked on its own.

    A member's output is passed on once the member ends with a valid checksum (more than ``hold`` bytes of one
    member are passed on as they come: a whole-file member of a large file). A member that fails to decompress
    becomes a ``Damage`` and the compressed bytes after its start are scanned for the next member's magic; a
    stream that ends inside a member passes on what it holds and records the cut.
    """

    def __init__(self, f, head: bytes, codec: str, hold: int = 16 << 20):
        self.f = f
        self.codec = codec
        self.magic, self.new_decoder, errors = _CODECS[codec]
        self.errors = errors()
        self.hold = hold
        self.damages: list[Damage] = []
        self.comp = bytearray(head)  # compressed bytes from the current member's start (or the scan point)
        self.comp_start = 0  # file offset of comp[0]
        self.fed = 0  # bytes of comp given to the decoder
        self.trimmed = False  # the current member's start is no longer in comp
        self.decoder = None
        self.state = "between"  # between members / in a member / scanning after damage
        self.out = bytearray()  # the current member's output, not yet passed on
        self.ready: list[bytes] = []
        self.emitted = 0
        self.done = False

    def read_chunk(self) -> bytes:
        while not self.ready and not self.done:
            chunk = self.f.read(1 << 20)
            if chunk:
                self.comp += chunk
                self._feed()
            else:
                self._finish()
        data = b"".join(self.ready)
        self.ready.clear()
        return data

    def _release(self) -> None:
        if self.out:
            self.ready.append(bytes(self.out))
            self.emitted += len(self.out)
            self.out.clear()

    def _feed(self) -> None:
        while True:
            if self.state == "between":
                zeros = len(self.comp) - len(self.comp.lstrip(b"\x00"))  # NUL padding after the last member
                del self.comp[:zeros]
                self.comp_start += zeros
                if len(self.comp) < len(self.magic):
                    return
                if not self.comp.startswith(self.magic):
                    self._damaged("bytes that are not a member where the next member should start")
                    continue
                self._start_member()
            if self.state == "scanning":
                i = self.comp.find(self.magic, 1)
                if i < 0:
                    drop = max(0, len(self.comp) - len(self.magic) + 1)
                    del self.comp[:drop]
                    self.comp_start += drop
                    return
                del self.comp[:i]
                self.comp_start += i
                self._start_member()
            data = bytes(self.comp[self.fed :])
            if not data:
                return
            try:
                self.out += self.decoder.decompress(data)
            except self.errors as e:
                self._damaged(f"{type(e).__name__}: {e}")
                continue
            self.fed = len(self.comp)
            if self.decoder.eof:
                consumed = len(self.comp) - len(self.decoder.unused_data)
                self._release()
                del self.comp[:consumed]
                self.comp_start += consumed
                self.state = "between"
                continue
            if len(self.out) > self.hold:
                self._release()
            if len(self.comp) > self.hold:  # a huge member: stop keeping its start for a rescan
                drop = self.fed - 4096
                del self.comp[:drop]
                self.comp_start += drop
                self.fed -= drop
                self.trimmed = True
            return

    def _start_member(self) -> None:
        self.decoder = self.new_decoder()
        self.fed = 0
        self.trimmed = False
        self.state = "member"

    def _damaged(self, why: str) -> None:
        dropped = bytes(self.out) or self._salvage()
        self.damages.append(
            Damage(
                self.emitted,
                f"corrupt_{self.codec}",
                f"{self.codec} data at byte {self.comp_start} is damaged ({why})"
                + (f"; {len(self.out)} bytes of its output dropped" if self.out else "")
                + "; reading resumes at the next intact member",
                dropped[:4096],
            )
        )
        self.out.clear()
        self.state = "scanning"
        self.decoder = None

    def _salvage(self, limit: int = 4096) -> bytes:
        """What a damaged member decompresses to before the damage (fed in small steps): for the error's preview,
        where a WARC record's header names the lost record."""
        if self.state != "member" or self.trimmed:
            return b""
        decoder, out = self.new_decoder(), b""
        for i in range(0, min(len(self.comp), 1 << 16), 64):
            try:
                out += decoder.decompress(bytes(self.comp[i : i + 64]))
            except self.errors:
                break
            if len(out) >= limit:
                break
        return out[:limit]

    def _finish(self) -> None:
        if self.state == "member" and (self.fed or self.out):
            self._release()  # what came before the cut is passed on: nothing after it can be checked anyway
            self.damages.append(
                Damage(self.emitted, f"truncated_{self.codec}", f"the {self.codec} stream ends inside a member")
            )
        elif self.state == "between" and self.comp:
            self._damaged(f"{len(self.comp)} bytes after the last member")
        self.done = True


@contextmanager
def open_stream(path: str) -> Iterator[tuple[_Stream, str | None]]:
    """The decompressed bytes of ``path`` as a ``_Stream``, and the compression found by magic (or None)."""
    fs, fpath = filesystem(path)
    with fs.open(fpath, "rb") as f:
        head = f.read(8)
        codec = _compression(head)
        source = _MemberSource(f, head, codec) if codec else _PlainSource(f, head)
        yield _Stream(source), codec


class _Stream:
    """Buffered bytes over a source: peek, readline, scan and rewind within what is kept, damage bookkeeping.

    Offsets are absolute (bytes since the start of the decompressed stream). Bytes before ``keep_from`` (or,
    when it is None, before the read position) may be dropped from memory.
    """

    def __init__(self, source):
        self.source = source
        self.buf = bytearray()
        self.pos = 0
        self.base = 0
        self.eof = False
        self.keep_from: int | None = None
        self.reported = 0  # damages already turned into error rows

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.source.read_chunk()
        if not chunk:
            self.eof = True
            return False
        cut = self.pos if self.keep_from is None else max(0, min(self.pos, self.keep_from - self.base))
        if cut > (1 << 20) and cut * 2 > len(self.buf):
            del self.buf[:cut]
            self.pos -= cut
            self.base += cut
        self.buf += chunk
        return True

    def tell(self) -> int:
        return self.base + self.pos

    def seek(self, offset: int) -> None:
        if not self.base <= offset <= self.base + len(self.buf):
            raise ValueError(f"offset {offset} is no longer buffered")
        self.pos = offset - self.base

    def available(self) -> int:
        return len(self.buf) - self.pos

    def peek(self, n: int) -> bytes:
        while self.available() < n and self._more():
            pass
        return bytes(self.buf[self.pos : self.pos + n])

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            while self._more():
                pass
            n = self.available()
        data = self.peek(n)
        self.pos += len(data)
        return data

    def read_chunk(self) -> bytes:
        """What is buffered, or the next chunk of the source (for readers that parse as they go)."""
        if not self.available():
            self._more()
        return self.read(self.available())

    def readline(self, limit: int) -> bytes:
        """Up to and including the next ``\\n``, at most ``limit`` bytes."""
        searched = 0
        while True:
            i = self.buf.find(b"\n", self.pos + searched, self.pos + limit)
            if i >= 0:
                return self.read(i + 1 - self.pos)
            searched = self.available()
            if searched >= limit or not self._more():
                return self.read(min(limit, self.available()))

    def skip_line(self) -> None:
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                self.pos = i + 1
                return
            self.pos = len(self.buf)
            if not self._more():
                return

    def search(self, pattern: re.Pattern, limit: int) -> re.Match | None:
        """The first match starting within ``limit`` bytes of the position (position unchanged)."""
        while True:
            m = pattern.search(self.buf, self.pos, self.pos + limit)
            if m or self.available() >= limit or not self._more():
                return m

    def scan_to(self, needle: bytes, max_bytes: int | None = None) -> int | None:
        """Move to the next ``needle`` that starts within ``max_bytes`` from here and return its offset; else move
        ``max_bytes`` on (or to the end) and return None. Scanned bytes may be dropped from memory."""
        end = None if max_bytes is None else self.tell() + max_bytes
        while True:
            stop = len(self.buf) if end is None else min(len(self.buf), end - self.base)  # a match starts before
            i = self.buf.find(needle, self.pos, stop + len(needle) - 1)
            if 0 <= i < stop:
                self.pos = i
                return self.tell()
            if end is not None and self.base + len(self.buf) >= end + len(needle) - 1:
                self.pos = end - self.base
                return None
            self.pos = max(self.pos, min(stop, len(self.buf) - len(needle) + 1))
            if not self._more():
                self.pos = stop
                return None

    def damages_until(self, offset: int) -> list[Damage]:
        """Unreported damages at or before ``offset`` (marked reported)."""
        out = []
        damages = self.source.damages
        while self.reported < len(damages) and damages[self.reported].at <= offset:
            out.append(damages[self.reported])
            self.reported += 1
        return out

    def damage_within(self, start: int, end: int, open_end: bool) -> Damage | None:
        """The first unreported damage strictly inside ``[start, end)`` (or at ``end`` when the span is cut)."""
        for d in self.source.damages[self.reported :]:
            if start < d.at < end or (open_end and d.at == end):
                return d
        return None

    def mark_reported(self, damage: Damage) -> None:
        damages = self.source.damages
        self.reported = max(self.reported, damages.index(damage) + 1)
