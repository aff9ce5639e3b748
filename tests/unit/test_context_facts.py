"""The checkpoint's facts come back typed (controller/context.py): what check_credentials stored is an
InstanceInfo again, and a fact of the wrong type is refused with one line instead of being guessed at."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cvmigrate.controller.checkpoint import Checkpoint, StateFileError
from cvmigrate.controller.cloud import InstanceInfo
from cvmigrate.controller.context import Facts, PassSummary


def _instance() -> InstanceInfo:
    return InstanceInfo(instance_id="ins-1", state="RUNNING", os_name="Ubuntu Server 22.04 LTS 64bit",
                        system_disk_gb=50, data_disks=((1, 100), (2, 20)), private_ips=("10.0.0.5",),
                        public_ips=("203.0.113.7",), vpc_id="vpc-1", subnet_id="subnet-1", zone="ap-guangzhou-3",
                        ipv6_addresses=("2001:db8::5",))


def test_target_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    with Checkpoint(tmp_path / "state.db") as ckpt:
        facts = Facts(ckpt)
        assert facts.target is None and facts.pki_dir is None and facts.completed_passes() == []
        ckpt.finish("check_credentials", {"target": dataclasses.asdict(_instance())})
        assert facts.target == _instance()          # tuples again, not the JSON lists
    with Checkpoint(tmp_path / "state.db") as ckpt:   # and after a restart
        assert Facts(ckpt).target == _instance()


def test_completed_passes_are_summaries(tmp_path: Path) -> None:
    with Checkpoint(tmp_path / "state.db") as ckpt:
        n = ckpt.begin_pass("full")
        ckpt.end_pass(n, {"files": 3, "bytes_total": 10, "bytes_sent": 7, "errors": ["x"], "changed_during_copy": 1,
                          "future_field": True})
        failed = ckpt.begin_pass("final")
        ckpt.end_pass(failed, {"error": "link lost"})
        assert Facts(ckpt).completed_passes() == [PassSummary(kind="full", files=3, bytes_total=10, bytes_sent=7,
                                                              errors=("x",), changed_during_copy=1)]


def test_a_fact_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    with Checkpoint(tmp_path / "state.db") as ckpt:
        ckpt.set_facts(receiver_address=443, source_clock_skew=2, bwlimit_override=True)
        facts = Facts(ckpt)
        assert facts.source_clock_skew == 2.0       # an int where a float is expected is fine
        with pytest.raises(StateFileError, match="'receiver_address' is int, not str"):
            _ = facts.receiver_address
        with pytest.raises(StateFileError, match="'bwlimit_override' is bool, not int"):
            _ = facts.bwlimit_override
