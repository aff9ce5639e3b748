"""The rescue system's login password, generated for EnterRescueMode (stored in the checkpoint's secrets)."""
from __future__ import annotations

import secrets
import string

_PASSWORD_SPECIALS = "!@#%^*-+=.,:?"  # noqa: S105 - an alphabet: a subset of what EnterRescueMode accepts


def new_rescue_password(length: int = 24) -> str:
    """A strong password EnterRescueMode accepts: all four classes, 8..30 chars, not starting with '/'."""
    classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits, _PASSWORD_SPECIALS)
    alphabet = "".join(classes)
    while True:
        pw = "".join(secrets.choice(alphabet) for _ in range(length))
        if pw[0].isalnum() and all(any(c in cls for c in pw) for cls in classes):
            return pw
