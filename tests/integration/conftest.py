from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig
from tests.helpers.wire import serving


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real receiver on 127.0.0.1:0 serving tmp_path/dst; yields (address, root)."""
    root = tmp_path / "dst"
    root.mkdir()
    yield from serving(create_server(ReceiverConfig(root=str(root)), "127.0.0.1:0"), root)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """An empty source directory, tmp_path/src."""
    path = tmp_path / "src"
    path.mkdir()
    return path
