"""How the shared (Ignite) result cache writes what it keeps: cache keys as digests of a canonical
form of the callers' key tuples, entries as msgpack envelopes around protobuf bytes (never pickle),
and the write records of the shared write log. Bad input raises TypeError or ValueError naming it."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Hashable
from dataclasses import dataclass

import msgspec
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from libs.cache import Scope

ENTRY_VERSION = 1
"""The envelope's format version: an entry of another version is a miss (and is dropped)."""


def _canonical(part: object) -> object:
    """A JSON-able form of a key part that is the same in every process for equal keys."""
    if part is None or isinstance(part, bool | int | float | str):
        return part
    if isinstance(part, bytes):
        return {"b": part.hex()}
    if isinstance(part, enum.Enum):
        return {"e": f"{type(part).__qualname__}.{part.name}"}
    if isinstance(part, tuple | list):
        return [_canonical(p) for p in part]
    if isinstance(part, frozenset | set):
        return {"s": sorted((_canonical(p) for p in part), key=msgspec.json.encode)}
    if isinstance(part, dict):
        return {
            "d": sorted(([_canonical(k), _canonical(v)] for k, v in part.items()), key=msgspec.json.encode)
        }
    if dataclasses.is_dataclass(part) and not isinstance(part, type):
        fields = [[f.name, _canonical(getattr(part, f.name))] for f in dataclasses.fields(part)]
        return {"c": type(part).__qualname__, "f": fields}
    raise TypeError(
        f"cache key part {part!r} of type {type(part).__name__} cannot be encoded for a shared cache: "
        "use str, int, float, bool, None, bytes, tuples, sets, dicts, enums or dataclasses of those"
    )


def key_digest(namespace: str, key: Hashable) -> str:
    """The Ignite key of `key` in `namespace`: a SHA-256 of its canonical form (fixed length)."""
    return hashlib.sha256(msgspec.json.encode([namespace, _canonical(key)])).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A cached answer as kept in Ignite."""

    value: Message
    scope: Scope | None
    seq: int
    """The write sequence number up to which the entry is known valid for its scope."""
    expires_at: float
    """Wall-clock seconds at which the entry's TTL ends."""


def encode_entry(value: Message, scope: Scope | None, seq: int, expires_at: float) -> bytes:
    """The bytes an entry is kept as: its message's full type name and serialized bytes, and its scope."""
    if not isinstance(value, Message):
        raise TypeError(f"the shared cache keeps protobuf messages only, not {type(value).__name__}")
    return msgspec.msgpack.encode(
        [
            ENTRY_VERSION,
            value.DESCRIPTOR.full_name,
            value.SerializeToString(),
            None if scope is None else list(scope),
            seq,
            expires_at,
        ]
    )


def decode_entry(raw: bytes) -> Entry:
    """The entry `raw` holds; ValueError if it is not one this version wrote (or names an unknown type)."""
    try:
        version, type_name, payload, scope, seq, expires_at = msgspec.msgpack.decode(raw)
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a cache entry: {exc}") from exc
    if version != ENTRY_VERSION:
        raise ValueError(f"cache entry format {version!r}, expected {ENTRY_VERSION}")
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError as exc:
        raise ValueError(f"cache entry of unknown message type {type_name!r}") from exc
    message = message_factory.GetMessageClass(descriptor)()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise ValueError(f"cache entry of type {type_name!r} does not parse: {exc}") from exc
    return Entry(message, None if scope is None else tuple(scope), int(seq), float(expires_at))


def encode_write(tenant: str, datasource: str, min_ts: int, max_ts: int) -> bytes:
    """A write-log record: a write of [min_ts, max_ts] to a tenant's datasource."""
    return msgspec.msgpack.encode([tenant, datasource, min_ts, max_ts])


def decode_write(raw: bytes) -> tuple[str, str, int, int]:
    """The (tenant, datasource, min_ts, max_ts) of a write-log record; ValueError if it is not one."""
    try:
        tenant, datasource, min_ts, max_ts = msgspec.msgpack.decode(raw)
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a write record: {exc}") from exc
    return str(tenant), str(datasource), int(min_ts), int(max_ts)
