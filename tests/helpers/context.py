"""A real controller ``Context`` for tests of code that never calls the cloud.

Code under test that reads the options, client.json or the checkpoint gets the
real objects (not a namespace imitating some of them): user.json names the
emulator's default target, the cloud client points at a port nothing listens
on (a call would fail at once, not reach anything), and the checkpoint is an
in-memory one unless the test passes its own.
"""

from __future__ import annotations

from cvmigrate.controller.checkpoint import Checkpoint
from cvmigrate.controller.cloud import CloudClient, Credentials
from cvmigrate.controller.config import ClientConfig, UserConfig
from cvmigrate.controller.context import Context, Options
from cvmigrate.controller.emulator import DEFAULT_INSTANCE_ID, DEFAULT_REGION, DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY

#: Where the offline context's cloud client would send a call: port 9 (discard) on loopback, closed here.
NO_CLOUD = "http://127.0.0.1:9"


def offline_context(*, opts: Options | None = None, user: UserConfig | None = None,
                    client: ClientConfig | None = None, ckpt: Checkpoint | None = None) -> Context:
    """A Context from real parts; whatever the test does not pass is a default that cannot reach a cloud."""
    cloud = CloudClient(Credentials(DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY, source="test"), DEFAULT_REGION,
                        endpoint=NO_CLOUD, timeout=1)
    return Context(opts=Options() if opts is None else opts,
                   user=UserConfig(DEFAULT_REGION, DEFAULT_INSTANCE_ID) if user is None else user,
                   client=ClientConfig() if client is None else client, cloud=cloud,
                   ckpt=Checkpoint(None) if ckpt is None else ckpt)
