from cvmigrate.proto import transfer_pb2 as _transfer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlockAgentMessage(_message.Message):
    __slots__ = ("hello", "data", "done")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    hello: BlockHello
    data: BlockData
    done: BlockDone
    def __init__(self, hello: _Optional[_Union[BlockHello, _Mapping]] = ..., data: _Optional[_Union[BlockData, _Mapping]] = ..., done: _Optional[_Union[BlockDone, _Mapping]] = ...) -> None: ...

class BlockHello(_message.Message):
    __slots__ = ("protocol_version", "agent_version", "source", "source_size", "block_size", "target_device", "consistency", "used_only")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TARGET_DEVICE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    USED_ONLY_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    agent_version: str
    source: _transfer_pb2.SourceIdentity
    source_size: int
    block_size: int
    target_device: str
    consistency: str
    used_only: bool
    def __init__(self, protocol_version: _Optional[int] = ..., agent_version: _Optional[str] = ..., source: _Optional[_Union[_transfer_pb2.SourceIdentity, _Mapping]] = ..., source_size: _Optional[int] = ..., block_size: _Optional[int] = ..., target_device: _Optional[str] = ..., consistency: _Optional[str] = ..., used_only: _Optional[bool] = ...) -> None: ...

class BlockSegment(_message.Message):
    __slots__ = ("index", "codec", "raw_length", "data", "hash")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    index: int
    codec: _transfer_pb2.Codec
    raw_length: int
    data: bytes
    hash: bytes
    def __init__(self, index: _Optional[int] = ..., codec: _Optional[_Union[_transfer_pb2.Codec, str]] = ..., raw_length: _Optional[int] = ..., data: _Optional[bytes] = ..., hash: _Optional[bytes] = ...) -> None: ...

class ZeroRun(_message.Message):
    __slots__ = ("first", "count")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    first: int
    count: int
    def __init__(self, first: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class BlockData(_message.Message):
    __slots__ = ("blocks", "zeros")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ZEROS_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockSegment]
    zeros: _containers.RepeatedCompositeFieldContainer[ZeroRun]
    def __init__(self, blocks: _Optional[_Iterable[_Union[BlockSegment, _Mapping]]] = ..., zeros: _Optional[_Iterable[_Union[ZeroRun, _Mapping]]] = ...) -> None: ...

class BlockDone(_message.Message):
    __slots__ = ("blocks_total", "manifest")
    BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    blocks_total: int
    manifest: bytes
    def __init__(self, blocks_total: _Optional[int] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class BlockReceiverMessage(_message.Message):
    __slots__ = ("welcome", "hashes", "committed", "summary")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    welcome: BlockWelcome
    hashes: TargetHashes
    committed: BlockCommitted
    summary: BlockSummary
    def __init__(self, welcome: _Optional[_Union[BlockWelcome, _Mapping]] = ..., hashes: _Optional[_Union[TargetHashes, _Mapping]] = ..., committed: _Optional[_Union[BlockCommitted, _Mapping]] = ..., summary: _Optional[_Union[BlockSummary, _Mapping]] = ...) -> None: ...

class BlockWelcome(_message.Message):
    __slots__ = ("session_id", "receiver_version", "protocol_version", "max_inflight_bytes", "target_size", "resumed", "journal_blocks")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TARGET_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    receiver_version: str
    protocol_version: int
    max_inflight_bytes: int
    target_size: int
    resumed: bool
    journal_blocks: int
    def __init__(self, session_id: _Optional[str] = ..., receiver_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., max_inflight_bytes: _Optional[int] = ..., target_size: _Optional[int] = ..., resumed: _Optional[bool] = ..., journal_blocks: _Optional[int] = ...) -> None: ...

class TargetHashes(_message.Message):
    __slots__ = ("first", "hashes")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    first: int
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, first: _Optional[int] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BlockCommitted(_message.Message):
    __slots__ = ("bytes", "blocks")
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    blocks: int
    def __init__(self, bytes: _Optional[int] = ..., blocks: _Optional[int] = ...) -> None: ...

class BlockSummary(_message.Message):
    __slots__ = ("blocks_written", "blocks_zeroed", "bytes_written", "blocks_hashed", "manifest_ok")
    BLOCKS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_ZEROED_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_HASHED_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_OK_FIELD_NUMBER: _ClassVar[int]
    blocks_written: int
    blocks_zeroed: int
    bytes_written: int
    blocks_hashed: int
    manifest_ok: bool
    def __init__(self, blocks_written: _Optional[int] = ..., blocks_zeroed: _Optional[int] = ..., bytes_written: _Optional[int] = ..., blocks_hashed: _Optional[int] = ..., manifest_ok: _Optional[bool] = ...) -> None: ...
