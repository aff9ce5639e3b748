import pytest

from cvmigrate.common.errors import UnsafePath
from cvmigrate.common.paths import join, parent_of, split_relpath


@pytest.mark.parametrize("path,parts", [
    (b"", ()),
    (b"a", (b"a",)),
    (b"a/b/c", (b"a", b"b", b"c")),
    (b"\xff\xfe/x", (b"\xff\xfe", b"x")),
    (b"a" * 255, (b"a" * 255,)),
    (b"..a/.b/...", (b"..a", b".b", b"...")),
])
def test_valid(path, parts):
    assert split_relpath(path) == parts


@pytest.mark.parametrize("path,why", [
    (b"/etc/passwd", "absolute"),
    (b"..", "'..'"),
    (b"../x", "'..'"),
    (b"a/../../x", "'..'"),
    (b"a/./b", "'.'"),
    (b"a//b", "''"),
    (b"a/", "''"),
    (b"a\0b", "NUL"),
    (b"a" * 256, "longer than 255"),
    (b"a/" * 2100 + b"a", "longer than 4095"),
])
def test_refused(path, why):
    with pytest.raises(UnsafePath) as info:
        split_relpath(path)
    assert why in str(info.value)


def test_str_refused():
    with pytest.raises(UnsafePath):
        split_relpath("a/b")  # type: ignore[arg-type]


def test_join_and_parent():
    assert join(b"", b"x") == b"x"
    assert join(b"a/b", b"x") == b"a/b/x"
    assert parent_of(b"a/b/x") == b"a/b"
    assert parent_of(b"x") == b""
