import pytest

from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig


@pytest.fixture
def receiver(tmp_path):
    """A real receiver on 127.0.0.1:0 serving tmp_path/dst; yields (address, root)."""
    root = tmp_path / "dst"
    root.mkdir()
    handle = create_server(ReceiverConfig(root=str(root)), "127.0.0.1:0")
    try:
        yield f"127.0.0.1:{handle.port}", root
    finally:
        handle.stop(grace=1)
