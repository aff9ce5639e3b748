"""What every sub-task works with: the command line's Options, a Deadline, and the Context.

Why typed facts: what a sub-task learns (the target CVM, where the receiver
listens, the agent's report on the source, each pass's result) is stored in
the checkpoint as JSON, so a resumed run knows it.  The checkpoint keeps plain
JSON (its format does not change); :class:`Facts` is the one place that knows
each key and loads it back as a dataclass, so a sub-task reads
``ctx.facts.target.system_disk_gb`` instead of ``(ckpt.fact("target") or
{}).get("system_disk_gb")``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from cvmigrate.common.errors import CheckFailed, ConfigError, CvmError, StageTimeout
from cvmigrate.common.passes import TransferCounts, TreeCounts
from cvmigrate.common.sourcefacts import SourceFacts
from cvmigrate.controller.checkpoint import Checkpoint, StateFileError
from cvmigrate.controller.config import ClientConfig, NetMode, UserConfig
from cvmigrate.controller.progress import Display

if TYPE_CHECKING:
    from cvmigrate.agent.verify import VerifyReport
    from cvmigrate.common.tls import MigrationTokens, PkiPaths, TransportSecurity
    from cvmigrate.controller.bootstrap_ssh import ReceiverEndpoint
    from cvmigrate.controller.cloud import CloudClient, InstanceInfo

CUTOVER_MODES = ("now", "after-pass", "manual")
BOOTSTRAP_MODES = ("manual", "ssh", "local")
#: go2tencentcloud documents that the target's security group must allow 80 and 443; we use 443.
DEFAULT_RECEIVER_PORT = 443
DEFAULT_TARGET_ROOT = "/mnt/cvmigrate"

#: CVM instance states the sub-tasks reason about: a migration can start (or continue) from STARTABLE.
STARTABLE = frozenset({"RUNNING", "STOPPED"})
RESCUE = frozenset({"ENTER_RESCUE_MODE", "RESCUE_MODE"})
TRANSITIONAL = frozenset({"PENDING", "STARTING", "STOPPING", "REBOOTING", "EXIT_RESCUE_MODE"})
DEAD = frozenset({"SHUTDOWN", "TERMINATING", "LAUNCH_FAILED"})

T = TypeVar("T")


@dataclass
class Options:
    """What the command line chose (everything else comes from the configs)."""

    source: str = "/"
    cutover: str = "after-pass"
    bootstrap: str = "manual"
    receiver: str | None = None                 # HOST:PORT (manual mode)
    receiver_port: int = DEFAULT_RECEIVER_PORT
    target_root: str = DEFAULT_TARGET_ROOT      # where the rescue system mounts the target (ssh mode)
    ssh_user: str = "root"                      # ssh mode: the rescue system's login
    ssh_port: int = 22                          # ssh mode: its SSH port
    executables: str | None = None              # ssh mode: dir with cvmigrate-linux-<arch> (tools/build_bundle.sh)
    security: TransportSecurity | None = None   # from admin-given files / --insecure, or None: mint
    poll_interval: float = 5.0                  # instance state polling
    pass_interval: float = 10.0                 # pause between incremental passes (cutover manual)
    cutover_file: str | None = None             # cutover manual: creating this file ends the passes
    cutover_key: bool = True                    # cutover manual: Enter on a terminal also ends them
    state_dir: str = "."                        # where the PKI directory goes
    exclude_files: tuple[str, ...] = ()
    own_paths: tuple[str, ...] = ()             # our state/log files: never migrated
    verify_target: str | None = None            # a locally readable target root to compare (demo, tests)
    workers: int = 2
    streams: int = 0                            # parallel streams per file pass; 0 = both sides' cores decide
    agent: str | None = None                    # HOST:PORT of `cvmigrate agent`: passes run there, not here
    block_disks: tuple[tuple[str, str], ...] = ()  # (source device, target device) copied block by block
    file_level: bool = True                     # False: block-level passes only
    keep_static_ip: bool = False                # the network fix-up leaves a static address as it is
    checks_only: bool = False                   # `--check`: nothing waits, nothing changes
    no_console: bool = False                    # --no-console / Client.ToolMode: no MSP console registration
    data_via_proxy: bool = False                # Net.Mode 3: the data stream through the proxy too (on request)


class Deadline:
    """A sub-task's time limit."""

    def __init__(self, seconds: float, name: str) -> None:
        self.seconds, self.name = seconds, name
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def timeout_error(self, what: str) -> StageTimeout:
        return StageTimeout(f"{self.name}: {what} did not finish within {self.seconds:.0f} s; raise "
                            f"Cvmigrate.Timeouts.{self.name} in client.json if it needs longer, then run the same "
                            "command again to resume")


