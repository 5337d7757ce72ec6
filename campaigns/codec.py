"""Avro encoding and decoding of every Kafka value the pipeline produces or consumes.

Wire format (Avro "single-object encoding", Avro spec 1.10+)::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro binary body

The fingerprint is taken over the schema's Parsing Canonical Form, so it ignores ``doc``, defaults
and ``logicalType``. Any Avro library that implements single-object encoding can read the values.

Schemas are loaded from ``schemas/*.avsc`` (the current version of each record, used to write and as
the reader schema) and ``schemas/history/<stem>/v<n>.avsc`` (every version ever committed). A value
written with any known version decodes into the *current* shape through Avro schema resolution, so
consumers keep working while producers are upgraded.

Guarantees:

* ``encode`` either returns bytes that ``decode`` turns back into the same record (defaults filled
  in, timestamps as UTC datetimes truncated to the millisecond), or raises
  :class:`~campaigns.errors.SchemaError` naming the record and every offending field. Unknown keys,
  missing fields without a default, wrong types, out-of-range ``int``/``long`` values, bad enum
  symbols, naive datetimes and values larger than ``max_encoded_size`` are all rejected.
* ``decode`` either returns a dict with exactly the current schema's fields or raises
  :class:`~campaigns.errors.SchemaError` (chained to the underlying cause) - never anything else,
  whatever bytes it is given. Trailing bytes after the body are an error.
* Timestamps (``timestamp-millis``) are accepted on encode as timezone-aware ``datetime`` or ``int``
  epoch milliseconds; sub-millisecond precision is truncated (floored). They decode as timezone-aware
  UTC ``datetime`` objects (what fastavro returns). Naive datetimes are refused: fastavro would silently
  read them in the process's *local* time zone.

Speed: for flat records of primitive, enum, ``["null", T]``, timestamp-millis and array-of-primitive
fields (all of ours) the codec compiles a specialised encoder and decoder per schema at start-up. They
produce exactly the bytes and values fastavro does (the unit tests check this property against
fastavro), and hand anything they do not handle on the fast path (``Mapping`` subclasses,
``str``/``int`` subclasses, values that may be invalid) to the fastavro path, which validates fully.
Decoding values written with an older schema always goes through fastavro's schema resolution.

Nothing is parsed at import; build a :class:`Codec` or call :func:`get_codec` once per process.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import reprlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate

from campaigns.errors import SchemaError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_ENCODED_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "Codec",
    "SchemaVersion",
    "default_schema_dir",
    "get_codec",
]

MAGIC = b"\xc3\x01"
"""The two marker bytes every single-object-encoded value starts with."""

HEADER_SIZE = 10
"""Magic (2 bytes) + fingerprint (8 bytes)."""

DEFAULT_MAX_ENCODED_SIZE = 1024 * 1024
"""Largest encoded value (header included) :meth:`Codec.encode` returns, in bytes."""

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# timestamp-millis values that decode to a datetime (years 1..9999); encode refuses others so that
# every encoded value decodes.
_TS_MIN = -62_135_596_800_000
_TS_MAX = 253_402_300_799_999


def default_schema_dir() -> Path:
    """The ``schemas`` package's folder (package data: the same in a checkout, an editable or a wheel install)."""
    return Path(str(importlib.resources.files("schemas")))


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One parsed schema file: the current version of a record or one of its history versions."""

    record_name: str
    """Short record name, e.g. ``RecipientMessage``."""
    version: str
    """``"current"`` for ``schemas/<stem>.avsc``, else the history file's stem (``"v1"``, ...)."""
    path: Path
    parsed: dict[str, Any]
    """The schema as returned by :func:`fastavro.parse_schema`."""
    fingerprint: bytes
    """CRC-64-AVRO of the Parsing Canonical Form, 8 bytes, little-endian (as on the wire)."""
    header: bytes
    """``MAGIC + fingerprint``: the 10 bytes every value written with this schema starts with."""


@dataclass(frozen=True, slots=True)
class _Record:
    """Everything the codec knows about one record type; built once, read-only afterwards."""

    name: str
    stem: str
    current: SchemaVersion
    writers: dict[bytes, SchemaVersion]
    """Every known writer schema of this record by fingerprint (current first, then newest history)."""
    fields: tuple[dict[str, Any], ...]
    field_names: frozenset[str]
    timestamp_fields: frozenset[str]
    fast_encode: Callable[[Any], bytes] | None
    """Returns header + body, raises anything to hand the value to the checked path."""
    fast_decode: Callable[[bytes], dict[str, Any]] | None
    """Decodes a value written with the current schema (header already checked)."""
    plans: list[tuple[str, _Plan, bool, Any]] | None
    """(name, plan, has default, default) per field when the record is compiled (:meth:`Codec.encoder` uses them)."""


