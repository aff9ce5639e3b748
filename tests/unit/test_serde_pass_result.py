"""A remote pass reports what an in-process one does: ``PushResult`` crosses the control plane (control.proto
``PassResult``, "field for field") and comes back equal, so ``migrate --json``, the checkpoint and the fleet
show the same figures whichever side ran the pass.  A counter added to ``PushResult`` and forgotten in the
protocol fails here (``placement_retries`` once was)."""
from dataclasses import fields

from cvmigrate.common.passes import PushResult
from cvmigrate.common.serde import MAX_LISTED, pass_result_from_proto, pass_result_to_proto


def _every_field_set() -> PushResult:
    """A result whose every field holds a value of its own (no two counters alike, none at its default)."""
    r = PushResult()
    for n, f in enumerate(fields(PushResult), start=1):
        default = getattr(r, f.name)
        if isinstance(default, bool):
            setattr(r, f.name, True)
        elif isinstance(default, int):
            setattr(r, f.name, 1000 + n)
        elif isinstance(default, float):
            setattr(r, f.name, n + 0.25)
        elif isinstance(default, list):
            setattr(r, f.name, [f"{f.name}-{i}-\udcff" for i in range(3)])   # undecodable bytes survive
        else:
            raise AssertionError(f"PushResult.{f.name}: a field of a type this test does not know; extend it")
    return r


def test_every_field_of_a_pass_result_survives_the_control_plane() -> None:
    sent = _every_field_set()
    back = pass_result_from_proto(pass_result_to_proto(sent))
    differ = {f.name: (getattr(sent, f.name), getattr(back, f.name))
              for f in fields(PushResult) if getattr(sent, f.name) != getattr(back, f.name)}
    assert not differ, f"lost on the control plane (sent, received): {differ}"


def test_long_lists_are_capped_and_say_how_many_were_left_out() -> None:
    sent = PushResult(errors=[f"e{i}" for i in range(MAX_LISTED + 7)],
                      changed_during_copy=[f"c{i}" for i in range(MAX_LISTED + 2)])
    back = pass_result_from_proto(pass_result_to_proto(sent))
    assert back.errors[:MAX_LISTED] == sent.errors[:MAX_LISTED]
    assert back.errors[MAX_LISTED:] == ["... and 7 more error(s) (see the agent's log)"]
    assert back.changed_during_copy[MAX_LISTED:] == ["... and 2 more"]


def test_negative_counters_cannot_reach_the_wire() -> None:
    """uint64 fields: a counter that went below zero (a bug) is sent as 0, not as an exception mid-report."""
    back = pass_result_from_proto(pass_result_to_proto(PushResult(deleted=-3, streams=2)))
    assert (back.deleted, back.streams) == (0, 2)
