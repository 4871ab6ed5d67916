"""A per-machine on-disk cache of the native linears' panels (block_quant.py), so that a start-up maps them from a
file instead of repacking the GGUF's blocks (a third of `LLM("default")` before).

One file per GGUF file, named by its resolved path, holds the panels of every native linear built from it. It is
valid for one key: the GGUF's identity (resolved path, size, modification time in ns, inode and device, as make
identifies a file), the kernel module (its name carries the ISA variant, the kernel sources and flags, the torch
version), and the repacking code (a hash of block_quant.py, this file, the GGUF loader and reader (which finds
each tensor's bytes in the file) and gguf-py's block decoding). A file whose key differs, or that is truncated or
corrupt (a CRC-32 of its header and data), is ignored with a one-line note on stderr, repacked and rewritten; an entry packed from other tensors (format, shape) than
those loaded is repacked: a cache file can cost time, never change a weight. Files are written whole under a
temporary name and renamed into place (atomic on POSIX), so concurrent processes never see a partial file; a reader
keeps the file it mapped even when another process replaces it. Writing a file removes the other files of the same
GGUF path (older versions).

The arrays are mapped copy-on-write (`np.memmap` mode "c"): no copy, pages shared with other processes through
the page cache, and the kernel never writes to its weights.

Layout (little-endian): MAGIC (8 bytes), header length (u64), CRC-32 of all that follows (u32), 4 zero bytes, the header
(JSON: format, key, data_bytes, entries), zero padding to ALIGN, then the data: each array at an ALIGN-aligned
offset from the data start. `LAMINA_PANEL_CACHE`: the directory (default ~/.cache/lamina/panels), or 0/off to
neither read nor write a cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from lamina.engine.loader.types import QuantizedWeight
from lamina.engine.models.block_quant import PANEL, Panels

MAGIC = b"LMPANEL1"
FORMAT = 1
ALIGN = 64
PREAMBLE = struct.Struct("<8sQII")  # magic, header length, data CRC-32, reserved
DTYPES = {"uint8": np.uint8, "float32": np.float32}
ARRAYS = ("codes", "scales", "offsets")
STALE_TEMP_S = 3600  # a temporary file this old was left by a process that died while writing
OFF = ("0", "off", "false", "no", "")


class CacheError(Exception):
    """Why a cache file cannot be used (one line)."""


def cache_dir() -> Path | None:
    """The cache directory (`LAMINA_PANEL_CACHE`, default ~/.cache/lamina/panels), None when turned off."""
    value = os.environ.get("LAMINA_PANEL_CACHE", "~/.cache/lamina/panels").strip()
    return None if value.lower() in OFF else Path(value).expanduser()


def code_version() -> str:
    """A hash of the code that decides the panels' bytes: the repacking (block_quant.py), this file format, the
    loader that hands over the blocks (un-permuting Q/K rows: loader/gguf.py; each tensor's offset, shape and size in
    the file: loader/gguf_reader.py) and gguf-py's block decoding."""
    from gguf import quants

    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in (here / "block_quant.py", here / "panel_cache.py", here.parent / "loader" / "gguf.py",
                 here.parent / "loader" / "gguf_reader.py", Path(quants.__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def file_identity(path: Path) -> str:
    """The GGUF file's identity: resolved path, size, modification time (ns), inode, device."""
    path = path.resolve()
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_dev}"


def describe(parts: list[QuantizedWeight]) -> list[list]:
    """What an entry was packed from: [format, out_features, in_features] per part."""
    return [[p.qtype.name, int(p.shape[0]), int(p.shape[1])] for p in parts]


def check_panels(panels: Panels) -> None:
    """CacheError unless the arrays have the shapes and types `pack_panels` gives these features."""
    n, k = panels.out_features, panels.in_features
    groups = -(-n // PANEL)
    codes, scales, offsets = panels.codes, panels.scales, panels.offsets
    if codes.dtype != np.uint8 or codes.shape not in ((groups, k, PANEL), (groups, k, PANEL // 2)):
        raise CacheError(f"codes {codes.dtype}{list(codes.shape)} do not fit a {n}x{k} linear")
    if (scales.dtype != np.float32 or scales.ndim != 3 or scales.shape[0] != groups or scales.shape[2] != PANEL
            or not scales.shape[1] or k % scales.shape[1]):
        raise CacheError(f"scales {scales.dtype}{list(scales.shape)} do not fit a {n}x{k} linear")
    if offsets.dtype != np.float32 or (offsets.size and offsets.shape != scales.shape):
        raise CacheError(f"offsets {offsets.dtype}{list(offsets.shape)} do not fit scales {list(scales.shape)}")


def read_panels(path: Path, key: str) -> dict[str, tuple[list, Panels]]:
    """The entries of a cache file (name -> (parts described, panels), arrays mapped from the file); CacheError
    when it is not a whole, uncorrupted file for `key`."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="c")
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        raise CacheError(f"unreadable ({exc})") from None
    if len(data) < PREAMBLE.size:
        raise CacheError(f"truncated ({len(data)} bytes)")
    magic, header_len, crc, _ = PREAMBLE.unpack(bytes(data[: PREAMBLE.size]))
    if magic != MAGIC:
        raise CacheError(f"not a panel cache file (starts with {magic!r})")
    start = _aligned(PREAMBLE.size + header_len)
    if start > len(data):
        raise CacheError(f"truncated (header of {header_len} bytes, file of {len(data)})")
    try:
        header = json.loads(bytes(data[PREAMBLE.size : PREAMBLE.size + header_len]))
        if header["format"] != FORMAT or header["key"] != key:
            raise CacheError("made for another file, kernel or code version")
        size, entries = int(header["data_bytes"]), dict(header["entries"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"corrupt header ({type(exc).__name__}: {exc})") from None
    if start + size != len(data):
        raise CacheError(f"size {len(data)} bytes, expected {start + size}")
    if zlib.crc32(data[PREAMBLE.size :]) != crc:
        raise CacheError("corrupt (CRC-32 mismatch)")
    body = data[start:]
    out = {}
    try:
        for name, entry in entries.items():
            arrays = []
            for array in ARRAYS:
                offset, dtype, shape = entry[array]
                dtype = np.dtype(DTYPES[dtype])
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if offset % ALIGN or not 0 <= offset <= offset + nbytes <= size:
                    raise CacheError(f"entry {name!r}: {array} at {offset}+{nbytes} outside the data ({size} bytes)")
                arrays.append(body[offset : offset + nbytes].view(dtype).reshape(shape))
            panels = Panels(*arrays, int(entry["out_features"]), int(entry["in_features"]))
            check_panels(panels)
            out[name] = (entry["parts"], panels)
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"corrupt entry ({type(exc).__name__}: {exc})") from None
    return out


def write_panels(path: Path, key: str, entries: dict[str, tuple[list, Panels]]) -> None:
    """Write `entries` under a temporary name beside `path`, then rename it into place (OSError when it cannot)."""
    layout, offset = {}, 0
    for name, (parts, panels) in entries.items():
        layout[name] = {"parts": parts, "out_features": panels.out_features, "in_features": panels.in_features}
        for array in ARRAYS:
            value = getattr(panels, array)
            layout[name][array] = [offset, value.dtype.name, list(value.shape)]
            offset = _aligned(offset + value.nbytes)
    header = json.dumps({"format": FORMAT, "key": key, "data_bytes": offset, "entries": layout}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(temp, "wb") as f:
            head = header + bytes(_aligned(PREAMBLE.size + len(header)) - PREAMBLE.size - len(header))
            f.write(PREAMBLE.pack(MAGIC, len(header), 0, 0) + head)
            crc, written = zlib.crc32(head), 0
            for _, panels in entries.values():
                for array in ARRAYS:
                    value = np.ascontiguousarray(getattr(panels, array))
                    pad = bytes(_aligned(written + value.nbytes) - written - value.nbytes)
                    crc = zlib.crc32(pad, zlib.crc32(value, crc))
                    f.write(memoryview(value).cast("B"))
                    f.write(pad)
                    written += value.nbytes + len(pad)
            f.seek(0)
            f.write(PREAMBLE.pack(MAGIC, len(header), crc, 0))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class PanelCache:
    """The cached panels of one GGUF file for one kernel module: `get` what is there, `put` what was packed,
    `save` once at the end (writes only when something was added)."""

    def __init__(self, source: Path, kernel_name: str) -> None:
        self.dir = cache_dir()
        self.entries: dict[str, tuple[list, Panels]] = {}
        self.hits = self.misses = 0
        self.note = "off" if self.dir is None else ""
        if self.dir is None:
            return
        self.key = f"{file_identity(source)}|{kernel_name}|{code_version()}|format {FORMAT}"
        self.prefix = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
        self.path = self.dir / f"{self.prefix}-{hashlib.sha256(self.key.encode()).hexdigest()[:16]}.panels"
        try:
            present = self.path.exists()  # raises where the folder cannot be entered (PermissionError)
        except OSError as exc:
            print(f"lamina: cannot read the panel cache folder {self.dir} ({exc}); packing", file=sys.stderr)
            present = False
        if present:
            try:
                self.entries = read_panels(self.path, self.key)
            except CacheError as exc:
                print(f"lamina: ignoring the panel cache {self.path}: {exc}; repacking", file=sys.stderr)

    def get(self, names: list[str], parts: list[QuantizedWeight]) -> Panels | None:
        """The cached panels of the linear stacking `names`, if they were packed from parts like these."""
        entry = self.entries.get("+".join(names))
        if entry is not None and entry[0] == describe(parts):
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, names: list[str], parts: list[QuantizedWeight], panels: Panels) -> None:
        self.entries["+".join(names)] = (describe(parts), panels)

    def save(self) -> None:
        """Write the file when a linear was packed here (a read-only or full disk: packed again next time)."""
        if self.dir is None or not self.misses:
            self.note = self.note or f"{self.hits} mapped from the cache"
            return
        try:
            write_panels(self.path, self.key, self.entries)
        except OSError as exc:
            self.note = f"{self.misses} packed, not cached ({exc.strerror or exc})"
            return
        self.note = f"{self.misses} packed, cached" + (f", {self.hits} mapped from the cache" if self.hits else "")
        self._prune()

    def _prune(self) -> None:
        """Remove this GGUF path's files for other keys, and temporary files left by processes that died."""
        for other in self.dir.glob(f"{self.prefix}-*.panels"):
            if other != self.path:
                other.unlink(missing_ok=True)
        for temp in self.dir.glob(".*.tmp"):
            try:
                if time.time() - temp.stat().st_mtime > STALE_TEMP_S:
                    temp.unlink(missing_ok=True)
            except OSError:
                pass
