"""A bounds-checked GGUF container reader: metadata as Python values, tensors as zero-copy byte views."""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lamina.errors import ModelLoadError

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(slots=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # PyTorch order (outermost first): the reverse of GGUF's ne[]
    qtype: int
    data: np.ndarray  # raw uint8 bytes of the tensor

    @property
    def type_name(self) -> str:
        try:
            return GGMLQuantizationType(self.qtype).name
        except ValueError:
            return f"type#{self.qtype}"


class _Cursor:
    __slots__ = ("buf", "pos", "path")

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ModelLoadError(
                f"{self.path}: truncated or corrupt GGUF: {what} needs bytes {self.pos}..{end} but the file has {len(self.buf)}"
            )
        view, self.pos = self.buf[self.pos : end], end
        return view

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.scalar("<Q", what), what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path}: corrupt GGUF: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what)
        raise ModelLoadError(f"{self.path}: corrupt GGUF: {what} has unknown value type {vtype}")

    def array(self, what: str) -> Any:
        etype, count = self.scalar("<I", what), self.scalar("<Q", what)
        if etype in _NUMPY:
            dtype = np.dtype(_NUMPY[etype])
            return np.frombuffer(self.take(count * dtype.itemsize, what), dtype=dtype).tolist()
        if count > len(self.buf):
            raise ModelLoadError(f"{self.path}: corrupt GGUF: {what} claims {count} elements")
        if etype == _STRING:
            return self.strings(count, what)
        return [self.value(etype, what) for _ in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings in a row (a tokenizer's vocabulary and merges: ~100k of them), in one tight loop."""
        buf, pos, size, out = self.buf, self.pos, len(self.buf), []
        unpack = struct.Struct("<Q").unpack_from
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                end = pos + 8 + n
                if end > size:
                    break
                out.append(str(buf[pos + 8 : end], "utf-8"))
                pos = end
        except struct.error:
            pass
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path}: corrupt GGUF: {what} is not valid UTF-8") from None
        if len(out) < count:
            self.pos = pos
            self.string(what)  # raises the truncation error with its byte range
        self.pos = pos
        return out


@dataclass(slots=True)
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @classmethod
    def open(cls, path: str | Path) -> "GGUFFile":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read GGUF file: {exc.strerror or exc}") from None
        return cls.parse(memoryview(mm), path)

    @classmethod
    def parse(cls, buf: memoryview, path: Path) -> "GGUFFile":
        cur = _Cursor(buf, path)
        magic = bytes(buf[:4])
        if magic != MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
        cur.pos = 4
        version = cur.scalar("<I", "header")
        if version not in (2, 3):
            raise ModelLoadError(f"{path}: unsupported GGUF version {version} (supported: 2, 3; big-endian files are not supported)")
        n_tensors, n_kv = cur.scalar("<Q", "header"), cur.scalar("<Q", "header")
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            metadata[key] = cur.value(cur.scalar("<I", f"metadata {key!r}"), f"metadata {key!r}")
        infos = [cls._tensor_info(cur, i) for i in range(n_tensors)]
        alignment = int(metadata.get("general.alignment", 32))
        start = -(-cur.pos // alignment) * alignment
        tensors = {}
        for name, shape, qtype, offset in infos:
            nbytes = _tensor_nbytes(path, name, shape, qtype)
            cur.pos = start + offset
            data = np.frombuffer(cur.take(nbytes, f"tensor {name!r} data"), dtype=np.uint8)
            tensors[name] = GGUFTensor(name, shape, qtype, data)
        return cls(path, version, metadata, tensors)

    @staticmethod
    def _tensor_info(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = cur.string(f"tensor info #{i}")
        n_dims = cur.scalar("<I", f"tensor {name!r} info")
        if n_dims > 8:
            raise ModelLoadError(f"{cur.path}: corrupt GGUF: tensor {name!r} has {n_dims} dimensions")
        ne = [cur.scalar("<Q", f"tensor {name!r} info") for _ in range(n_dims)]
        qtype, offset = cur.scalar("<I", f"tensor {name!r} info"), cur.scalar("<Q", f"tensor {name!r} info")
        return name, tuple(reversed(ne)), qtype, offset

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def _tensor_nbytes(path: Path, name: str, shape: tuple[int, ...], qtype: int) -> int:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        raise ModelLoadError(f"{path}: corrupt GGUF: tensor {name!r} has unknown ggml type {qtype}") from None
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if shape and shape[-1] % block:
        raise ModelLoadError(f"{path}: corrupt GGUF: tensor {name!r} row length {shape[-1]} is not a multiple of {block}")
    return count // block * type_size