class Codec:
    """Encodes and decodes the project's Avro records with a single-object-encoding header.

    Thread-safe once constructed (its state is read-only but for caches of compiled encoders). Construction
    parses every schema once and raises :class:`SchemaError` if a schema file is missing, malformed or
    inconsistent with its history.

    Args:
        schema_dir: folder holding ``*.avsc`` and ``history/<stem>/v<n>.avsc``; defaults to the
            repository's ``schemas/``.
        max_encoded_size: largest value :meth:`encode` returns, header included, in bytes.
        compiled: use the compiled fast paths (default). ``False`` runs everything through fastavro;
            results are identical, only slower. Exists for tests and for ruling the fast path out.
    """

    def __init__(
        self,
        schema_dir: str | Path | None = None,
        *,
        max_encoded_size: int = DEFAULT_MAX_ENCODED_SIZE,
        compiled: bool = True,
    ) -> None:
        if max_encoded_size <= HEADER_SIZE:
            raise SchemaError(f"max_encoded_size must exceed the {HEADER_SIZE}-byte header")
        self.schema_dir = Path(schema_dir) if schema_dir is not None else default_schema_dir()
        self.max_encoded_size = max_encoded_size
        self.compiled = compiled
        records = _load_records(self.schema_dir, compiled=compiled)
        self._records: dict[str, _Record] = {}
        for record in records:
            for alias in (record.name, record.current.parsed["name"], record.stem):
                self._records[alias] = record
        self._owners: dict[bytes, str] = {}
        for record in records:
            for fp in record.writers:
                self._owners.setdefault(fp, record.name)
        self._names = tuple(sorted(record.name for record in records))
        # Compiled on demand by encoder(), then reused: filled idempotently, so threads sharing the codec at most
        # compile one twice.
        self._partials: dict[tuple[str, tuple[str, ...]], Callable[[tuple[bytes, ...]], Callable[[Any], bytes]]] = {}
        self._field_writers: dict[tuple[str, str], Callable[[Any], bytes]] = {}
        self._declined: set[tuple[str, str, str]] = set()  # (record, field, type) of constants already logged
        self._projections: dict[tuple[str, tuple[str, ...]], Callable[[bytes], tuple[Any, ...]]] = {}

    # -- introspection -----------------------------------------------------------------------------

    @property
    def record_names(self) -> tuple[str, ...]:
        """Short names of every record the codec knows, sorted."""
        return self._names

    def fingerprint(self, record_name: str) -> bytes:
        """The 8-byte fingerprint (wire byte order) of the record's current schema."""
        return self._record(record_name).current.fingerprint

    def schema(self, record_name: str) -> dict[str, Any]:
        """The record's current parsed schema (do not mutate it)."""
        return self._record(record_name).current.parsed

    def versions(self, record_name: str) -> tuple[SchemaVersion, ...]:
        """Every distinct writer schema of the record that :meth:`decode` accepts, current first."""
        return tuple(self._record(record_name).writers.values())

    def is_compiled(self, record_name: str) -> bool:
        """Whether the record has compiled fast paths (false with ``compiled=False`` or when a field
        type - map, fixed, nested record, array of anything but primitives/enums, other logical type,
        wider union - needs fastavro)."""
        record = self._record(record_name)
        return record.fast_encode is not None and record.fast_decode is not None

    # -- encode ------------------------------------------------------------------------------------

    def encode(self, record_name: str, value: Mapping[str, Any]) -> bytes:
        """Encode ``value`` with the record's current schema; returns header + Avro body.

        ``record_name`` is the short name (``"RecipientMessage"``), the full name
        (``"campaigns.RecipientMessage"``) or the file stem (``"recipient_message"``). Fields that are
        missing take their schema default; a missing field without a default, a key that is not a
        field, a value of the wrong type, a naive datetime or a result larger than
        ``max_encoded_size`` raises :class:`SchemaError`. The output is deterministic: the same value
        always gives the same bytes.
        """
        record = self._record(record_name)
        data: bytes | None = None
        if record.fast_encode is not None:
            try:
                data = record.fast_encode(value)
            except Exception:
                # The fast path only handles the common, certainly valid shapes; everything else
                # (including every invalid value) takes the checked path, which explains errors.
                data = None
        if data is None:
            data = record.current.header + self._encode_checked(record, value)
        if len(data) > self.max_encoded_size:
            raise SchemaError(
                f"cannot encode {record.name}: {len(data)} bytes encoded exceeds the limit of "
                f"{self.max_encoded_size} bytes; shorten the largest fields"
            )
        return data

    def encoder(self, record_name: str, constants: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bytes]:
        """An encoder of ``record_name`` values whose fields in ``constants`` always take those values.

        Called with the other fields, it returns exactly what ``encode(record_name, {**constants, **value})``
        returns - the same bytes, or the same :class:`SchemaError` - but the constant fields were encoded once,
        here, not on every call (a page of the expansion's messages differ in three fields of fourteen). A value
        that is not exactly the other fields (one left to its default, an extra key) or that the compiled path
        declines takes the full :meth:`encode`. Raises :class:`SchemaError` for a constant that is not a field.
        """
        record = self._record(record_name)
        unknown = constants.keys() - record.field_names
        if unknown:
            raise SchemaError(f"{record.name} has no field {', '.join(sorted(map(str, unknown)))}")
        constants = dict(constants)

        def checked(value: Mapping[str, Any]) -> bytes:
            return self.encode(record_name, {**constants, **value})

        blocks = self._constant_blocks(record, constants)
        if blocks is None:  # not compiled, or a constant the compiled path declines: encode checks it every call
            return checked
        variable = tuple(name for name, *_ in record.plans or () if name not in constants)
        key = (record.name, variable)
        make = self._partials.get(key)
        if make is None:  # once per record and set of fields, whatever the constants
            make = self._partials[key] = _compile_partial(record.current, record.plans or [], variable)
        fast, limit = make(blocks), self.max_encoded_size

        def encode(value: Mapping[str, Any]) -> bytes:
            try:
                data = fast(value)
            except Exception:
                return checked(value)  # explains what is wrong, or encodes what the fast path declined
            return data if len(data) <= limit else checked(value)  # over the limit: encode's error

        return encode

    def _constant_blocks(self, record: _Record, constants: dict[str, Any]) -> tuple[bytes, ...] | None:
        """The header and the constant fields' bytes, one block before the first other field and one after each
        (see :func:`_compile_partial`); None if there is no compiled path for them."""
        if record.plans is None:
            return None
        blocks, current = [], [record.current.header]
        for name, plan, _, _ in record.plans:
            if name not in constants:
                blocks.append(b"".join(current))
                current = []
                continue
            writer = self._field_writers.get((record.name, name))
            if writer is None:
                writer = self._field_writers[(record.name, name)] = _compile_field_writer(record.name, name, plan)
            try:
                current.append(writer(constants[name]))
            except Exception:
                # Every value of this encoder now takes the full encode (~25x the compiled one's cost): say so once,
                # or the only sign is the CPU (a tuple for an array once cost the worker 40 %).
                declined = (record.name, name, type(constants[name]).__name__)
                if declined not in self._declined:
                    self._declined.add(declined)
                    log.warning("codec: %s's constant %s (a %s) has no compiled path: every value of its encoders "
                                "takes the full encode", *declined)
                return None
        blocks.append(b"".join(current))
        return tuple(blocks)

    def _encode_checked(self, record: _Record, value: Any) -> bytes:
        problems = _problems(record, value)
        if problems:
            raise SchemaError(f"cannot encode {record.name}: " + "; ".join(problems))
        buf = BytesIO()
        try:
            schemaless_writer(buf, record.current.parsed, value)
        except Exception as exc:  # validation passed, so this would be a fastavro/codec bug
            raise SchemaError(f"cannot encode {record.name}: {type(exc).__name__}: {exc}") from exc
        return buf.getvalue()

    # -- decode ------------------------------------------------------------------------------------

    def decode(self, data: bytes, record_name: str) -> dict[str, Any]:
        """Decode one value into a dict with exactly the current schema's fields.

        The writer schema is found by the fingerprint in the header among the current and history
        versions of ``record_name``; older versions are resolved to the current schema (new fields
        take their defaults). Any problem - not bytes, too short, wrong magic, unknown fingerprint or
        one belonging to another record, malformed or truncated body, trailing bytes, an unresolvable
        schema change - raises :class:`SchemaError` chained to the cause, and nothing else.
        """
        record = self._record(record_name)
        try:
            if (
                record.fast_decode is not None
                and type(data) is bytes
                and data.startswith(record.current.header)
            ):
                return record.fast_decode(data)
            return self._decode_general(record, data)
        except SchemaError:
            raise
        except Exception as exc:
            if isinstance(exc, IndexError | EOFError | struct.error):
                reason = "truncated body"
            elif isinstance(exc, _Malformed):
                reason = str(exc)
            else:
                reason = f"{type(exc).__name__}: {exc}"
            raise SchemaError(
                f"cannot decode {record.name}: malformed value ({_size(data)}): {reason}"
            ) from exc

    def _decode_general(self, record: _Record, data: Any) -> dict[str, Any]:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, bytes):
            what = "None (a tombstone?)" if data is None else type(data).__name__
            raise SchemaError(f"cannot decode {record.name}: expected bytes, got {what}")
        if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
            raise SchemaError(
                f"cannot decode {record.name}: not single-object-encoded Avro "
                f"(expected the header C3 01 + 8-byte fingerprint, got {data[:HEADER_SIZE].hex(' ')!r}, "
                f"{len(data)} bytes)"
            )
        fp = data[2:HEADER_SIZE]
        writer = record.writers.get(fp)
        if writer is None:
            owner = self._owners.get(fp)
            if owner is not None:
                raise SchemaError(
                    f"cannot decode {record.name}: the value was written as {owner} "
                    f"(fingerprint {fp.hex()}); is it on the wrong topic?"
                )
            known = ", ".join(f"{v.version}={v.fingerprint.hex()}" for v in record.writers.values())
            raise SchemaError(
                f"cannot decode {record.name}: unknown writer schema fingerprint {fp.hex()} "
                f"(known: {known}); a newer producer must commit its schema to "
                f"schemas/history/{record.stem}/ before writing with it"
            )
        if writer is record.current and record.fast_decode is not None:
            return record.fast_decode(data)
        buf = BytesIO(data)
        buf.seek(HEADER_SIZE)
        reader = None if writer is record.current else record.current.parsed
        try:
            result = schemaless_reader(buf, writer.parsed, reader)
        except SchemaResolutionError as exc:
            raise SchemaError(
                f"cannot decode {record.name}: a value written with schema {writer.version} "
                f"({writer.path.name}) cannot be read with the current schema: {exc}. The schema "
                "change is not backward compatible"
            ) from exc
        if buf.tell() != len(data):
            raise SchemaError(
                f"cannot decode {record.name}: {len(data) - buf.tell()} trailing bytes after the body"
            )
        if not isinstance(result, dict):  # cannot happen for a record schema; keeps the contract
            raise SchemaError(f"cannot decode {record.name}: decoded a {type(result).__name__}")
        return result

    def projection(self, record_name: str, fields: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
        """A decoder of ``record_name`` values that returns only ``fields``, as a tuple in that order, with
        timestamp-millis fields as epoch milliseconds (``int``) instead of datetimes.

        It accepts and refuses exactly the values :meth:`decode` does, with the same :class:`SchemaError`: the
        fields left out are still read and checked (UTF-8, ranges), only not kept. For a consumer that needs a few
        fields of many values (the analytics read seven of an outcome's eleven) it saves the dict and the
        datetimes. Raises :class:`SchemaError` for a name that is not a field, or one given twice."""
        record = self._record(record_name)
        wanted = tuple(fields)
        unknown = set(wanted) - record.field_names
        if unknown or len(set(wanted)) != len(wanted):
            raise SchemaError(f"{record.name}: a projection names each of its fields once; "
                              f"{', '.join(sorted(unknown)) or 'a field twice'}")
        key = (record.name, wanted)
        project = self._projections.get(key)
        if project is not None:
            return project
        stamps = tuple(name in record.timestamp_fields for name in wanted)

        def from_decoded(data: Any) -> tuple[Any, ...]:  # any writer version; decode explains every refusal
            value = self.decode(data, record_name)
            return tuple(_millis(value[name]) if stamp and value[name] is not None else value[name]
                         for name, stamp in zip(wanted, stamps, strict=True))

        fast = _compile_projection(record.current, record.plans, wanted) if record.plans is not None else None
        if fast is None:
            project = from_decoded
        else:
            header = record.current.header

            def project(data: Any) -> tuple[Any, ...]:
                if type(data) is bytes and data.startswith(header):
                    try:
                        return fast(data)
                    except Exception:
                        return from_decoded(data)  # malformed: decode raises its SchemaError
                return from_decoded(data)

        self._projections[key] = project
        return project

    # -- helpers -----------------------------------------------------------------------------------

    def _record(self, record_name: str) -> _Record:
        try:
            return self._records[record_name]
        except (KeyError, TypeError):
            raise SchemaError(
                f"unknown record {record_name!r}; known records: {', '.join(self._names)}"
            ) from None


@lru_cache(maxsize=1)
def get_codec() -> Codec:
    """The process-wide codec over the repository's ``schemas/`` (built on first call, then shared)."""
    return Codec()


# ---------------------------------------------------------------------------------------------------
# Loading


def _load_records(schema_dir: Path, *, compiled: bool) -> list[_Record]:
    if not schema_dir.is_dir():
        raise SchemaError(f"schema folder {schema_dir} does not exist")
    history_dir = schema_dir / "history"
    current_paths = sorted(schema_dir.glob("*.avsc"))
    if not current_paths:
        raise SchemaError(f"no *.avsc schemas in {schema_dir}")
    stems = {path.stem for path in current_paths}
    if history_dir.is_dir():
        orphans = sorted(p.name for p in history_dir.iterdir() if p.is_dir() and p.name not in stems)
        if orphans:
            raise SchemaError(
                f"schema history without a current schema: {', '.join(orphans)} in {history_dir}; "
                "a record is never deleted, only evolved"
            )
    records: list[_Record] = []
    seen: dict[str, Path] = {}
    for path in current_paths:
        current = _load_version(path, "current")
        if current.record_name in seen:
            raise SchemaError(
                f"record {current.record_name} is defined twice: {seen[current.record_name]} and {path}"
            )
        seen[current.record_name] = path
        history = (
            sorted((history_dir / path.stem).glob("v*.avsc"), key=_version_number, reverse=True)
            if (history_dir / path.stem).is_dir()
            else []
        )
        writers: dict[bytes, SchemaVersion] = {current.fingerprint: current}
        for hist_path in history:
            version = _load_version(hist_path, hist_path.stem)
            if version.parsed["name"] != current.parsed["name"]:
                raise SchemaError(
                    f"{hist_path} defines {version.parsed['name']}, expected {current.parsed['name']}"
                )
            # Same canonical form (e.g. only docs or defaults changed): the wire bytes are
            # identical, so the newer (already registered) version decodes them.
            writers.setdefault(version.fingerprint, version)
        records.append(_build_record(path.stem, current, writers, compiled=compiled))
    return records


def _version_number(path: Path) -> int:
    try:
        return int(path.stem[1:])
    except ValueError:
        raise SchemaError(f"history schema {path} must be named v<number>.avsc") from None


def _load_version(path: Path, version: str) -> SchemaVersion:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        parsed = parse_schema(raw)
        canonical = to_parsing_canonical_form(parsed)
        fp = bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO"))
    except Exception as exc:
        raise SchemaError(f"invalid Avro schema {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaError(f"{path} must define exactly one Avro record")
    return SchemaVersion(
        record_name=parsed["name"].rpartition(".")[2],
        version=version,
        path=path,
        parsed=parsed,
        fingerprint=fp,
        header=MAGIC + fp,
    )


def _build_record(
    stem: str, current: SchemaVersion, writers: dict[bytes, SchemaVersion], *, compiled: bool
) -> _Record:
    fields = tuple(current.parsed["fields"])
    timestamp_fields = frozenset(f["name"] for f in fields if _is_timestamp_millis(f["type"]))
    fast_encode = fast_decode = None
    plans = _plan_record(current.parsed) if compiled else None
    if plans is not None:
        fast_encode = _compile_encoder(current, plans)
        fast_decode = _compile_decoder(current, plans)
    return _Record(
        name=current.record_name,
        stem=stem,
        current=current,
        writers=writers,
        fields=fields,
        field_names=frozenset(f["name"] for f in fields),
        timestamp_fields=timestamp_fields,
        fast_encode=fast_encode,
        fast_decode=fast_decode,
        plans=plans,
    )


# ---------------------------------------------------------------------------------------------------
# Checked encoding path: explains every problem with a value


_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40


def _problems(record: _Record, value: Any) -> list[str]:
    """Every reason ``value`` cannot be encoded as ``record`` (``"field: what is wrong"``)."""
    if not isinstance(value, Mapping):
        return [f"expected a mapping of field names to values, got {type(value).__name__}"]
    problems = [f"{key!r}: not a field of {record.name}" for key in value if key not in record.field_names]
    for field in record.fields:
        name = field["name"]
        if name not in value:
            if "default" not in field:
                problems.append(f"{name}: required field is missing (it has no default)")
            continue
        datum = value[name]
        if name in record.timestamp_fields:
            if isinstance(datum, datetime) and datum.utcoffset() is None:
                problems.append(
                    f"{name}: naive datetime {datum.isoformat()} is ambiguous; "
                    "pass a timezone-aware datetime or epoch milliseconds"
                )
                continue
            millis = _millis(datum)
            if millis is not None and not _TS_MIN <= millis <= _TS_MAX:
                problems.append(
                    f"{name}: {_repr.repr(datum)} is outside years 1-9999 (UTC) and could not be decoded"
                )
                continue
        try:
            ok = validate(datum, field["type"], field=name, raise_errors=False)
        except Exception:
            ok = False
        if not ok:
            problems.append(
                f"{name}: {type(datum).__name__} {_repr.repr(datum)} "
                f"is not a valid {_describe(field['type'])}"
            )
        elif isinstance(datum, str):
            try:
                datum.encode()
            except UnicodeEncodeError:
                problems.append(f"{name}: string {_repr.repr(datum)} cannot be encoded as UTF-8")
    return problems


def _millis(datum: Any) -> int | None:
    """Epoch milliseconds of an int or aware datetime (as fastavro computes them), else None."""
    if isinstance(datum, datetime):
        delta = datum - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(datum, int) and not isinstance(datum, bool):
        return datum
    return None


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return " or ".join(_describe(branch) for branch in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if schema.get("logicalType") == "timestamp-millis":
            return "timestamp-millis (timezone-aware datetime or int epoch milliseconds)"
        if kind == "enum":
            short = str(schema["name"]).rpartition(".")[2]
            return f"{short} symbol (one of {', '.join(schema['symbols'])})"
        if kind in ("record", "fixed"):
            return f"{kind} {schema['name']}"
        return _describe(kind)
    return {
        "int": "int (32-bit)",
        "long": "long (64-bit int)",
        "float": "float",
        "double": "double (float or int)",
        "boolean": "boolean (bool)",
        "bytes": "bytes",
        "string": "string (str)",
        "null": "null (None)",
    }.get(str(schema), str(schema))


def _is_timestamp_millis(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(_is_timestamp_millis(branch) for branch in schema)
    return (
        isinstance(schema, dict)
        and schema.get("logicalType") == "timestamp-millis"
        and (schema.get("type") == "long")
    )


def _size(data: object) -> str:
    try:
        return f"{len(data)} bytes"  # type: ignore[arg-type]
    except TypeError:
        return type(data).__name__


# ---------------------------------------------------------------------------------------------------
# Compiled fast paths
#
# A "plan" says how one field type is written: ("string",), ("long",), ("enum", symbols),
# ("timestamp-millis",), ("union", null_index, inner_plan), ("array", item_plan) for arrays of a
# primitive or enum, ... Records with any other kind of field (maps, fixed, nested records, arrays of
# anything else, other logical types, general unions) get no fast path and always go through
# fastavro. Generated code is plain Python compiled once per schema; the source is kept on the
# function as ``__source__`` for debugging.

_Plan = tuple[Any, ...]
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})
_DEFAULTABLE = _PRIMITIVES - {"bytes"} | {"enum", "timestamp-millis"}
# Array items the compiled paths handle: every item takes at least one byte on the wire, so a block
# count larger than the bytes left is malformed (checked before looping), and a JSON default of such an
# array is already the Python value.
_ARRAY_ITEMS = frozenset({"boolean", "int", "long", "float", "double", "string", "bytes", "enum"})

# Varint tables: _VARINT[z] is the unsigned varint of z < 2**14; _VARINT_CONT[c] is a 14-bit chunk c
# with both continuation bits set. Zig-zag is applied by the caller.
_VARINT_LIMIT = 1 << 14
_VARINT: tuple[bytes, ...] = ()
_VARINT_CONT: tuple[bytes, ...] = ()


def _varint_tables() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    global _VARINT, _VARINT_CONT
    if not _VARINT:
        _VARINT = tuple(
            bytes((z,)) if z < 0x80 else bytes(((z & 0x7F) | 0x80, z >> 7)) for z in range(_VARINT_LIMIT)
        )
        _VARINT_CONT = tuple(bytes(((c & 0x7F) | 0x80, (c >> 7) | 0x80)) for c in range(_VARINT_LIMIT))
    return _VARINT, _VARINT_CONT


def _write_uvarint_big(z: int) -> bytes:
    """Unsigned varint of ``z >= 2**14``, 14 bits per table lookup."""
    last, cont = _VARINT, _VARINT_CONT
    parts = []
    while z >= _VARINT_LIMIT:
        parts.append(cont[z & 0x3FFF])
        z >>= 14
    parts.append(last[z])
    return b"".join(parts)


class _Malformed(ValueError):
    """Raised by compiled decoders; converted to SchemaError by Codec.decode."""


def _plan_type(schema: Any) -> _Plan | None:
    if isinstance(schema, str):
        return (schema,) if schema in _PRIMITIVES else None
    if isinstance(schema, list):
        if len(schema) != 2 or "null" not in schema:
            return None
        null_index = schema.index("null")
        inner = _plan_type(schema[1 - null_index])
        if inner is None or inner[0] in ("null", "union"):
            return None
        return ("union", null_index, inner)
    if isinstance(schema, dict):
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if logical is not None:
            return ("timestamp-millis",) if logical == "timestamp-millis" and kind == "long" else None
        if kind == "enum":
            return ("enum", tuple(schema["symbols"]))
        if kind == "array":
            items = _plan_type(schema.get("items"))
            return ("array", items) if items is not None and items[0] in _ARRAY_ITEMS else None
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return (kind,)
    return None


def _plan_record(schema: dict[str, Any]) -> list[tuple[str, _Plan, bool, Any]] | None:
    """(name, plan, has_default, default) per field, or None if any field needs fastavro."""
    plans = []
    for field in schema["fields"]:
        plan = _plan_type(field["type"])
        if plan is None:
            return None
        has_default = "default" in field
        default = field.get("default")
        if has_default and default is not None:
            # Only defaults whose JSON value is already the Python value are inlined (not bytes).
            target = plan[2] if plan[0] == "union" else plan
            if target[0] == "array":
                if not isinstance(default, list):
                    return None
            elif target[0] not in _DEFAULTABLE:
                return None
        plans.append((field["name"], plan, has_default, default))
    return plans


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def const(self, value: Any) -> str:
        name = f"_k{len(self.consts)}"
        self.consts[name] = value
        return name

    def compile(self, func_name: str, namespace: dict[str, Any], filename: str) -> Callable[..., Any]:
        source = "\n".join(self.lines) + "\n"
        ns = {**namespace, **self.consts}
        exec(compile(source, filename, "exec"), ns)  # noqa: S102 - source generated from a parsed schema
        func: Callable[..., Any] = ns[func_name]
        func.__source__ = source  # type: ignore[attr-defined]
        return func


def _compile_encoder(
    current: SchemaVersion, plans: list[tuple[str, _Plan, bool, Any]]
) -> Callable[[Any], bytes]:
    src = _Source()
    fields = src.const(frozenset(name for name, *_ in plans))
    header = src.const(current.header)
    src.emit(0, "def encode(v):")
    src.emit(1, f"if type(v) is not dict or not v.keys() <= {fields}:")
    src.emit(2, "raise _Decline")
    src.emit(1, f"o = [{header}]")
    src.emit(1, "a = o.append")
    for name, plan, has_default, default in plans:
        if has_default:
            src.emit(1, f"x = v.get({name!r}, {src.const(default)})")
        else:
            src.emit(1, f"x = v[{name!r}]")
        _emit_write(src, 1, plan)
    src.emit(1, "return b''.join(o)")
    encoder: Callable[[Any], bytes] = src.compile(
        "encode", _writer_namespace(), f"<codec encode {current.record_name}>"
    )
    return encoder


def _writer_namespace() -> dict[str, Any]:
    """What the code of :func:`_emit_write` refers to."""
    varint, _ = _varint_tables()
    return {
        "_Decline": _Decline,
        "_V": varint,
        "_VL": _VARINT_LIMIT,
        "_big": _write_uvarint_big,
        "_dt": datetime,
        "_EPOCH": _EPOCH,
        "_pack_d": struct.Struct("<d").pack,
        "_pack_f": struct.Struct("<f").pack,
    }


def _compile_field_writer(record_name: str, name: str, plan: _Plan) -> Callable[[Any], bytes]:
    """The body bytes of one field's value (raises for a value the compiled encoder would decline)."""
    src = _Source()
    src.emit(0, "def write(x):")
    src.emit(1, "o = []")
    src.emit(1, "a = o.append")
    _emit_write(src, 1, plan)
    src.emit(1, "return b''.join(o)")
    writer: Callable[[Any], bytes] = src.compile("write", _writer_namespace(),
                                                 f"<codec write {record_name}.{name}>")
    return writer


def _compile_partial(
    current: SchemaVersion, plans: list[tuple[str, _Plan, bool, Any]], variable: tuple[str, ...]
) -> Callable[[tuple[bytes, ...]], Callable[[Any], bytes]]:
    """``make(blocks)``: an encoder of values with exactly the ``variable`` fields, which writes each of them as
    the full encoder does and ``blocks[i]`` (the bytes of the constant fields, header first) around them: block 0
    before the first variable field, block i after the i-th."""
    src = _Source()
    fields = src.const(frozenset(variable))
    src.emit(0, "def make(k):")
    src.emit(1, "def encode(v):")
    src.emit(2, f"if type(v) is not dict or v.keys() != {fields}:")
    src.emit(3, "raise _Decline")
    src.emit(2, "o = [k[0]]")
    src.emit(2, "a = o.append")
    block = 1
    for name, plan, _, _ in plans:
        if name in variable:
            src.emit(2, f"x = v[{name!r}]")
            _emit_write(src, 2, plan)
            src.emit(2, f"a(k[{block}])")
            block += 1
    src.emit(2, "return b''.join(o)")
    src.emit(1, "return encode")
    make: Callable[[tuple[bytes, ...]], Callable[[Any], bytes]] = src.compile(
        "make", _writer_namespace(), f"<codec partial encode {current.record_name}>"
    )
    return make


class _Decline(Exception):
    """The compiled encoder does not handle this value; use the checked path."""


def _emit_long(src: _Source, indent: int) -> None:
    src.emit(indent, "z = (x << 1) ^ (x >> 63)")
    src.emit(indent, "a(_V[z] if z < _VL else _big(z))")


def _emit_write(src: _Source, indent: int, plan: _Plan) -> None:
    kind = plan[0]
    emit = src.emit
    if kind == "string" or kind == "bytes":
        pytype = "str" if kind == "string" else "bytes"
        emit(indent, f"if type(x) is not {pytype}:")
        emit(indent + 1, "raise _Decline")
        if kind == "string":
            emit(indent, "x = x.encode()")
        emit(indent, "z = len(x) << 1")
        emit(indent, "a(_V[z] if z < _VL else _big(z))")
        emit(indent, "a(x)")
    elif kind in ("int", "long"):
        lo, hi = (_INT_MIN, _INT_MAX) if kind == "int" else (_LONG_MIN, _LONG_MAX)
        emit(indent, f"if type(x) is not int or not {lo} <= x <= {hi}:")
        emit(indent + 1, "raise _Decline")
        _emit_long(src, indent)
    elif kind == "timestamp-millis":
        # Same arithmetic as fastavro's prepare_timestamp_millis for aware datetimes.
        emit(indent, "if type(x) is _dt and x.tzinfo is not None:")
        emit(indent + 1, "d = x - _EPOCH")  # TypeError if utcoffset() is None: declined
        emit(indent + 1, "x = (d.days * 86400 + d.seconds) * 1000 + d.microseconds // 1000")
        emit(indent, "elif type(x) is not int:")
        emit(indent + 1, "raise _Decline")
        emit(indent, f"if not {_TS_MIN} <= x <= {_TS_MAX}:")
        emit(indent + 1, "raise _Decline")
        _emit_long(src, indent)
    elif kind == "boolean":
        emit(indent, "if x is True:")
        emit(indent + 1, "a(b'\\x01')")
        emit(indent, "elif x is False:")
        emit(indent + 1, "a(b'\\x00')")
        emit(indent, "else:")
        emit(indent + 1, "raise _Decline")
    elif kind in ("double", "float"):
        emit(indent, "if type(x) is not float and type(x) is not int:")
        emit(indent + 1, "raise _Decline")
        emit(indent, f"a(_pack_{kind[0]}(x))")
    elif kind == "null":
        emit(indent, "if x is not None:")
        emit(indent + 1, "raise _Decline")
    elif kind == "enum":
        varint, _ = _varint_tables()
        table = src.const({symbol: varint[i << 1] for i, symbol in enumerate(plan[1])})
        emit(indent, f"a({table}[x])")  # KeyError (or TypeError) declines
    elif kind == "union":
        _, null_index, inner = plan
        emit(indent, "if x is None:")
        emit(indent + 1, f"a({bytes((null_index << 1,))!r})")
        emit(indent, "else:")
        emit(indent + 1, f"a({bytes(((1 - null_index) << 1,))!r})")
        _emit_write(src, indent + 1, inner)
    elif kind == "array":
        # One block holding every item, then the 0 terminator (what fastavro writes); empty: just 0.
        # Tuples take the checked path: inside a union fastavro reads a tuple as (branch name, value).
        emit(indent, "if type(x) is not list:")
        emit(indent + 1, "raise _Decline")
        emit(indent, "if x:")
        emit(indent + 1, "z = len(x) << 1")
        emit(indent + 1, "a(_V[z] if z < _VL else _big(z))")
        emit(indent + 1, "xs = x")
        emit(indent + 1, "for x in xs:")
        _emit_write(src, indent + 2, plan[1])
        emit(indent, "a(b'\\x00')")
    else:  # pragma: no cover - _plan_type only produces the kinds above
        raise AssertionError(kind)


def _compile_decoder(
    current: SchemaVersion, plans: list[tuple[str, _Plan, bool, Any]]
) -> Callable[[bytes], dict[str, Any]]:
    src = _Source()
    src.emit(0, "def decode(d):")
    src.emit(1, "n_ = len(d)")
    src.emit(1, f"p = {HEADER_SIZE}")
    src.emit(1, "r = {}")
    for name, plan, _, _ in plans:
        _emit_read(src, 1, plan, f"r[{name!r}]")
    src.emit(1, "if p != n_:")
    src.emit(2, "raise _Malformed(f'{n_ - p} trailing bytes after the body')")
    src.emit(1, "return r")
    decoder: Callable[[bytes], dict[str, Any]] = src.compile(
        "decode", _reader_namespace(), f"<codec decode {current.record_name}>"
    )
    return decoder


def _reader_namespace() -> dict[str, Any]:
    """What the code of :func:`_emit_read` refers to."""
    return {
        "_Malformed": _Malformed,
        "_EPOCH": _EPOCH,
        "_td": timedelta,
        "_unpack_d": struct.Struct("<d").unpack_from,
        "_unpack_f": struct.Struct("<f").unpack_from,
    }


def _compile_projection(
    current: SchemaVersion, plans: list[tuple[str, _Plan, bool, Any]], wanted: tuple[str, ...]
) -> Callable[[bytes], tuple[Any, ...]]:
    """The compiled decoder's reads with only ``wanted`` kept, timestamps as checked epoch milliseconds."""
    src = _Source()
    src.emit(0, "def project(d):")
    src.emit(1, "n_ = len(d)")
    src.emit(1, f"p = {HEADER_SIZE}")
    for name, plan, _, _ in plans:
        _emit_read(src, 1, _millis_plan(plan), f"v{wanted.index(name)}" if name in wanted else "_")
    src.emit(1, "if p != n_:")
    src.emit(2, "raise _Malformed(f'{n_ - p} trailing bytes after the body')")
    src.emit(1, f"return ({''.join(f'v{i}, ' for i in range(len(wanted)))})")
    projection: Callable[[bytes], tuple[Any, ...]] = src.compile(
        "project", _reader_namespace(), f"<codec projection {current.record_name}>"
    )
    return projection


def _millis_plan(plan: _Plan) -> _Plan:
    """``plan`` with a timestamp read as its milliseconds (range-checked as the datetime would be)."""
    if plan[0] == "timestamp-millis":
        return ("millis",)
    if plan[0] == "union":
        return (plan[0], plan[1], _millis_plan(plan[2]))
    return plan


# The epoch milliseconds a timestamp-millis value may take: those the decoder's aware datetime can hold.
_MILLIS_MIN = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
_MILLIS_MAX = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


def _emit_read_long(src: _Source, indent: int) -> None:
    """Reads a zig-zag varint (at most 10 bytes, 64-bit range) into ``n``, inline: a call per value cost a fifth
    of decoding an OutcomeBatch (its offsets, timestamps and value lengths take several bytes each)."""
    src.emit(indent, "c = d[p]")
    src.emit(indent, "if c < 128:")
    src.emit(indent + 1, "n = (c >> 1) ^ -(c & 1)")
    src.emit(indent + 1, "p += 1")
    src.emit(indent, "else:")
    # Longer values inline too (offsets, timestamps, lengths past 63): no call and no tuple per value.
    src.emit(indent + 1, "n = c & 127")
    src.emit(indent + 1, "s_ = 7")
    src.emit(indent + 1, "p += 1")
    src.emit(indent + 1, "while True:")
    src.emit(indent + 2, "c = d[p]")
    src.emit(indent + 2, "p += 1")
    src.emit(indent + 2, "n |= (c & 127) << s_")
    src.emit(indent + 2, "if c < 128:")
    src.emit(indent + 3, "break")
    src.emit(indent + 2, "s_ += 7")
    src.emit(indent + 2, "if s_ >= 70:")
    src.emit(indent + 3, "raise _Malformed('varint longer than 10 bytes')")
    src.emit(indent + 1, "if n >> 64:")
    src.emit(indent + 2, "raise _Malformed('varint exceeds 64 bits')")
    src.emit(indent + 1, "n = (n >> 1) ^ -(n & 1)")


def _emit_read(src: _Source, indent: int, plan: _Plan, target: str) -> None:
    kind = plan[0]
    emit = src.emit
    if kind == "string" or kind == "bytes":
        _emit_read_long(src, indent)
        emit(indent, "e = p + n")
        emit(indent, "if n < 0 or e > n_:")
        emit(indent + 1, f"raise _Malformed('bad {kind} length ' + str(n))")
        emit(indent, f"{target} = d[p:e]{'.decode()' if kind == 'string' else ''}")
        emit(indent, "p = e")
    elif kind == "int" or kind == "long":
        _emit_read_long(src, indent)
        if kind == "int":
            emit(indent, f"if not {_INT_MIN} <= n <= {_INT_MAX}:")
            emit(indent + 1, "raise _Malformed('int out of 32-bit range')")
        emit(indent, f"{target} = n")
    elif kind == "timestamp-millis":
        _emit_read_long(src, indent)
        # Same value as fastavro's epoch + timedelta(microseconds=n * 1000), without keyword parsing.
        emit(indent, f"{target} = _EPOCH + _td(0, 0, 0, n) if n else _EPOCH")
    elif kind == "millis":
        _emit_read_long(src, indent)
        emit(indent, f"if not {_MILLIS_MIN} <= n <= {_MILLIS_MAX}:")
        emit(indent + 1, "raise _Malformed('timestamp out of range')")
        emit(indent, f"{target} = n")
    elif kind == "boolean":
        emit(indent, "c = d[p]")
        emit(indent, "p += 1")
        emit(indent, "if c > 1:")
        emit(indent + 1, "raise _Malformed('bad boolean byte')")
        emit(indent, f"{target} = c == 1")
    elif kind in ("double", "float"):
        emit(indent, f"{target} = _unpack_{kind[0]}(d, p)[0]")
        emit(indent, f"p += {8 if kind == 'double' else 4}")
    elif kind == "null":
        emit(indent, f"{target} = None")
    elif kind == "enum":
        symbols = src.const(plan[1])
        _emit_read_long(src, indent)
        emit(indent, f"if not 0 <= n < {len(plan[1])}:")
        emit(indent + 1, "raise _Malformed('bad enum index ' + str(n))")
        emit(indent, f"{target} = {symbols}[n]")
    elif kind == "union":
        _, null_index, inner = plan
        _emit_read_long(src, indent)
        emit(indent, f"if n == {null_index}:")
        emit(indent + 1, f"{target} = None")
        emit(indent, f"elif n == {1 - null_index}:")
        _emit_read(src, indent + 1, inner, target)
        emit(indent, "else:")
        emit(indent + 1, "raise _Malformed('bad union index ' + str(n))")
    elif kind == "array":
        # Blocks until a 0 count; a negative count is followed by the block's size in bytes (Avro spec),
        # which is skipped as fastavro does. Every item takes >= 1 byte, so a count larger than the bytes
        # left is refused before looping (a hostile count cannot make us spin).
        emit(indent, "xs = []")
        emit(indent, "while True:")
        _emit_read_long(src, indent + 1)
        emit(indent + 1, "if n == 0:")
        emit(indent + 2, "break")
        emit(indent + 1, "k_ = n")
        emit(indent + 1, "if k_ < 0:")
        emit(indent + 2, "k_ = -k_")
        _emit_read_long(src, indent + 2)
        emit(indent + 1, "if k_ > n_ - p:")
        emit(indent + 2, "raise _Malformed('bad array block count ' + str(k_))")
        emit(indent + 1, "for _ in range(k_):")
        _emit_read(src, indent + 2, plan[1], "y_")
        emit(indent + 2, "xs.append(y_)")
        emit(indent, f"{target} = xs")
    else:  # pragma: no cover
        raise AssertionError(kind)
