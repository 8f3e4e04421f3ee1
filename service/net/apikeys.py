"""API keys: `Authorization: Bearer <key>`, checked the same way by the API and the worker."""

from __future__ import annotations

import hmac
from collections.abc import Sequence


def allows(keys: Sequence[bytes], authorization: bytes) -> bool:
    """No keys are set, or the Authorization header's bearer token is one of them."""
    if not keys:
        return True
    scheme, _, token = authorization.partition(b" ")
    valid = False
    for key in keys:  # compare with every key, in constant time: no early exit
        valid |= hmac.compare_digest(token.strip(), key)
    return scheme.lower() == b"bearer" and valid
