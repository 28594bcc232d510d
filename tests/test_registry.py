import pytest

from ctal_bench.errors import UserError
from ctal_bench.registry import Registry


def make():
    reg = Registry("model")
    for name in ("ctal", "late_fusion", "lmf", "mult", "tfn", "model10", "model2"):
        reg.add(name, object())
    return reg


def test_register_by_decorator_and_lookup():
    reg = Registry("model")

    @reg.register("thing")
    class Thing:
        pass

    assert reg.get("thing") is Thing
    assert "thing" in reg and len(reg) == 1


def test_duplicate_name_is_an_error():
    reg = make()
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("ctal", object())


def test_unknown_name_suggests_closest():
    with pytest.raises(UserError, match=r"unknown model 'late_fuson'; did you mean late_fusion\?"):
        make().get("late_fuson")


def test_unknown_name_without_close_match_lists_all():
    with pytest.raises(UserError, match="known: ctal, late_fusion"):
        make().get("zzzzzz")


def test_listing_is_natural_and_supports_wildcards():
    reg = make()
    assert reg.names("model*") == ["model2", "model10"]
    assert reg.names("l*") == ["late_fusion", "lmf"]
