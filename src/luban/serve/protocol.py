"""uvicorn's HTTP protocol with a deadline on the request headers (the classic slowloris).

uvicorn closes idle keep-alive connections, and the body guard (limits.BodyGuard) bounds the body, but a client that
opens a connection and sends its request headers a byte at a time — or never finishes them — holds the connection
for ever. This protocol (uvicorn's default one, httptools or h11, plus a timer) closes a connection that has not
completed a request's headers `timeout` seconds after it opened, or after the previous response on it. A request
being answered is never cut. Imported only by `luban serve` (it imports uvicorn).
"""

from __future__ import annotations

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class HeaderDeadline(AutoHTTPProtocol):
    timeout: float = 30.0  # set per server process by `luban serve` (--body-timeout)
    _deadline = None  # the armed timer (an asyncio TimerHandle)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.timeout, self._expired, self.cycle)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, cycle_when_armed) -> None:
        """No request's headers completed since the timer was armed, and none is being answered: close."""
        idle = self.cycle is cycle_when_armed and (self.cycle is None or self.cycle.response_complete)
        if idle and not self.transport.is_closing():
            self.transport.close()
