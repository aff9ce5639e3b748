from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PassPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PASS_PHASE_UNSPECIFIED: _ClassVar[PassPhase]
    PASS_PHASE_CONNECTING: _ClassVar[PassPhase]
    PASS_PHASE_TRANSFERRING: _ClassVar[PassPhase]
    PASS_PHASE_RECONNECTING: _ClassVar[PassPhase]
    PASS_PHASE_FINISHED: _ClassVar[PassPhase]
    PASS_PHASE_FAILED: _ClassVar[PassPhase]
PASS_PHASE_UNSPECIFIED: PassPhase
PASS_PHASE_CONNECTING: PassPhase
PASS_PHASE_TRANSFERRING: PassPhase
PASS_PHASE_RECONNECTING: PassPhase
PASS_PHASE_FINISHED: PassPhase
PASS_PHASE_FAILED: PassPhase

class PassRequest(_message.Message):
    __slots__ = ("migration_id", "receiver_address", "source", "exclude_rules", "delete", "checksum", "include_mounts", "bwlimit_kbps", "retry_for_seconds", "workers", "progress_interval_ms", "credentials", "streams")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_RULES_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_MOUNTS_FIELD_NUMBER: _ClassVar[int]
    BWLIMIT_KBPS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FOR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    receiver_address: str
    source: bytes
    exclude_rules: _containers.RepeatedScalarFieldContainer[bytes]
    delete: bool
    checksum: bool
    include_mounts: _containers.RepeatedScalarFieldContainer[bytes]
    bwlimit_kbps: int
    retry_for_seconds: float
    workers: int
    progress_interval_ms: int
    credentials: ReceiverCredentials
    streams: int
    def __init__(self, migration_id: _Optional[str] = ..., receiver_address: _Optional[str] = ..., source: _Optional[bytes] = ..., exclude_rules: _Optional[_Iterable[bytes]] = ..., delete: _Optional[bool] = ..., checksum: _Optional[bool] = ..., include_mounts: _Optional[_Iterable[bytes]] = ..., bwlimit_kbps: _Optional[int] = ..., retry_for_seconds: _Optional[float] = ..., workers: _Optional[int] = ..., progress_interval_ms: _Optional[int] = ..., credentials: _Optional[_Union[ReceiverCredentials, _Mapping]] = ..., streams: _Optional[int] = ...) -> None: ...

class ReceiverCredentials(_message.Message):
    __slots__ = ("insecure", "ca_pem", "client_cert_pem", "client_key_pem", "token", "server_name", "data_proxy")
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_PROXY_FIELD_NUMBER: _ClassVar[int]
    insecure: bool
    ca_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes
    token: str
    server_name: str
    data_proxy: str
    def __init__(self, insecure: _Optional[bool] = ..., ca_pem: _Optional[bytes] = ..., client_cert_pem: _Optional[bytes] = ..., client_key_pem: _Optional[bytes] = ..., token: _Optional[str] = ..., server_name: _Optional[str] = ..., data_proxy: _Optional[str] = ...) -> None: ...

class PassProgress(_message.Message):
    __slots__ = ("phase", "attempt", "elapsed_seconds", "files_scanned", "bytes_scanned", "files_transferred", "files_skipped", "bytes_read", "bytes_sent", "rate_bytes_per_s", "wire_bytes_per_s", "bwlimit_kbps", "result", "error")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FILES_SCANNED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SCANNED_FIELD_NUMBER: _ClassVar[int]
    FILES_TRANSFERRED_FIELD_NUMBER: _ClassVar[int]
    FILES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    RATE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    BWLIMIT_KBPS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    phase: PassPhase
    attempt: int
    elapsed_seconds: float
    files_scanned: int
    bytes_scanned: int
    files_transferred: int
    files_skipped: int
    bytes_read: int
    bytes_sent: int
    rate_bytes_per_s: float
    wire_bytes_per_s: float
    bwlimit_kbps: int
    result: PassResult
    error: PassError
    def __init__(self, phase: _Optional[_Union[PassPhase, str]] = ..., attempt: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ..., files_scanned: _Optional[int] = ..., bytes_scanned: _Optional[int] = ..., files_transferred: _Optional[int] = ..., files_skipped: _Optional[int] = ..., bytes_read: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., rate_bytes_per_s: _Optional[float] = ..., wire_bytes_per_s: _Optional[float] = ..., bwlimit_kbps: _Optional[int] = ..., result: _Optional[_Union[PassResult, _Mapping]] = ..., error: _Optional[_Union[PassError, _Mapping]] = ...) -> None: ...

