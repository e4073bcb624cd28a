"""The protobuf3 messages of DVID's keyvalue batch endpoints, without a protobuf library.

    message KeyValue  { string key = 1; bytes value = 2; }
    message KeyValues { repeated KeyValue kvs = 1; }
    message KeyRange  { string key = 1; uint64 byte_start = 2; uint64 byte_end = 3; }
    message Keys      { repeated string keys = 1; repeated KeyRange key_ranges = 2; }

(DVID's datatype/common/proto.)  Only the wire format's varints and
length-delimited fields are needed; unknown fields are skipped, as protobuf
does.  Keys are text; bytes that are not UTF-8 travel as surrogate escapes.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from dvidfs.errors import InvalidInputError

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: memoryview, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise InvalidInputError("malformed protobuf: a varint is cut short or too long")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def fields(data) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one message: ints for varints and
    fixed-size fields, memoryviews for length-delimited ones."""
    buf = memoryview(data).cast("B")
    i = 0
    while i < len(buf):
        tag, i = _read_varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise InvalidInputError("malformed protobuf: field number 0")
        if wire == VARINT:
            value, i = _read_varint(buf, i)
        elif wire == LEN:
            n, i = _read_varint(buf, i)
            if i + n > len(buf):
                raise InvalidInputError("malformed protobuf: a field runs past the end of the message")
            value, i = buf[i:i + n], i + n
        elif wire in (I64, I32):
            n = 8 if wire == I64 else 4
            if i + n > len(buf):
                raise InvalidInputError("malformed protobuf: a field runs past the end of the message")
            value, i = int.from_bytes(buf[i:i + n], "little"), i + n
        else:
            raise InvalidInputError(f"malformed protobuf: wire type {wire} is not supported")
        yield number, wire, value


def _text(v, what: str) -> str:
    if not isinstance(v, memoryview):
        raise InvalidInputError(f"malformed protobuf: {what} is not a string")
    return bytes(v).decode("utf-8", "surrogateescape")


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | LEN) + _varint(len(payload)) + payload


def encode_key_values(items: Iterable[tuple[str, bytes | None]]) -> bytes:
    """KeyValues of (key, value) pairs (None: sent without a value, as DVID
    answers for an absent key)."""
    out = bytearray()
    for key, value in items:
        kv = _len_field(1, key.encode("utf-8", "surrogateescape"))
        if value:
            kv += _len_field(2, bytes(value))
        out += _len_field(1, kv)
    return bytes(out)


def decode_key_values(data) -> list[tuple[str, bytes]]:
    """The (key, value) pairs of a KeyValues message."""
    out = []
    for number, _, kv in fields(data):
        if number != 1:
            continue
        if not isinstance(kv, memoryview):
            raise InvalidInputError("malformed protobuf: KeyValues.kvs is not a message")
        key, value = "", b""
        for n, _, v in fields(kv):
            if n == 1:
                key = _text(v, "KeyValue.key")
            elif n == 2:
                if not isinstance(v, memoryview):
                    raise InvalidInputError("malformed protobuf: KeyValue.value is not bytes")
                value = bytes(v)
        out.append((key, value))
    return out


def encode_keys(keys: Iterable[str], ranges: Iterable[tuple[str, int, int]] = ()) -> bytes:
    """A Keys message (what a client sends to GET keyvalues)."""
    out = bytearray()
    for k in keys:
        out += _len_field(1, k.encode("utf-8", "surrogateescape"))
    for k, start, end in ranges:
        r = _len_field(1, k.encode("utf-8", "surrogateescape"))
        r += _varint(2 << 3 | VARINT) + _varint(start) + _varint(3 << 3 | VARINT) + _varint(end)
        out += _len_field(2, r)
    return bytes(out)


def decode_keys(data) -> tuple[list[str], list[tuple[str, int, int]]]:
    """(keys, [(key, byte_start, byte_end)]) of a Keys message."""
    keys, ranges = [], []
    for number, _, v in fields(data):
        if number == 1:
            keys.append(_text(v, "Keys.keys"))
        elif number == 2:
            if not isinstance(v, memoryview):
                raise InvalidInputError("malformed protobuf: Keys.key_ranges is not a message")
            key, start, end = "", 0, 0
            for n, _, x in fields(v):
                if n == 1:
                    key = _text(x, "KeyRange.key")
                elif n in (2, 3):
                    if isinstance(x, memoryview):
                        raise InvalidInputError("malformed protobuf: a byte offset is not a number")
                    if n == 2:
                        start = x
                    else:
                        end = x
            ranges.append((key, start, end))
    return keys, ranges
