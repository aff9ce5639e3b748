from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    REGULAR: _ClassVar[Kind]
    DIRECTORY: _ClassVar[Kind]
    SYMLINK: _ClassVar[Kind]
    CHARDEV: _ClassVar[Kind]
    BLOCKDEV: _ClassVar[Kind]
    FIFO: _ClassVar[Kind]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RAW: _ClassVar[Codec]
    ZSTD: _ClassVar[Codec]
    ZSTD_STREAM: _ClassVar[Codec]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    SKIP: _ClassVar[Action]
    APPLIED: _ClassVar[Action]
    NEED: _ClassVar[Action]
    DEFERRED: _ClassVar[Action]
KIND_UNSPECIFIED: Kind
REGULAR: Kind
DIRECTORY: Kind
SYMLINK: Kind
CHARDEV: Kind
BLOCKDEV: Kind
FIFO: Kind
RAW: Codec
ZSTD: Codec
ZSTD_STREAM: Codec
ACTION_UNSPECIFIED: Action
SKIP: Action
APPLIED: Action
NEED: Action
DEFERRED: Action

class FixupsRequest(_message.Message):
    __slots__ = ("source_filesystems_json", "chroot_tools", "skip", "source_facts_json", "keep_static_ip")
    SOURCE_FILESYSTEMS_JSON_FIELD_NUMBER: _ClassVar[int]
    CHROOT_TOOLS_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FACTS_JSON_FIELD_NUMBER: _ClassVar[int]
    KEEP_STATIC_IP_FIELD_NUMBER: _ClassVar[int]
    source_filesystems_json: str
    chroot_tools: bool
    skip: _containers.RepeatedScalarFieldContainer[str]
    source_facts_json: str
    keep_static_ip: bool
    def __init__(self, source_filesystems_json: _Optional[str] = ..., chroot_tools: _Optional[bool] = ..., skip: _Optional[_Iterable[str]] = ..., source_facts_json: _Optional[str] = ..., keep_static_ip: _Optional[bool] = ...) -> None: ...

