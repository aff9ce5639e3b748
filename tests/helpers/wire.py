"""Receivers in the test process, and raw data-plane streams to them.

``serving`` (``serving_secured`` with TLS and a token) is the body of every fixture that yields a
receiver's address and root; ``push_once`` is one in-process pass to it, without the retry loop (a
failure is the test's to see).  Hostile-input and admission tests send hand-made ``AgentMessage``
sequences, not what ``PushSession`` would send, and look at everything the
receiver answered before it ended the stream: ``transfer_outcome``, so every
such test reads the outcome the same way.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from cvmigrate.agent.push import PushOptions, push
from cvmigrate.common.passes import PushResult
from cvmigrate.common.rpc import channel_options
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.server import ServerHandle

if TYPE_CHECKING:
    from cvmigrate.common.tls import PkiPaths

#: What a raw stream came to: the receiver's messages, the final status and its details ("" for OK).
Outcome = tuple[list[pb.ReceiverMessage], grpc.StatusCode, str]


def serving(handle: ServerHandle, root: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(address, root)`` of a started receiver; stop it afterwards (``yield from`` it in a fixture)."""
    try:
        yield f"127.0.0.1:{handle.port}", root
    finally:
        handle.stop(grace=1)


def serving_secured(root: Path, pki: PkiPaths, token: str) -> Iterator[tuple[str, Path]]:
    """:func:`serving` for a receiver as the controller starts one (mutual TLS with ``pki``, ``token``) on a new,
    empty ``root``."""
    from cvmigrate.controller.demo import start_target_receiver

    root.mkdir()
    yield from serving(start_target_receiver(root, pki, token), root)


def push_once(src: Path, address: str, **options: Any) -> PushResult:
    """Push ``src`` to the plaintext receiver at ``address`` once (``options``: more PushOptions fields)."""
    return push(PushOptions(source=str(src), address=address, **options), retry_for=0)


def transfer_outcome(address: str, messages: Iterable[pb.AgentMessage], *, timeout: float = 20,
                     metadata: Sequence[tuple[str, str]] | None = None) -> Outcome:
    """Send ``messages`` as they are on one plaintext ``Transfer`` stream and wait for its end.

    A refusal is returned, not raised: the answers received before it are kept.
    """
    with grpc.insecure_channel(address, options=channel_options()) as ch:
        call = pb_grpc.ReceiverStub(ch).Transfer(iter(messages), timeout=timeout, metadata=metadata)
        out: list[pb.ReceiverMessage] = []
        try:
            out.extend(call)
            return out, grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return out, exc.code(), exc.details() or ""
