"""What can go wrong while starting the receiver over SSH; every error names the fix.

All of them exit with status 15 (``BootstrapError``) and also belong to the
project-wide class that says how to treat them (TransportError: retryable,
AuthError, CheckFailed, ...), so callers can catch either.
"""
from __future__ import annotations

from cvmigrate.common.errors import (
    AuthError,
    CheckFailed,
    ConfigError,
    CvmError,
    StageTimeout,
    TargetError,
    TransportError,
)


class BootstrapError(CvmError, exit_code=15):
    """Starting the receiver over SSH failed."""


class SshUnreachable(BootstrapError, TransportError):
    """The rescue system's SSH port could not be reached (retryable)."""


class SshAuthFailed(BootstrapError, AuthError):
    """The rescue system refused our login."""


class HostKeyChanged(BootstrapError, AuthError):
    """The SSH host key is not the one recorded: possibly someone in the middle."""


class RemotePythonMissing(BootstrapError, CheckFailed):
    """The rescue system has no usable Python for the receiver."""


class RemoteInstallFailed(BootstrapError, TargetError):
    """Copying or installing the receiver on the rescue system failed."""


class ReceiverStartFailed(BootstrapError, TargetError):
    """The receiver did not start (or is not reachable) on the rescue system."""


class BundleError(BootstrapError, ConfigError):
    """The receiver bundle (wheels) could not be built here."""


class BootstrapTimeout(BootstrapError, StageTimeout):
    """A bootstrap step did not finish within the time limit."""

