"""Raw data-plane streams for tests that speak to a receiver below the agent.

Hostile-input and admission tests send hand-made ``AgentMessage`` sequences, not
what ``PushSession`` would send, and look at everything the receiver answered
before it ended the stream: one helper, so every such test reads the outcome
the same way.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc

from cvmigrate.common.rpc import channel_options
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

#: What a raw stream came to: the receiver's messages, the final status and its details ("" for OK).
Outcome = tuple[list[pb.ReceiverMessage], grpc.StatusCode, str]


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
