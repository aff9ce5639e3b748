"""``migrate --streams N`` and ``client.json`` ``Cvmigrate.Streams``: the flag wins, the file is the default.

The options are built by the same code the ``cvmigrate migrate`` command runs (the real argument
parser and ``build_context``); no cloud call is made (the cloud client is given).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cvmigrate.cli import build_parser
from cvmigrate.common.errors import UsageError
from cvmigrate.controller.config import parse_client_config, parse_user_config
from cvmigrate.controller.migrate import build_context

USER = {"SecretId": "AKIDexample", "SecretKey": "example-secret", "Region": "ap-guangzhou",
        "InstanceId": "ins-abcd1234"}


def _streams(tmp_path: Path, argv: list[str], client_streams: int | None) -> int:
    args = build_parser("migrate").parse_args(
        ["migrate", "--user-json", str(tmp_path / "user.json"), *argv])
    client = parse_client_config({} if client_streams is None else {"Cvmigrate": {"Streams": client_streams}})
    ctx = build_context(args, ckpt=None, display=None, cloud=object(), user=parse_user_config(USER),
                        client=client)
    return int(ctx.opts.streams)


@pytest.mark.parametrize(("argv", "client_streams", "expected"), [
    ([], None, 0),                       # neither: both sides' cores decide
    ([], 3, 3),                          # client.json only
    (["--streams", "2"], 5, 2),          # the flag wins
    (["--streams", "2"], None, 2),
])
def test_flag_wins_over_client_json(tmp_path: Path, argv: list[str], client_streams: int | None,
                                    expected: int) -> None:
    assert _streams(tmp_path, argv, client_streams) == expected


def test_out_of_range_flag_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--streams 9: give 1 to 8"):
        _streams(tmp_path, ["--streams", "9"], None)
