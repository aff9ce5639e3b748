"""The checkpoint's facts come back typed (controller/context.py): what check_credentials stored is an
InstanceInfo again, and a fact of the wrong type is refused with one line instead of being guessed at."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cvmigrate.controller.checkpoint import Checkpoint, StateFileError
from cvmigrate.controller.cloud import InstanceInfo
from cvmigrate.controller.context import Facts, PassSummary, Verification


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
                                                              errors=["x"], changed_during_copy=1)]


def test_a_fact_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    with Checkpoint(tmp_path / "state.db") as ckpt:
        ckpt.set_facts(receiver_address=443, source_clock_skew=2, bwlimit_override=True)
        facts = Facts(ckpt)
        assert facts.source_clock_skew == 2.0       # an int where a float is expected is fine
        with pytest.raises(StateFileError, match="'receiver_address' is int, not str"):
            _ = facts.receiver_address
        with pytest.raises(StateFileError, match="'bwlimit_override' is bool, not int"):
            _ = facts.bwlimit_override


#: The ``verification`` fact as verify wrote it before it was a dataclass (state files keep it): the JSON keys
#: `migrate --json`, the final line and the demo read.
OLD_VERIFICATION = {"passes": 2, "files": 3, "dirs": 4, "symlinks": 1, "hardlinks": 2, "bytes_total": 10,
                    "bytes_sent_all_passes": 17, "errors": 1, "changed_during_last_pass": 1,
                    "every_file_hash_verified_by_receiver": True, "compared_entries": 9, "compared_files_hashed": 3,
                    "compared_bytes_hashed": 10, "differences": []}


def test_verification_reads_an_older_state_file_and_writes_the_same_keys(tmp_path: Path) -> None:
    from cvmigrate.controller import migrate

    with Checkpoint(tmp_path / "state.db") as ckpt:
        ckpt.finish("verify", {"verification": OLD_VERIFICATION})
        v = Facts(ckpt).verification
        assert v is not None and v.last.files == 3 and v.compared is not None and v.compared.entries == 9
        assert v.as_json() == OLD_VERIFICATION
        assert {k: val for k, val in migrate.summary(ckpt).items() if k not in ("migration_id", "state_file")} == {
            "files": 3, "bytes_total": 10, "passes": 2, "bytes_sent": 17, "errors": 1, "verified_entries": 9,
            "verified_files_hashed": 3, "msp_task_id": None}


def test_verification_of_the_passes(tmp_path: Path) -> None:
    """Totals over every pass, counts of the last; without a comparison its keys are absent, not zero."""
    with Checkpoint(tmp_path / "state.db") as ckpt:
        for files, sent, errors in ((5, 100, ["a"]), (3, 7, [])):
            ckpt.end_pass(ckpt.begin_pass("full"), {"files": files, "dirs": 4, "symlinks": 1, "hardlinks": 2,
                                                     "bytes_total": 10, "bytes_sent": sent, "errors": errors,
                                                     "changed_during_copy": 1})
        v = Verification.of(Facts(ckpt).completed_passes())
    expected = {k: val for k, val in OLD_VERIFICATION.items() if not k.startswith("compared") and k != "differences"}
    assert v.as_json() == {**expected, "bytes_sent_all_passes": 107}
    assert Verification.from_json(v.as_json()).as_json() == v.as_json()
