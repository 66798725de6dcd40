"""Browser guards for a server that may run without API keys: the `Host` header and cross-origin writes.

- DNS rebinding: a web page whose domain re-resolves to 127.0.0.1 can read from a local server as if it were its
  own origin, but its requests still carry `Host: evil.example`. The server answers only for the names it is
  bound to: localhost, 127.0.0.1, [::1], the `--host` address, and any `--allowed-host`; others get 421. Bound to a
  wildcard address (0.0.0.0, ::) the server cannot know its public names, so it accepts any Host unless
  `--allowed-host` lists them.
- Cross-site forms: any page can POST a `multipart/form-data`, `text/plain` or urlencoded form (a "simple" request,
  sent without a CORS preflight). A POST, PUT, PATCH or DELETE whose `Origin` is neither the server's own origin
  nor allowed by `--cors-origin` gets 403 (browsers always send `Origin` on cross-origin writes; without it,
  `Sec-Fetch-Site: cross-site`/`same-site` counts as foreign too). Clients that are not browsers (curl, SDKs) send
  no Origin and are not affected; the playground is served from the server's own origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from luban.serve.limits import reject

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = frozenset({"", "0.0.0.0", "::", "*"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def host_name(value: str) -> str:
    """`Host` header (or an address) -> the lower-case name without the port: "[::1]:8000" -> "::1"."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        name = v[1:end] if end > 0 else v[1:]
    elif v.count(":") == 1:
        name = v.split(":", 1)[0]
    else:
        name = v
    return name.rstrip(".")


def allowed_hosts(bound: str | None, extra: list[str]) -> list[str] | None:
    """The host names the server answers for; None: any (no bind address known, a wildcard bind without
    --allowed-host, or an allowed host "*")."""
    extra_names = [host_name(h) if not h.strip().startswith("*.") else h.strip().lower() for h in extra]
    if "*" in (h.strip() for h in extra):
        return None
    if bound is None or host_name(bound) in WILDCARD:
        return sorted(LOOPBACK | set(extra_names)) if extra_names else None
    return sorted(LOOPBACK | {host_name(bound)} | set(extra_names))


def _host_ok(name: str, allowed: list[str]) -> bool:
    return any(name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in allowed)


class BrowserGuard:
    """Pure ASGI middleware: 421 for a Host the server does not answer for, 403 for a cross-origin write."""

    def __init__(self, app, host: str | None = None, extra_hosts: list[str] = (), cors_origins: list[str] = ()):
        self.app = app
        self.hosts = allowed_hosts(host, list(extra_hosts))
        self.origins = {o.strip().rstrip("/").lower() for o in cors_origins}
        self.any_origin = "*" in self.origins

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host")
        if self.hosts is not None and host is not None and not _host_ok(host_name(host), self.hosts):
            name = host_name(host)
            return await reject(send, 421, f"this server does not answer for the host {name!r} (allowed: "
                                f"{', '.join(self.hosts)}); start it with --allowed-host {name} if that name is "
                                "yours", "invalid_host")
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin")
            if not self._origin_ok(origin, headers.get("sec-fetch-site"), host):
                shown = origin or "another site"
                hint = f" --cors-origin {origin}" if origin and origin != "null" else " --cors-origin ORIGIN"
                return await reject(send, 403, f"cross-origin request from {shown} refused: start the server "
                                    f"with{hint} to let pages from there call it", "cross_origin",
                                    "permission_error")
        await self.app(scope, receive, send)

    def _origin_ok(self, origin: str | None, fetch_site: str | None, host: str | None) -> bool:
        if self.any_origin:
            return True
        if origin is None:  # not a browser, or a browser's same-origin request (Sec-Fetch-Site says which)
            return (fetch_site or "").lower() not in ("cross-site", "same-site")
        if origin.strip().rstrip("/").lower() in self.origins:
            return True
        if origin == "null" or host is None:
            return False
        return urlsplit(origin.strip()).netloc.lower() == host.strip().lower()  # the server's own origin
