from __future__ import annotations

import confide.errors as errors


def test_every_error_class_has_a_distinct_exit_code() -> None:
    classes = [getattr(errors, n) for n in errors.__all__]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes)
    assert all(issubclass(c, errors.ConfideError) for c in classes)


def test_all_is_sorted() -> None:
    assert errors.__all__ == sorted(errors.__all__)


def test_parse_error_names_field_and_offset() -> None:
    exc = errors.ParseError("too short", structure="quote", field="header.version", offset=0x10)
    assert "header.version" in str(exc)
    assert "0x10" in str(exc)
