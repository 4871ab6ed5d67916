"""The OpenAI-compatible HTTP app: local models and architectures behind /v1/models, /v1/chat/completions, /v1/completions."""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from lamina.server.admission import Admission
from lamina.server.auth import check_api_key
from lamina.server.errors import APIError, bad_request, install_error_handlers
from lamina.server.formats import ChatFormat, TextFormat
from lamina.server.metrics import Metrics
from lamina.server.middleware import HTTPCounter
from lamina.server.protocol import ChatCompletionRequest, CompletionRequest
from lamina.server.responses import Call, respond
from lamina.server.targets import ArchitectureModel, Generation, LocalModel, arch_messages_from_prompts

ARCH_PREFIX = "arch:"
Target = LocalModel | ArchitectureModel


class Server:
    def __init__(self, models: dict[str, Any], architectures: dict[str, Any], api_key: str | None,
                 max_queue: int) -> None:
        self.targets: dict[str, Target] = {name: LocalModel(name, engine) for name, engine in models.items()}
        for name, arch in architectures.items():
            served = name if name.startswith(ARCH_PREFIX) else ARCH_PREFIX + name
            self.targets[served] = ArchitectureModel(served, arch)
        self.created = int(time.time())
        self.api_key = api_key
        self.admission = Admission(max_queue)
        self.metrics = Metrics(self.engine_stats, lambda: self.admission.depth, max_queue)

    def engine_stats(self) -> dict[str, dict[str, int]]:
        return {name: t.stats() for name, t in self.targets.items() if isinstance(t, LocalModel)}

    def target(self, name: str) -> Target:
        target = self.targets.get(name)
        if target is None:
            raise APIError(404, f"model {name!r} not found; available: {', '.join(self.targets)}", param="model",
                           code="model_not_found")
        return target

    def model_card(self, target: Target) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": target.kind}
        if isinstance(target, LocalModel):
            info["max_model_len"] = target.max_model_len
        return {"id": target.name, "object": "model", "created": self.created, "owned_by": "lamina", "lamina": info}

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        body.check_supported()
        target = self.target(body.model)
        messages = body.message_dicts()
        if isinstance(target, LocalModel):
            params = body.sampling_params(target.max_model_len)
            call = self._call("chat", body, ChatFormat(target.tokenizer))
            prompt = target.chat_prompt(messages, body.add_generation_prompt, body.continue_final_message)
            stream = target.generate([prompt], params, call.id)
        else:
            stream = self._arch_generate(target, body, messages, wants_logprobs=body.logprobs)
            call = self._call("chat", body, ChatFormat(None))
        return await respond(call, stream, request, self.admission.acquire(), body.stream)

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        body.check_supported()
        target = self.target(body.model)
        prompts = body.prompts()
        if isinstance(target, LocalModel):
            params = body.sampling_params(target.max_model_len)
            call = self._call("completions", body, TextFormat(target.tokenizer))
            stream = target.generate(prompts, params, call.id, echo=body.echo)
        else:
            if body.echo:
                raise bad_request(f"model {body.model!r} is an architecture: echo is not available", "echo")
            stream = self._arch_generate(target, body, arch_messages_from_prompts(prompts),
                                         wants_logprobs=body.logprobs is not None)
            call = self._call("completions", body, TextFormat(None))
        return await respond(call, stream, request, self.admission.acquire(), body.stream)

    def _call(self, endpoint: str, body: ChatCompletionRequest | CompletionRequest, fmt: ChatFormat) -> Call:
        call_id = fmt.id_prefix + uuid.uuid4().hex
        return Call(call_id, body.model, endpoint, fmt, self.metrics, include_usage=body.include_usage)

    @staticmethod
    def _arch_generate(target: ArchitectureModel, body: ChatCompletionRequest | CompletionRequest,
                       messages: list[dict[str, str]], wants_logprobs: bool) -> AsyncIterator[Generation]:
        if wants_logprobs:
            raise bad_request(f"model {body.model!r} is an architecture: logprobs are not available", "logprobs")
        return target.generate(messages, body.n, seed=body.seed, tests=body.lamina.tests, trace=body.lamina.trace,
                               ignored=body.sampling_fields_set())


def create_app(models: dict[str, Any], architectures: dict[str, Any], *, api_key: str | None = None,
               max_queue: int = 256) -> FastAPI:
    """`models`: served name -> AsyncEngine; `architectures`: name -> Architecture, served as `arch:<name>`."""
    server = Server(models, architectures, api_key, max_queue)
    app = FastAPI(title="Lamina", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(HTTPCounter, metrics=server.metrics)
    install_error_handlers(app)

    def authorized(request: Request) -> None:
        check_api_key(request, server.api_key)

    v1 = [Depends(authorized)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(server.targets)}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=v1)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [server.model_card(t) for t in server.targets.values()]}

    @app.get("/v1/models/{model:path}", dependencies=v1)
    async def get_model(model: str) -> dict[str, Any]:
        return server.model_card(server.target(model))

    @app.get("/v1/internal/stats", dependencies=v1)
    async def stats() -> JSONResponse:
        return JSONResponse({"queue_depth": server.admission.depth, "queue_capacity": server.admission.capacity,
                             "models": server.engine_stats()})

    @app.post("/v1/chat/completions", dependencies=v1)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        return await server.chat(body, request)

    @app.post("/v1/completions", dependencies=v1)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await server.completions(body, request)

    return app