class PassResult(_message.Message):
    __slots__ = ("files", "dirs", "symlinks", "devices", "fifos", "hardlinks", "sockets_skipped", "excluded", "bytes_total", "bytes_sent", "bytes_read", "bytes_reused", "files_skipped", "files_transferred", "metadata_applied", "deleted", "changed_during_copy", "changed_during_copy_omitted", "errors", "errors_omitted", "resumed", "seconds", "streams", "placement_retries")
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIRS_FIELD_NUMBER: _ClassVar[int]
    SYMLINKS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    FIFOS_FIELD_NUMBER: _ClassVar[int]
    HARDLINKS_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_REUSED_FIELD_NUMBER: _ClassVar[int]
    FILES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FILES_TRANSFERRED_FIELD_NUMBER: _ClassVar[int]
    METADATA_APPLIED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_DURING_COPY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_DURING_COPY_OMITTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_RETRIES_FIELD_NUMBER: _ClassVar[int]
    files: int
    dirs: int
    symlinks: int
    devices: int
    fifos: int
    hardlinks: int
    sockets_skipped: int
    excluded: int
    bytes_total: int
    bytes_sent: int
    bytes_read: int
    bytes_reused: int
    files_skipped: int
    files_transferred: int
    metadata_applied: int
    deleted: int
    changed_during_copy: _containers.RepeatedScalarFieldContainer[bytes]
    changed_during_copy_omitted: int
    errors: _containers.RepeatedScalarFieldContainer[bytes]
    errors_omitted: int
    resumed: bool
    seconds: float
    streams: int
    placement_retries: int
    def __init__(self, files: _Optional[int] = ..., dirs: _Optional[int] = ..., symlinks: _Optional[int] = ..., devices: _Optional[int] = ..., fifos: _Optional[int] = ..., hardlinks: _Optional[int] = ..., sockets_skipped: _Optional[int] = ..., excluded: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_read: _Optional[int] = ..., bytes_reused: _Optional[int] = ..., files_skipped: _Optional[int] = ..., files_transferred: _Optional[int] = ..., metadata_applied: _Optional[int] = ..., deleted: _Optional[int] = ..., changed_during_copy: _Optional[_Iterable[bytes]] = ..., changed_during_copy_omitted: _Optional[int] = ..., errors: _Optional[_Iterable[bytes]] = ..., errors_omitted: _Optional[int] = ..., resumed: _Optional[bool] = ..., seconds: _Optional[float] = ..., streams: _Optional[int] = ..., placement_retries: _Optional[int] = ...) -> None: ...

class PassError(_message.Message):
    __slots__ = ("code", "message", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retryable: bool
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class CancelPassRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class CancelPassResponse(_message.Message):
    __slots__ = ("was_running", "stopped")
    WAS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    was_running: bool
    stopped: bool
    def __init__(self, was_running: _Optional[bool] = ..., stopped: _Optional[bool] = ...) -> None: ...

class SetBandwidthRequest(_message.Message):
    __slots__ = ("bwlimit_kbps",)
    BWLIMIT_KBPS_FIELD_NUMBER: _ClassVar[int]
    bwlimit_kbps: int
    def __init__(self, bwlimit_kbps: _Optional[int] = ...) -> None: ...

class SetBandwidthResponse(_message.Message):
    __slots__ = ("applied",)
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    def __init__(self, applied: _Optional[bool] = ...) -> None: ...

class AgentPingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentPingResponse(_message.Message):
    __slots__ = ("agent_version", "protocol_versions", "busy", "migration_id", "hostname")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    protocol_versions: _containers.RepeatedScalarFieldContainer[int]
    busy: bool
    migration_id: str
    hostname: str
    def __init__(self, agent_version: _Optional[str] = ..., protocol_versions: _Optional[_Iterable[int]] = ..., busy: _Optional[bool] = ..., migration_id: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class SourceFactsRequest(_message.Message):
    __slots__ = ("source", "state_dir")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    source: bytes
    state_dir: str
    def __init__(self, source: _Optional[bytes] = ..., state_dir: _Optional[str] = ...) -> None: ...

class SourceFactsResponse(_message.Message):
    __slots__ = ("facts_json",)
    FACTS_JSON_FIELD_NUMBER: _ClassVar[int]
    facts_json: str
    def __init__(self, facts_json: _Optional[str] = ...) -> None: ...
