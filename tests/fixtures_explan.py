"""Fixtures for the explanation tests: a real OpenAI-compatible HTTP server on 127.0.0.1, a
tiny BERT + WordPiece tokenizer, and config helpers.

The server is the standard library's ``http.server`` in a thread answering
``POST /v1/chat/completions`` with the OpenAI JSON shape, so the tests exercise the real
``openai`` client, its HTTP stack, our retries and our cache, not a mock of the library.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: a responder gets (request body, 0-based request number) and returns (status, content|payload);
#: a bytes payload is sent as the raw body (a server that answers something other than JSON)
Responder = Callable[[dict, int], tuple[int, Any]]

API_ENV_PREFIXES = ("OPENAI_", "ENGINE", "AZURE_OPENAI")


def completion(content: str, model: str = "m") -> dict:
    """The OpenAI chat.completion JSON for one assistant message."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FakeOpenAI:
    """A scripted OpenAI-compatible server. ``requests`` holds every request body received."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer._lock:
                    idx = len(outer.requests)
                    outer.requests.append(body)
                    outer.auth.append(self.headers.get("Authorization") or self.headers.get("api-key") or "")
                    outer.paths.append(self.path)
                if not self.path.endswith("/chat/completions"):
                    status, payload = 404, {"error": {"message": f"no route {self.path}"}}
                else:
                    status, payload = outer.responder(body, idx)
                    if status == 200 and isinstance(payload, str):
                        payload = completion(payload, body.get("model", "m"))
                    elif status != 200 and isinstance(payload, str):
                        payload = {"error": {"message": payload, "type": "test", "code": status}}
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def clear_api_env(monkeypatch: Any) -> None:
    """Remove every OPENAI_* / ENGINE* variable so a developer's real key can never be used."""
    import os

    for k in list(os.environ):
        if k.startswith(API_ENV_PREFIXES):
            monkeypatch.delenv(k, raising=False)


def tiny_cfg(tmp_path: Path, *overrides: str):
    """The tiny profile rooted in tmp_path, with fast API retries."""
    from core.config import load_config

    return load_config(
        "configs/tiny.yaml",
        [
            f"paths.root={tmp_path / 'out'}",
            f"paths.raw_dir={tmp_path / 'raw'}",
            f"paths.models_dir={tmp_path / 'models'}",
            "api.backoff_base_s=0.001",
            "api.backoff_max_s=0.01",
            "api.max_retries=3",
            "api.timeout_s=10",
            # the paper's discriminator methods (tiny.yaml swaps them for its e2e run)
            "discriminator.cls_methods=[both, none, chatgpt]",
            "discriminator.reg_methods=[both, none, chatgpt]",
            *overrides,
        ],
    )


def make_tiny_bert(path: Path, words: list[str]) -> Path:
    """A 2-layer, 64-wide BERT and a WordPiece tokenizer over `words`, saved at `path`.

    Small enough to fine-tune in seconds on one CPU core; no network.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + sorted({w.lower() for w in words} | set(".,!?'"))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same encoder in every run: the learning tests are deterministic
        model = BertModel(config)
    model.save_pretrained(path)  # a bare encoder, like all-MiniLM-L6-v2
    return path
