"""Typed records: every file one command writes and another reads back (build reports, sweeps, tunes,
campaigns, ...) is a dataclass with a kind and a schema version, written and read through
``to_dict``/``from_dict``. Reading checks the kind, the schema and every field (names and types), so
a file from another version or another tool is an error that names the file and the field, never a
silently skipped or half-read dict.

Subclasses declare their fields with ordinary annotations; nested dataclasses, lists, tuples, dicts
and optionals are decoded from those annotations.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from build_engines.errors import InternalError, UserError

R = TypeVar("R", bound="Record")
_KINDS: dict[str, type["Record"]] = {}


class RecordError(UserError):
    """A records file that cannot be used: unreadable, another kind, another schema, a bad field."""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(kw_only=True)
class Record:
    KIND: ClassVar[str] = ""
    SCHEMA: ClassVar[int] = 1
    #: what to run to write this kind of file again (said when one cannot be read)
    WRITER: ClassVar[str] = ""

    created: str = dataclasses.field(default_factory=now)
    environment: dict = dataclasses.field(default_factory=dict)
    path: Path | None = dataclasses.field(default=None, compare=False, repr=False)   # where it was read from

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.__dict__.get("KIND"):
            _KINDS[cls.KIND] = cls

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "path"}
        return {"kind": self.KIND, "schema": self.SCHEMA, **body}

    @classmethod
    def from_dict(cls: type[R], doc: Any, path: Path | None = None) -> R:
        where = str(path) if path else cls.KIND
        if not isinstance(doc, dict):
            raise RecordError(f"{where}: not a {cls.KIND} record (a JSON object was expected)")
        if doc.get("kind") != cls.KIND:
            raise RecordError(f"{where} is a {doc.get('kind')!r} record, not {cls.KIND!r}")
        if doc.get("schema") != cls.SCHEMA:
            writer = cls.WRITER.replace("<model>", str(doc.get("model") or "<model>"))
            again = f"; rerun `{writer}` to write it again" if writer else ""
            raise RecordError(f"{where}: {cls.KIND} schema {doc.get('schema')!r}, this version reads schema "
                              f"{cls.SCHEMA} (written by another version){again}, or move the file away")
        body = {k: v for k, v in doc.items() if k not in ("kind", "schema")}
        rec = _decode(cls, body, where)
        rec.path = path
        return rec

    def write(self, path: Path) -> Path:
        """Atomically: a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        self.path = path
        return path

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        return cls.from_dict(_load(path), Path(path))


def _load(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: cannot read this records file ({type(e).__name__}: {e})") from e


def read_record(path: Path) -> Record:
    """Any records file of a kind this process knows, as its typed record; every failure names the file."""
    doc = _load(path)
    kind = doc.get("kind") if isinstance(doc, dict) else None
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RecordError(f"{path} is not a records file of this project (kind {kind!r}; known: "
                          f"{', '.join(sorted(_KINDS))}); move it out of {Path(path).parent}")
    return cls.from_dict(doc, Path(path))


def plain(o: Any) -> Any:
    """JSON-ready: dataclasses to dicts, tuples to lists, paths to strings, numpy to Python."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: plain(getattr(o, f.name)) for f in dataclasses.fields(o) if f.name != "path"}
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    if hasattr(o, "tolist"):       # numpy arrays and scalars
        return o.tolist()
    return o


def _bad(where: str, want: str, value: Any) -> RecordError:
    return RecordError(f"{where}: expected {want}, got {type(value).__name__} {str(value)[:60]!r}")


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _bad(where, str(tp), value)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _decode(rest[0], value, where)
        for a in rest:                       # e.g. int | str: the first that fits
            try:
                return _decode(a, value, where)
            except RecordError:
                continue
        raise _bad(where, str(tp), value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(where, f"an object ({tp.__name__})", value)
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init and f.name != "path"}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise RecordError(f"{where}: unknown field(s) {unknown} for {tp.__name__}")
        missing = [n for n, f in fields.items() if n not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise RecordError(f"{where}: missing field(s) {missing} of {tp.__name__}")
        try:
            return tp(**{n: _decode(hints[n], v, f"{where}.{n}") for n, v in value.items()})
        except (TypeError, ValueError, UserError) as e:    # the dataclass's own validation
            raise RecordError(f"{where}: {e}") from e
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        item = args[0] if args else Any
        out = [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        vt = args[1] if args else Any
        return {k: _decode(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Path:
        if not isinstance(value, str):
            raise _bad(where, "a path", value)
        return Path(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, "a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "an integer", value)
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise _bad(where, tp.__name__, value)
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as e:
            raise RecordError(f"{where}: {e}") from e
    raise InternalError(f"{where}: cannot decode type {tp!r}: a record class declares a field type records.py "
                        "does not read; report this as a bug")
