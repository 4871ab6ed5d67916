"""An OpenAI-compatible stub on loopback whose answers depend on the sampling settings, so a search has a known best
architecture. Worker subprocesses reach it over HTTP; it records every question it is asked.

For a question of the given task split(s): at temperature `good_temperature`, with n > 1, sample i is right unless
i % 3 == 0 (so the first sample is wrong and the majority is right); with n == 1 it is right for two questions in
three (by a hash of the question). At any other temperature every sample is wrong, each differently (no majority).
The best architecture is therefore generate(samples 3, temperature 0.3) + vote, at accuracy 1.0.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AnswerStub:
    def __init__(self, answers: dict[str, str], good_temperature: float = 0.3, delay_s: float = 0.0) -> None:
        self.answers = answers  # the user message's content -> the reference answer
        self.good_temperature, self.delay_s = good_temperature, delay_s
        self.asked: list[tuple[str, float, int]] = []  # (question, temperature, n) per request
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps(stub.reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "AnswerStub":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        question = body["messages"][-1]["content"]
        temperature, n = float(body.get("temperature", 1.0)), int(body.get("n", 1))
        with self._lock:
            self.asked.append((question, temperature, n))
        if self.delay_s:
            time.sleep(self.delay_s)
        texts = [self.sample(question, temperature, n, i) for i in range(n)]
        words = sum(len(m["content"].split()) for m in body["messages"])
        return {"choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                            for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": words, "completion_tokens": n}}

    def sample(self, question: str, temperature: float, n: int, index: int) -> str:
        reference = self.answers.get(question)
        if reference is None:
            return "1"
        good = abs(temperature - self.good_temperature) < 1e-6
        right = good and (index % 3 != 0 if n > 1 else int(hashlib.sha1(question.encode()).hexdigest(), 16) % 3 != 0)
        return reference if right else str(int(float(reference)) + 1 + index)


def task_answers(task_name: str, splits: tuple[str, ...] = ("dev", "train", "test")) -> dict[str, str]:
    from lamina.tasks.task import load_task

    task = load_task(task_name)
    return {task.messages(e)[-1]["content"]: e.reference for split in splits for e in task.examples(split)}


def stub_space(base_url: str, **extra: Any) -> dict[str, Any]:
    """A small space over the stub: 2 stacks x samples {1, 3} x temperature {0, 0.3, 0.8}."""
    space = {"name": "stub",
             "models": {"m": {"backend": "openai", "model": "stub", "base_url": base_url, "max_retries": 0,
                              "supports_n": True, "params": {"max_tokens": 8}}},
             "stacks": [["generate"], ["generate", "vote"]],
             "components": {"generate": {"samples": [1, 3], "temperature": [0.0, 0.3, 0.8]},
                            "vote": {"method": ["majority"]}},
             "constraints": {"max_calls": 4}}
    space.update(extra)
    return space