# ============================================================================ typed facts
def instance_info_from_json(d: dict[str, Any]) -> InstanceInfo:
    """An InstanceInfo as check_credentials stored it (``dataclasses.asdict``): JSON lists back to tuples."""
    from cvmigrate.controller.cloud import InstanceInfo

    known = {f.name for f in fields(InstanceInfo)}
    values = {k: v for k, v in d.items() if k in known}
    for k in ("private_ips", "public_ips", "ipv6_addresses"):
        values[k] = tuple(values.get(k) or ())
    values["data_disks"] = tuple((int(i), int(gb)) for i, gb in values.get("data_disks") or ())
    return InstanceInfo(**values)


@dataclass
class PassSummary(TreeCounts, TransferCounts):
    """One completed transfer pass as the checkpoint holds it: a :class:`PushResult` read back from its
    ``as_json`` -- the same tree and transfer counters, so a key the result writes is a field here by the
    same name.  ``changed_during_copy`` is the count the JSON keeps (the result holds the paths)."""

    kind: str = ""
    deleted: int = 0
    changed_during_copy: int = 0
    seconds: float = 0.0

    @classmethod
    def from_json(cls, d: dict[str, Any], kind: str = "") -> PassSummary:
        """Keys this summary does not know (a newer writer's) are ignored, missing ones (an older writer's) stay 0."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in d and f.name != "kind":
                value = d[f.name]
                if f.name == "errors":
                    values[f.name] = [str(e) for e in value or ()]
                else:
                    values[f.name] = float(value) if isinstance(f.default, float) else int(value)
        return cls(kind=kind, **values)


@dataclass
class Verification:
    """The verify sub-task's result (the checkpoint's ``verification`` fact; `migrate --json`, its final line and
    the demo show it): the passes' totals, the last pass's counts and, where the target was readable here,
    the tree comparison.  Its JSON keys are fixed (:meth:`as_json`): scripts and older state files read them."""

    passes: int = 0
    last: PassSummary = field(default_factory=PassSummary)     # what the target holds now
    bytes_sent_all_passes: int = 0
    errors: int = 0                                           # of every pass
    compared: VerifyReport | None = None                      # None: the target was not compared here

    @classmethod
    def of(cls, passes: list[PassSummary], compared: VerifyReport | None = None) -> Verification:
        return cls(passes=len(passes), last=passes[-1] if passes else PassSummary(),
                   bytes_sent_all_passes=sum(p.bytes_sent for p in passes),
                   errors=sum(len(p.errors) for p in passes), compared=compared)

    def as_json(self) -> dict[str, Any]:
        last = self.last
        d: dict[str, Any] = {
            "passes": self.passes,
            "files": last.files, "dirs": last.dirs, "symlinks": last.symlinks,
            "hardlinks": last.hardlinks, "bytes_total": last.bytes_total,
            "bytes_sent_all_passes": self.bytes_sent_all_passes,
            "errors": self.errors,
            "changed_during_last_pass": last.changed_during_copy,
            # every pass passed check_complete: each file's hash was checked by the receiver
            "every_file_hash_verified_by_receiver": True,
        }
        if self.compared is not None:
            d.update(compared_entries=self.compared.entries, compared_files_hashed=self.compared.files_hashed,
                     compared_bytes_hashed=self.compared.bytes_hashed, differences=self.compared.differences[:20])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Verification:
        from cvmigrate.agent.verify import VerifyReport

        last = PassSummary.from_json({k: v for k, v in d.items() if k != "errors"})
        last.changed_during_copy = int(d.get("changed_during_last_pass", 0))
        compared = None
        if "compared_entries" in d:
            compared = VerifyReport(entries=int(d["compared_entries"]),
                                    files_hashed=int(d.get("compared_files_hashed", 0)),
                                    bytes_hashed=int(d.get("compared_bytes_hashed", 0)),
                                    differences=list(d.get("differences") or ()))
        return cls(passes=int(d.get("passes", 0)), last=last,
                   bytes_sent_all_passes=int(d.get("bytes_sent_all_passes", 0)), errors=int(d.get("errors", 0)),
                   compared=compared)


class _Fact(Generic[T]):
    """A fact of one plain type on :class:`Facts`, read by its attribute name (None: not learned yet)."""

    def __init__(self, kind: type[T], doc: str) -> None:
        self.kind, self.key, self.__doc__ = kind, "", doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Fact[T]: ...
    @overload
    def __get__(self, obj: Facts, owner: type) -> T | None: ...
    def __get__(self, obj: Facts | None, owner: type) -> _Fact[T] | T | None:
        return self if obj is None else obj._get(self.key, self.kind)


class Facts:
    """The checkpoint's facts, typed: one attribute per key a sub-task stored (None: not learned yet)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self._ckpt = ckpt

    def _get(self, key: str, kind: type[T]) -> T | None:
        """The fact ``key`` if it is a ``kind``; a state file with another type there is refused, not guessed at."""
        value = self._ckpt.fact(key)
        if value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StateFileError(f"{self._ckpt.path}: fact {key!r} is {type(value).__name__}, not "
                                 f"{kind.__name__}; the state file was changed by hand or by another tool -- "
                                 "restore it, or start over with `cvmigrate clean`")
        return value

    def _dict(self, key: str) -> dict[str, Any] | None:
        return self._get(key, dict)

    # facts of one plain type, by the sub-task that stores them (the richer ones are properties below)
    instance_id = _Fact(str, "validate_config: the target this state file belongs to.")
    pki_dir = _Fact(str, "mint_credentials: this migration's certificates and token files (None: the admin's "
                         "own files).")
    source_clock_skew = _Fact(float, "source_facts: the agent host's clock minus ours, in seconds.")
    source_used_bytes = _Fact(int, "check_capacity: bytes in use on the source (the first pass's estimate).")
    msp_task_id = _Fact(str, "register_msp: the MSP console's task (None: tool mode, or registration failed).")
    msp_status = _Fact(str, "register_msp, then stage 3: the status last reported to the MSP console.")
    receiver_address = _Fact(str, "start_receiver: HOST:PORT the passes dial.")
    bwlimit_override = _Fact(int, "`cvmigrate bwlimit`: KB/s (0: unlimited), winning over "
                                  "Client.Rsync.BandwidthLimit; None: not set.")

    @property
    def target(self) -> InstanceInfo | None:
        """check_credentials: the target CVM as DescribeInstances showed it."""
        d = self._dict("target")
        return instance_info_from_json(d) if d else None

    @property
    def source_facts(self) -> SourceFacts | None:
        """source_facts: the agent's report on the source."""
        from cvmigrate.common.sourcefacts import facts_from_json

        d = self._dict("source_facts")
        return facts_from_json(json.dumps(d)) if d else None

    @property
    def receiver_endpoint(self) -> ReceiverEndpoint | None:
        """start_receiver (ssh): the remote receiver and its rescue system's SSH host key."""
        from cvmigrate.controller.bootstrap_ssh import ReceiverEndpoint

        d = self._dict("receiver_endpoint")
        return ReceiverEndpoint.from_dict(d) if d else None

    @property
    def verification(self) -> Verification | None:
        """verify: the passes' totals and the tree comparison."""
        d = self._dict("verification")
        return Verification.from_json(d) if d else None

    def completed_passes(self) -> list[PassSummary]:
        """Every pass that ended with a result, oldest first."""
        return [PassSummary.from_json(p["result"], p.get("kind", "")) for p in self._ckpt.completed_passes()]