class FixupsResponse(_message.Message):
    __slots__ = ("ok", "skipped", "summary", "diffs", "report_json")
    OK_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DIFFS_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    skipped: bool
    summary: str
    diffs: str
    report_json: str
    def __init__(self, ok: _Optional[bool] = ..., skipped: _Optional[bool] = ..., summary: _Optional[str] = ..., diffs: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("receiver_version", "protocol_versions", "busy", "cores", "max_streams")
    RECEIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    receiver_version: str
    protocol_versions: _containers.RepeatedScalarFieldContainer[int]
    busy: bool
    cores: int
    max_streams: int
    def __init__(self, receiver_version: _Optional[str] = ..., protocol_versions: _Optional[_Iterable[int]] = ..., busy: _Optional[bool] = ..., cores: _Optional[int] = ..., max_streams: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "entries", "data", "done", "packed_entries")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PACKED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    entries: EntryBatch
    data: DataBatch
    done: Done
    packed_entries: bytes
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., entries: _Optional[_Union[EntryBatch, _Mapping]] = ..., data: _Optional[_Union[DataBatch, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., packed_entries: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "agent_version", "source", "options", "pass_id", "shard", "shard_count", "placement_attempt")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PASS_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    agent_version: str
    source: SourceIdentity
    options: Options
    pass_id: str
    shard: int
    shard_count: int
    placement_attempt: int
    def __init__(self, protocol_version: _Optional[int] = ..., agent_version: _Optional[str] = ..., source: _Optional[_Union[SourceIdentity, _Mapping]] = ..., options: _Optional[_Union[Options, _Mapping]] = ..., pass_id: _Optional[str] = ..., shard: _Optional[int] = ..., shard_count: _Optional[int] = ..., placement_attempt: _Optional[int] = ...) -> None: ...

class SourceIdentity(_message.Message):
    __slots__ = ("hostname", "machine_id", "root", "migration_id")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    machine_id: str
    root: bytes
    migration_id: str
    def __init__(self, hostname: _Optional[str] = ..., machine_id: _Optional[str] = ..., root: _Optional[bytes] = ..., migration_id: _Optional[str] = ...) -> None: ...

class Options(_message.Message):
    __slots__ = ("delete", "exclude_rules", "checksum", "chunk_size")
    DELETE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_RULES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    delete: bool
    exclude_rules: _containers.RepeatedScalarFieldContainer[str]
    checksum: bool
    chunk_size: int
    def __init__(self, delete: _Optional[bool] = ..., exclude_rules: _Optional[_Iterable[str]] = ..., checksum: _Optional[bool] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class Xattr(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    value: bytes
    def __init__(self, name: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class Fingerprint(_message.Message):
    __slots__ = ("dev", "ino", "ctime_ns")
    DEV_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    dev: int
    ino: int
    ctime_ns: int
    def __init__(self, dev: _Optional[int] = ..., ino: _Optional[int] = ..., ctime_ns: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "path", "kind", "mode", "uid", "gid", "mtime_ns", "size", "link_target", "rdev", "hardlink_to", "xattrs", "source")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    HARDLINK_TO_FIELD_NUMBER: _ClassVar[int]
    XATTRS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    path: bytes
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    link_target: bytes
    rdev: int
    hardlink_to: bytes
    xattrs: _containers.RepeatedCompositeFieldContainer[Xattr]
    source: Fingerprint
    def __init__(self, id: _Optional[int] = ..., path: _Optional[bytes] = ..., kind: _Optional[_Union[Kind, str]] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., size: _Optional[int] = ..., link_target: _Optional[bytes] = ..., rdev: _Optional[int] = ..., hardlink_to: _Optional[bytes] = ..., xattrs: _Optional[_Iterable[_Union[Xattr, _Mapping]]] = ..., source: _Optional[_Union[Fingerprint, _Mapping]] = ...) -> None: ...

class EntryBatch(_message.Message):
    __slots__ = ("entries", "completed_dirs", "incomplete_dirs", "present")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_DIRS_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_DIRS_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    completed_dirs: _containers.RepeatedScalarFieldContainer[bytes]
    incomplete_dirs: _containers.RepeatedScalarFieldContainer[bytes]
    present: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., completed_dirs: _Optional[_Iterable[bytes]] = ..., incomplete_dirs: _Optional[_Iterable[bytes]] = ..., present: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChunkRef(_message.Message):
    __slots__ = ("file_id", "offset", "length", "hash", "reuse")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    REUSE_FIELD_NUMBER: _ClassVar[int]
    file_id: int
    offset: int
    length: int
    hash: bytes
    reuse: bool
    def __init__(self, file_id: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., hash: _Optional[bytes] = ..., reuse: _Optional[bool] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("codec", "raw_length", "data", "chunks")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    codec: Codec
    raw_length: int
    data: bytes
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    def __init__(self, codec: _Optional[_Union[Codec, str]] = ..., raw_length: _Optional[int] = ..., data: _Optional[bytes] = ..., chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ...) -> None: ...

class FileEnd(_message.Message):
    __slots__ = ("file_id", "size", "hash", "restat", "mtime_ns", "source")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    RESTAT_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    file_id: int
    size: int
    hash: bytes
    restat: bool
    mtime_ns: int
    source: Fingerprint
    def __init__(self, file_id: _Optional[int] = ..., size: _Optional[int] = ..., hash: _Optional[bytes] = ..., restat: _Optional[bool] = ..., mtime_ns: _Optional[int] = ..., source: _Optional[_Union[Fingerprint, _Mapping]] = ...) -> None: ...

class FileAbort(_message.Message):
    __slots__ = ("file_id", "reason", "changed_during_copy", "retrying")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHANGED_DURING_COPY_FIELD_NUMBER: _ClassVar[int]
    RETRYING_FIELD_NUMBER: _ClassVar[int]
    file_id: int
    reason: str
    changed_during_copy: bool
    retrying: bool
    def __init__(self, file_id: _Optional[int] = ..., reason: _Optional[str] = ..., changed_during_copy: _Optional[bool] = ..., retrying: _Optional[bool] = ...) -> None: ...

class DataBatch(_message.Message):
    __slots__ = ("segments", "ends", "aborts")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    ABORTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    ends: _containers.RepeatedCompositeFieldContainer[FileEnd]
    aborts: _containers.RepeatedCompositeFieldContainer[FileAbort]
    def __init__(self, segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., ends: _Optional[_Iterable[_Union[FileEnd, _Mapping]]] = ..., aborts: _Optional[_Iterable[_Union[FileAbort, _Mapping]]] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("entries_sent",)
    ENTRIES_SENT_FIELD_NUMBER: _ClassVar[int]
    entries_sent: int
    def __init__(self, entries_sent: _Optional[int] = ...) -> None: ...

class ReceiverMessage(_message.Message):
    __slots__ = ("welcome", "decisions", "committed", "summary")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    decisions: Decisions
    committed: Committed
    summary: Summary
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., decisions: _Optional[_Union[Decisions, _Mapping]] = ..., committed: _Optional[_Union[Committed, _Mapping]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "receiver_version", "protocol_version", "max_inflight_bytes", "max_pending_entries", "max_message_bytes", "resumed", "max_window_log", "cores")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_LOG_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    receiver_version: str
    protocol_version: int
    max_inflight_bytes: int
    max_pending_entries: int
    max_message_bytes: int
    resumed: bool
    max_window_log: int
    cores: int
    def __init__(self, session_id: _Optional[str] = ..., receiver_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., max_inflight_bytes: _Optional[int] = ..., max_pending_entries: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., resumed: _Optional[bool] = ..., max_window_log: _Optional[int] = ..., cores: _Optional[int] = ...) -> None: ...

class ChunkHave(_message.Message):
    __slots__ = ("offset", "hash", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    hash: bytes
    length: int
    def __init__(self, offset: _Optional[int] = ..., hash: _Optional[bytes] = ..., length: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("id", "action", "have", "cdc_avg")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    CDC_AVG_FIELD_NUMBER: _ClassVar[int]
    id: int
    action: Action
    have: _containers.RepeatedCompositeFieldContainer[ChunkHave]
    cdc_avg: int
    def __init__(self, id: _Optional[int] = ..., action: _Optional[_Union[Action, str]] = ..., have: _Optional[_Iterable[_Union[ChunkHave, _Mapping]]] = ..., cdc_avg: _Optional[int] = ...) -> None: ...

class Decisions(_message.Message):
    __slots__ = ("decisions", "skip", "applied")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    skip: _containers.RepeatedScalarFieldContainer[int]
    applied: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., skip: _Optional[_Iterable[int]] = ..., applied: _Optional[_Iterable[int]] = ...) -> None: ...

class Committed(_message.Message):
    __slots__ = ("ids", "bytes", "retries")
    IDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    bytes: int
    retries: _containers.RepeatedCompositeFieldContainer[FileRetry]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., bytes: _Optional[int] = ..., retries: _Optional[_Iterable[_Union[FileRetry, _Mapping]]] = ...) -> None: ...

class FileRetry(_message.Message):
    __slots__ = ("file_id", "have", "reason", "cdc_avg")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CDC_AVG_FIELD_NUMBER: _ClassVar[int]
    file_id: int
    have: _containers.RepeatedCompositeFieldContainer[ChunkHave]
    reason: str
    cdc_avg: int
    def __init__(self, file_id: _Optional[int] = ..., have: _Optional[_Iterable[_Union[ChunkHave, _Mapping]]] = ..., reason: _Optional[str] = ..., cdc_avg: _Optional[int] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("entries_committed", "deleted", "bytes_written", "bytes_reused", "hash_mismatches", "errors")
    ENTRIES_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_REUSED_FIELD_NUMBER: _ClassVar[int]
    HASH_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    entries_committed: int
    deleted: int
    bytes_written: int
    bytes_reused: int
    hash_mismatches: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entries_committed: _Optional[int] = ..., deleted: _Optional[int] = ..., bytes_written: _Optional[int] = ..., bytes_reused: _Optional[int] = ..., hash_mismatches: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class FinalizeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FinalizeResponse(_message.Message):
    __slots__ = ("temporary_files_removed", "state_removed")
    TEMPORARY_FILES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    STATE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    temporary_files_removed: int
    state_removed: bool
    def __init__(self, temporary_files_removed: _Optional[int] = ..., state_removed: _Optional[bool] = ...) -> None: ...
