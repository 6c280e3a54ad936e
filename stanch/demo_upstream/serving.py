"""Which model answers a request, and how: the demo table, the fine-tunes on top of it, the
sampling, the failing counter of the bad update, and the log of what the server received."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stanch.demo_upstream.conversation import Conversation, Reply, Sampling
from stanch.demo_upstream.finetune import learned_answer
from stanch.demo_upstream.models import DEMO_MODELS, DemoModel
from stanch.demo_upstream.store import DemoStore

OWNER = "stanch-demo"
EMBEDDING_MODEL = "demo-embedding"
MODERATION_MODELS = ("omni-moderation-latest", "text-moderation-latest")
DEFAULT_EMBEDDING_DIMENSIONS = 16
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default
REQUEST_LOG_SIZE = 200


class UpstreamFailure(Exception):
    """The bad update's simulated server error (HTTP 500)."""


@dataclass
class ServedModel:
    """A model a request can name: a demo model, or a fine-tune of one (possibly of a fine-tune)."""

    name: str
    base: DemoModel
    lessons: list[list[dict[str, Any]]] = field(default_factory=list)  # newest fine-tune first

    def answer(self, conversation: Conversation, sampling: Sampling) -> Reply:
        for examples in self.lessons:
            learned = learned_answer(examples, conversation)
            if learned is not None:
                return Reply(learned)
        return self.base.answer(conversation, sampling)


class ModelCatalogue:
    def __init__(self, store: DemoStore) -> None:
        self.store = store
        self._requests_seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._process_rng = random.Random()

    def resolve(self, name: str) -> ServedModel | None:
        if name in DEMO_MODELS:
            return ServedModel(name, DEMO_MODELS[name])
        lessons = []
        current = name
        while (fine_tune := self.store.fine_tuned_model(current)) is not None:
            lessons.append(fine_tune["examples"])
            current = fine_tune["base_model"]
        if not lessons or current not in DEMO_MODELS:
            return None
        return ServedModel(name, DEMO_MODELS[current], lessons)

    def can_fine_tune(self, name: str) -> bool:
        return self.resolve(name) is not None

    def embeds(self, name: str) -> bool:
        return name == EMBEDDING_MODEL or self.resolve(name) is not None

    def listing(self) -> list[dict[str, Any]]:
        created = 1764979200  # 2025-12-06: a fixed date, these models never change
        names = [*DEMO_MODELS, EMBEDDING_MODEL, *MODERATION_MODELS]
        listed = [{"id": name, "object": "model", "created": created, "owned_by": OWNER} for name in names]
        listed += [
            {"id": ft["name"], "object": "model", "created": ft["created_at"], "owned_by": OWNER} for ft in self.store.fine_tuned_models()
        ]
        return listed

    def count_request(self, model: ServedModel) -> None:
        """Raise UpstreamFailure on the bad update's every Nth request (deterministic)."""
        every = model.base.fails_one_in
        if every is None:
            return
        with self._lock:
            seen = self._requests_seen[model.base.name] = self._requests_seen.get(model.base.name, 0) + 1
        if seen % every == 0:
            raise UpstreamFailure(f"{model.name} failed this request (the demo's bad update fails one request in {every})")

    def reset_counters(self) -> None:
        with self._lock:
            self._requests_seen.clear()

    def sampling(self, temperature: float | None, seed: int | None) -> Sampling:
        # A seed makes a request repeatable, as OpenAI's `seed` tries to; without one, the
        # process's generator gives every sample a fresh draw.
        rng = random.Random(seed) if seed is not None else self._process_rng
        return Sampling(DEFAULT_TEMPERATURE if temperature is None else temperature, rng)


def embedding(text: str, model: str, dimensions: int) -> list[float]:
    """A unit vector derived from a hash of the text: equal texts, equal vectors."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{model}|{counter}|{text}".encode()).digest()
        values += [(byte - 127.5) / 127.5 for byte in digest]
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [round(value / norm, 6) for value in values]


def encode_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class RequestLog:
    """The last requests received, newest last, so a test can show what an upstream really saw."""

    def __init__(self, size: int = REQUEST_LOG_SIZE) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._seq = 0

    def record(self, method: str, path: str, model: str | None, body: Any) -> None:
        with self._lock:
            self._seq += 1
            self._entries.append(
                {"seq": self._seq, "received_at": time.time(), "method": method, "path": path, "model": model, "body": body}
            )

    def recent(self, model: str | None, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            entries = [entry for entry in self._entries if model is None or entry["model"] == model]
        return entries[-limit:] if limit else []

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
