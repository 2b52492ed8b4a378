"""Typed records: what one command writes, the next reads back whole, and anything else is a clear error."""

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from build_engines.errors import InternalError
from build_engines.records import Record, RecordError, read_record
from build_engines.spec import ServingConfig


@dataclass
class Row:
    name: str
    value: float | None


@dataclass(kw_only=True)
class Sample(Record):
    KIND: ClassVar[str] = "sample-for-tests"
    SCHEMA: ClassVar[int] = 3
    WRITER: ClassVar[str] = "make sample"
    model: str
    serving: ServingConfig
    rows: list[Row]
    by_name: dict[str, Row]
    sizes: tuple[int, ...] = ()


def sample() -> Sample:
    return Sample(model="m", serving=ServingConfig(preferred_batch_sizes=(4, 8)), rows=[Row("a", 1.5), Row("b", None)],
                  by_name={"a": Row("a", 2.0)}, sizes=(1, 2))


def test_a_record_round_trips_with_its_nested_types(tmp_path):
    path = sample().write(tmp_path / "s.json")
    back = read_record(path)
    assert back == sample() and back.path == path
    assert isinstance(back.serving, ServingConfig) and back.serving.preferred_batch_sizes == (4, 8)
    assert isinstance(back.rows[0], Row) and back.sizes == (1, 2)
    doc = json.loads(path.read_text())
    assert (doc["kind"], doc["schema"]) == ("sample-for-tests", 3)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema=2), r"schema 2, this version reads schema 3 .*rerun `make sample`"),
    (lambda d: d.update(kind="sweep"), r"is a 'sweep' record"),
    (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]"),
    (lambda d: d.pop("rows"), r"missing field\(s\) \['rows'\]"),
    (lambda d: d["rows"][1].update(value="fast"), r"\.rows\[1\]\.value: expected a number"),
    (lambda d: d["serving"].update(instances=0), r"\.serving: field 'serving.instances' must be >= 1"),

])
def test_a_file_that_does_not_fit_is_an_error_naming_file_and_field(tmp_path, change, message):
    path = sample().write(tmp_path / "s.json")
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match=message) as e:
        Sample.read(path)
    assert str(path) in str(e.value)


def test_unreadable_file_is_an_error(tmp_path):
    bad = tmp_path / "half.json"
    bad.write_text('{"kind": "sample-for-tests", "sch')
    with pytest.raises(RecordError, match="half.json: cannot read"):
        read_record(bad)


def test_a_record_class_declaring_a_type_we_cannot_read_is_our_bug():
    @dataclass(kw_only=True)
    class Odd(Record):
        KIND: ClassVar[str] = "odd-for-tests"
        when: complex

    with pytest.raises(InternalError, match="cannot decode"):
        Odd.from_dict({"kind": "odd-for-tests", "schema": 1, "when": 1})


def test_any_record_is_read_as_its_kind_and_a_foreign_file_is_refused(tmp_path):
    assert isinstance(read_record(sample().write(tmp_path / "s.json")), Sample)
    (tmp_path / "other.json").write_text('{"kind": "nothing-we-know", "schema": 1}')
    with pytest.raises(RecordError, match="other.json is not a records file of this project"):
        read_record(tmp_path / "other.json")
