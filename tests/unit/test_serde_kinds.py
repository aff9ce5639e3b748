"""The model's entry kinds are the protocol's, value for value: common/serde.py writes ``Kind`` into
``pb.Entry.kind`` without a lookup (a hot path), which is only right while both enums agree."""
from cvmigrate.common.model import Kind
from cvmigrate.proto import transfer_pb2 as pb


def test_model_kinds_mirror_the_protocol() -> None:
    protocol = {name: value for name, value in pb.Kind.items() if value != pb.KIND_UNSPECIFIED}
    assert {k.name: int(k) for k in Kind} == protocol