# ============================================================================ the context
@dataclass
class Context:
    """Everything a sub-task may use."""

    opts: Options
    user: UserConfig
    client: ClientConfig
    cloud: CloudClient
    ckpt: Checkpoint
    display: Display = field(default_factory=Display)
    #: (pki, tokens) -> "HOST:PORT": starts a receiver in this process (bootstrap "local": demo, tests);
    #: ``tokens`` is the migration's MigrationTokens (None with admin-supplied --tls-*/--token-file).
    local_receiver: Callable[[PkiPaths | None, MigrationTokens | None], str] | None = None
    migration_id: str = ""
    #: short texts for the display: "current" is the running sub-task's one-line result
    notes: dict[str, str] = field(default_factory=dict)
    _local_address: str | None = None
    _security: TransportSecurity | None = None
    _facts: SourceFacts | None = None

    @property
    def facts(self) -> Facts:
        return Facts(self.ckpt)

    @property
    def instance_id(self) -> str:
        return self.user.instance_id

    def note(self, text: str) -> None:
        """The running sub-task's one-line result (shown when it finishes, and logged)."""
        self.notes["current"] = text

    def wait_target(self, wanted: str | frozenset[str], dl: Deadline) -> str:
        """Poll the target CVM until it is in ``wanted`` (StageTimeout at the sub-task's deadline); a state
        in DEAD fails at once.  The state reached."""
        return self.cloud.wait_for_state(self.instance_id, wanted, timeout=dl.remaining(),
                                         poll=self.opts.poll_interval, unexpected=DEAD)

    def target(self) -> InstanceInfo:
        """The target CVM as check_credentials saw it."""
        target = self.facts.target
        if target is None:
            raise CvmError("the target is not known yet (sub-task check_credentials has not run)")
        return target

    def source_facts(self) -> SourceFacts:
        """The agent's report on the source (sub-task source_facts); never this host's disks in --agent mode."""
        if self._facts is None:
            facts = self.facts.source_facts
            if facts is None:
                raise CvmError("the source facts are not known yet (sub-task source_facts has not run)")
            self._facts = facts
        return self._facts

    def remember_source_facts(self, facts: SourceFacts) -> None:
        self._facts = facts

    # -- transport security for the data and control channels (roles: see common/auth.py)
    def tokens(self) -> MigrationTokens:
        """This migration's MigrationTokens (data, control, agent), from the checkpoint's secrets."""
        from cvmigrate.common.tls import MigrationTokens

        data, control, agent = (self.ckpt.secret(k) for k in ("token", "control_token", "agent_token"))
        if not (data and control and agent):
            raise CvmError("no tokens for this migration yet (sub-task mint_credentials has not run)")
        return MigrationTokens(data=data, control=control, agent=agent)

    def _pki(self) -> PkiPaths:
        from cvmigrate.common.tls import PkiPaths

        pki_dir = self.facts.pki_dir
        if not pki_dir:
            raise CvmError("no certificates for this migration yet (sub-task mint_credentials has not run)")
        return PkiPaths.in_dir(pki_dir)

    def security(self) -> TransportSecurity:
        """The controller's own credential towards the receiver: control calls send the control token."""
        if self._security is not None:
            return self._security
        if self.opts.security is not None:
            self._security = self.opts.security
            return self._security
        from cvmigrate.common.tls import TransportSecurity

        self._security = TransportSecurity.from_pki(self._pki(), "client", self.tokens())
        return self._security

    def data_security(self) -> TransportSecurity:
        """The data-plane credential (agent certificate + data token): what a pass uses, here or on the agent."""
        if self.opts.security is not None:
            return self.opts.security
        from cvmigrate.common.tls import TransportSecurity

        return TransportSecurity.agent_data(self._pki(), self.tokens())

    def agent_security(self) -> TransportSecurity:
        """The controller's credential towards the agent daemon (its own token, never the receiver's)."""
        if self.opts.security is not None:
            return self.opts.security
        from cvmigrate.common.tls import TransportSecurity

        return TransportSecurity.to_agent(self._pki(), self.tokens())

    def receiver_address(self) -> str:
        if self.opts.bootstrap == "local":
            if self._local_address is None:
                if self.local_receiver is None:
                    raise ConfigError("bootstrap 'local' needs an in-process receiver (cvmigrate demo, tests)")
                pki = tokens = None
                if self.opts.security is None:
                    pki, tokens = self._pki(), self.tokens()
                self._local_address = self.local_receiver(pki, tokens)
            return self._local_address
        address = self.facts.receiver_address
        if not address:
            raise CvmError("the receiver's address is not known yet (sub-task start_receiver has not run)")
        return address

    def data_proxy(self) -> str | None:
        """client.json's HTTP proxy for the data stream, as a URL, only when asked for (--data-via-proxy).

        Net.Mode 3 is go2tencentcloud's "the source calls the API through a
        proxy, data over the private channel": the proxy carries API calls, the
        data goes straight to the target's private address.  Some networks can
        only reach the target through the proxy; ``--data-via-proxy`` says so.
        """
        px = self.client.net.proxy
        if (not self.opts.data_via_proxy or self.client.net.mode is not NetMode.PRIVATE_VIA_PROXY
                or not px.ip):
            return None
        from cvmigrate.common.netaddr import proxy_url

        return proxy_url(px.ip, px.port or 0, px.user or "", px.password.reveal() if px.password else "")

    def target_ip(self) -> str:
        """The target address the source reaches: public for Net.Mode 0, private otherwise; its IPv6
        address when Client.Net.Proxy.IPv6 is true (go2tencentcloud's "move data over IPv6")."""
        target = self.target()
        if self.client.net.proxy.ipv6:
            if not target.ipv6_addresses:
                raise CheckFailed(f"Client.Net.Proxy.IPv6 is true but target {self.instance_id} has no IPv6 address; "
                                  "assign one to the CVM (VPC and subnet with IPv6), set IPv6 to false, or give "
                                  "--receiver [ADDRESS]:PORT")
            return target.ipv6_addresses[0]
        public, private = target.public_ips, target.private_ips
        ips = public if self.client.net.mode is NetMode.PUBLIC else private
        if not ips:
            ips = private or public
        if not ips:
            raise CheckFailed(f"target {self.instance_id} has no "
                              f"{'public' if self.client.net.mode is NetMode.PUBLIC else 'private'} "
                              "IP address; give --receiver HOST:PORT")
        return ips[0]
