"""Pure ASGI middleware counting responses by path and status (safe for streaming, unlike BaseHTTPMiddleware)."""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.server.metrics import Counter, Metrics

_KNOWN_PATHS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/internal/stats")


class HTTPCounter:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.counter = Counter("lamina_http_responses_total", "HTTP responses by path and status code.")
        metrics.extra.append(self.counter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        path = next((p for p in _KNOWN_PATHS if path == p or path.startswith(p + "/")), "other")

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counter.inc(path=path, status=str(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)
