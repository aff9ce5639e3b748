"""cloud-init: kept consistent with Tencent Cloud's datasource, where cloud-init is installed.

A migrated server is not a fresh image: cloud-init must not treat the first
boot on the CVM as a brand-new instance that regenerates SSH host keys or
resets users, and it must not wait minutes for the source cloud's metadata
service.  Where ``/etc/cloud`` exists we:

* set the datasource list to Tencent's (``ConfigDrive``, ``TencentCloud``;
  ``None`` last so an unreachable metadata service cannot stall boot) in a
  drop-in that sorts after the distribution's files;
* keep the source's network configuration in charge (cloud-init's generated
  config was MAC-bound to the source's NIC; the network fix-up generalises it)
  by ``network: {config: disabled}``;
* leave a disabled cloud-init (``/etc/cloud/cloud-init.disabled``) disabled.

Uncertain: the ``TencentCloud`` datasource name and metadata addresses are
those of Tencent's own cloud-init builds; an upstream cloud-init without that
datasource skips the name and falls back to ``ConfigDrive``/``None``.
"""
from __future__ import annotations

from typing import Any

NAME = "cloudinit"

DROPIN = "/etc/cloud/cloud.cfg.d/99-cvmigrate-tencentcloud.cfg"
CONTENT = """\
# Written by cvmigrate after migrating this server to a Tencent Cloud CVM.
# Tencent Cloud provides instance metadata through a config drive and its
# metadata service; None keeps boot from stalling when neither answers.
datasource_list: [ ConfigDrive, TencentCloud, None ]
datasource:
  TencentCloud:
    metadata_urls: ['http://169.254.0.23', 'http://metadata.tencentyun.com']
# The migrated system's own network configuration stays in charge.
network:
  config: disabled
"""


def fix(ctx: Any) -> None:
    if not ctx.exists("/etc/cloud") or not (ctx.which("cloud-init") or ctx.exists("/usr/bin/cloud-init")):
        ctx.note("cloud-init not installed")
        return
    if ctx.exists("/etc/cloud/cloud-init.disabled"):
        ctx.note("cloud-init is disabled on the source (/etc/cloud/cloud-init.disabled): left disabled")
        return
    ctx.write(DROPIN, CONTENT, "Tencent Cloud datasource; keep the migrated network config")
