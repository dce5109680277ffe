import pytest
import sqlalchemy as sa

from support.adapters.postgres.driver import compile_for_driver

_TABLE = sa.table("facts", sa.column("id"), sa.column("score"))


def test_named_parameters_are_passed_in_the_order_the_sql_numbers_them() -> None:
    statement = compile_for_driver(
        sa.select(_TABLE.c.id).where(_TABLE.c.score > sa.bindparam("floor"), _TABLE.c.id == sa.bindparam("id"))
    )
    assert "$1" in statement.sql
    assert "$2" in statement.sql
    assert statement.names == ("floor", "id")
    assert statement.arguments({"id": 7, "floor": 0.5}) == [0.5, 7]


def test_a_python_constant_is_refused_when_the_statement_is_compiled() -> None:
    # ``1 - score`` binds 1 as an anonymous parameter that no caller passes; it must fail at import, not in a turn.
    with pytest.raises(ValueError, match="literal_column"):
        compile_for_driver(sa.select((1 - _TABLE.c.score).label("distance")))
    written = compile_for_driver(sa.select((sa.literal_column("1") - _TABLE.c.score).label("distance")))
    assert written.names == ()
