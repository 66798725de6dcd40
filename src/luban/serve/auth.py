"""Bearer API keys: `Authorization: Bearer KEY` on every API route when keys are configured.

Keys are compared in constant time (`hmac.compare_digest` over SHA-256 digests, so neither the content nor the
length of a key leaks through timing) and every configured key is checked, match or not. Health, readiness, the
playground page and the docs stay open; the playground asks for a key and sends it with its API calls.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from luban.serve.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="an API key given to `luban serve --api-key` "
                    "(only needed when the server was started with keys)")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyChecker:
    def __init__(self, keys: list[str]):
        self.digests = [_digest(k) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def valid(self, key: str | None) -> bool:
        if key is None:
            return False
        d = _digest(key)
        ok = False
        for ref in self.digests:  # no early exit: the time does not depend on which key matched
            ok |= hmac.compare_digest(d, ref)
        return ok

    def check(self, request: Request) -> None:
        if not self.enabled:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send the header `Authorization: Bearer YOUR_KEY`",
                           "authentication_error", None, "missing_api_key", {"WWW-Authenticate": "Bearer"})
        if not self.valid(token.strip()):
            raise ApiError(401, "invalid API key", "authentication_error", None, "invalid_api_key",
                           {"WWW-Authenticate": "Bearer"})


def require_key(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
    """The FastAPI dependency of every API route: the app's key checker (`app.state.keys`, set by create_app) passes
    the request or raises the 401 (declares the bearer scheme in the OpenAPI spec, for /docs)."""
    request.app.state.keys.check(request)
