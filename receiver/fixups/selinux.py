"""SELinux: a full relabel on the target's first boot when SELinux is enforcing or permissive.

Files written by the receiver carry the xattrs the source had, but a
filesystem created on the target (a freshly formatted data disk) and files
the fix-ups wrote carry none or stale ones; with ``enforcing`` a mislabelled
``/etc`` can stop logins.  ``/.autorelabel`` makes the SELinux-enabled
init relabel everything once, then reboot.
"""
from __future__ import annotations

import re
from typing import Any

NAME = "selinux"


def selinux_mode(config_text: str | None) -> str:
    """``enforcing`` / ``permissive`` / ``disabled`` from /etc/selinux/config text ('' when absent)."""
    if not config_text:
        return ""
    m = re.search(r"^\s*SELINUX\s*=\s*['\"]?(\w+)", config_text, re.MULTILINE)
    return m.group(1).lower() if m else ""


def fix(ctx: Any) -> None:
    mode = selinux_mode(ctx.read("/etc/selinux/config"))
    if mode not in ("enforcing", "permissive"):
        ctx.note(f"SELinux {mode or 'not configured'}: no relabel needed")
        return
    if ctx.exists("/.autorelabel"):
        ctx.note(f"SELinux {mode}: /.autorelabel already present")
        return
    ctx.write("/.autorelabel", "", f"SELinux is {mode}: relabel on first boot")
