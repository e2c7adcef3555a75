"""The project's one OpenAI-compatible chat client (summaries, GPT-4-ICL, ChatGPT explanations, judge).

Why one module: every API call in the suite costs money or quota, so the rules that protect
that budget live in a single place that every stage shares:

* **Endpoints from the environment** (keys never come from YAML, never reach logs or files).
  The original's variables are honoured: ``OPENAI_API_KEY`` / ``OPENAI_API_BASE`` /
  ``OPENAI_API_TYPE`` / ``OPENAI_API_VERSION`` / ``ENGINE``, and the numbered families
  ``OPENAI_API_KEY_01`` with ``OPENAI_API_BASE_01``, ``OPENAI_API_TYPE_01``,
  ``OPENAI_API_VERSION_01``, ``ENGINE_01`` (``_02``, ...). A numbered sibling that is not
  set falls back to the un-numbered variable, then to ``cfg.api``. A base URL with no key
  (``cfg.api.base_url`` or ``OPENAI_API_BASE``) is a keyless local server such as vLLM.
* **Several endpoints at once**, used round-robin, so many keys spread the load; a retry goes
  to the next endpoint, so one rate-limited key does not stall the run.
* **A concurrency limit** (``cfg.api.max_concurrency`` threads / in-flight requests), and a
  timeout that leaves the server's queue out: an HTTP timeout runs from the moment a
  request is sent, so against a server with fewer slots than requests in flight (llama.cpp
  answers one at a time by default) the time a request waits there would count, it would
  be given up and computed again, unseen. ``api.timeout_s`` is therefore the budget of one
  request's own processing: with k requests allowed in flight, each may take k times that
  (it may be queued behind the other k - 1, in any order). If one still times out with others in
  flight, the limit is halved and the request re-sent without charging it an attempt or
  the circuit breaker; at one in flight a timeout is the server's own slowness and counts
  as usual (:class:`_Gate`).
* **Retries with exponential backoff and jitter** on 429, 408/409, 5xx, timeouts and
  connection errors. The openai library's own retries are switched off (``max_retries=0``)
  so the number of attempts is ours and visible in :attr:`ChatClient.stats`.
* **A circuit breaker**: ``api.max_consecutive_failures`` attempts in a row that failed for
  connection, timeout or server reasons stop the whole batch with one error; a dead
  endpoint costs seconds, not every request's retries one after the other.
* **Why each answer stopped**: ``finish_reason`` is kept with the answer and in the cache, so
  an answer cut at ``max_tokens`` is never mistaken for a complete one (:class:`Reply`).
* **One summary line per batch**: answered, from cache, sent, retried, failed, truncated.
* **An on-disk cache per request**, keyed by the sha256 of (model, messages, parameters),
  written atomically under ``cfg.cache_dir/"api"``: no request is ever paid for twice, and
  a re-run of any stage that only needs cached answers works with no endpoint at all.

Usage::

    client = ChatClient(cfg)
    text = client.complete([{"role": "user", "content": "Hi"}], temperature=0)
    texts = client.complete_many([msgs1, msgs2], desc="judge")   # None where a request failed
    replies = client.complete_many([msgs1], replies=True)         # Reply(text, finish_reason, cached)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from core.config import Config
from core.utils import StageError, atomic_open

log = logging.getLogger(__name__)
# the HTTP stack logs every request at INFO; one line per judged sample drowns the progress bar
for _name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai"):
    logging.getLogger(_name).setLevel(logging.WARNING)

Messages = list[dict[str, str]]

#: HTTP statuses worth retrying: rate limits, request timeout/conflict, server errors
RETRY_STATUSES = frozenset({408, 409, 429})
#: statuses that no retry can fix and that would fail every other request too
FATAL_STATUSES = frozenset({401, 403, 404})

_NUMBERED_KEY = re.compile(r"^OPENAI_API_KEY_(\d+)$")
#: placeholder key for keyless OpenAI-compatible servers (vLLM's convention)
KEYLESS = "EMPTY"


class _MalformedResponse(Exception):
    """A 200 answer without the chat-completions shape (a proxy's error page, say): retried."""


class _Gate:
    """A concurrency limit that can be lowered while requests are in flight.

    `enter()` blocks until fewer than `limit` requests are in flight and returns how many
    were in flight then, this one included: a timeout with others beside it may be time
    queued at the server rather than its slowness (see the module docstring).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._in_flight = 0
        self._cond = threading.Condition()

    def enter(self) -> int:
        with self._cond:
            while self._in_flight >= self.limit:
                self._cond.wait()
            self._in_flight += 1
            return self._in_flight

    def leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def lower(self, seen: int) -> int | None:
        """Halve the limit below `seen` in-flight requests; the new limit, or None when it
        was already that low (another thread lowered it for the same burst)."""
        with self._cond:
            new = max(1, seen // 2)
            if new >= self.limit:
                return None
            self.limit = new
            return new


class APIRequestFailed(StageError):
    """One request failed for good (retries exhausted, or rejected as malformed)."""


class FatalAPIError(StageError):
    """No endpoint configured, or an error that every request would hit (bad key, unknown model,
    an endpoint that stopped answering)."""


@dataclass(frozen=True)
class Reply:
    """One answer with why generation stopped; ``finish_reason`` "" when the server did not say
    (and for cache entries written before it was recorded)."""

    text: str
    finish_reason: str = ""
    cached: bool = False

    @property
    def truncated(self) -> bool:
        """The answer was cut at ``max_tokens``: whatever it says may be incomplete."""
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Endpoint:
    """One place to send requests. ``api_key`` is excluded from repr so it cannot leak into logs."""

    name: str
    api_type: str
    base_url: str
    model: str
    api_version: str
    api_key: str = field(repr=False)

    @property
    def is_azure(self) -> bool:
        return self.api_type.lower().startswith("azure")

    def describe(self) -> str:
        """A log-safe description: name, type, host and model, never the key."""
        where = self.base_url or "api.openai.com"
        return f"{self.name} ({self.api_type} {where}, model {self.model})"


def _env(environ: Mapping[str, str], name: str) -> str:
    return (environ.get(name) or "").strip()


def discover_endpoints(cfg: Config, environ: Mapping[str, str] | None = None) -> list[Endpoint]:
    """All usable endpoints from the environment plus ``cfg.api`` defaults, in a stable order.

    An endpoint without a model is unusable (we never guess a paid model); it is skipped with
    a warning that names the variable to set, not the key.
    """
    env = os.environ if environ is None else environ
    api = cfg.api
    out: list[Endpoint] = []

    def build(name: str, key: str, suffix: str) -> None:
        base = _env(env, f"OPENAI_API_BASE{suffix}") or _env(env, "OPENAI_API_BASE") or api.base_url
        api_type = _env(env, f"OPENAI_API_TYPE{suffix}") or _env(env, "OPENAI_API_TYPE") or api.api_type
        version = _env(env, f"OPENAI_API_VERSION{suffix}") or _env(env, "OPENAI_API_VERSION") or api.api_version
        model = _env(env, f"ENGINE{suffix}") or _env(env, "ENGINE") or api.model
        if not model:
            log.warning(
                "API endpoint %s has a key/base URL but no model: set ENGINE%s or api.model; skipped",
                name, suffix,
            )
            return
        if api_type.lower().startswith("azure") and not base:
            log.warning("Azure endpoint %s needs OPENAI_API_BASE%s (the resource URL); skipped", name, suffix)
            return
        out.append(Endpoint(name, api_type, base, model, version, key or KEYLESS))

    numbered = sorted(
        (m.group(1) for k in env if (m := _NUMBERED_KEY.match(k)) and _env(env, k)), key=lambda s: (int(s), s)
    )
    for num in numbered:
        build(f"key_{num}", _env(env, f"OPENAI_API_KEY_{num}"), f"_{num}")
    if _env(env, "OPENAI_API_KEY"):
        build("default", _env(env, "OPENAI_API_KEY"), "")
    elif not out and (_env(env, "OPENAI_API_BASE") or api.base_url):
        build("keyless", "", "")
    return out


def request_key(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of (model, messages, params): the cache identity of a request."""
    blob = json.dumps(
        {"model": model, "messages": list(messages), "params": dict(params)},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _check_messages(messages: Any) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise StageError(f"chat messages must be a non-empty list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise StageError(f"chat message {i} must be a dict with string 'role' and 'content', got {m!r:.200}")
    return messages


class ChatClient:
    """OpenAI-compatible chat completions with endpoints, retries, a concurrency limit and a cache.

    Construction never fails for lack of an endpoint: answers already in the cache are served
    without one. The first request that needs the network raises :class:`FatalAPIError`
    naming the variables to set.
    """

    def __init__(self, cfg: Config, environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.api = cfg.api
        self.endpoints = discover_endpoints(cfg, environ)
        env = os.environ if environ is None else environ
        models = sorted({e.model for e in self.endpoints})
        #: the logical model name used in cache keys when a call does not name one
        self.model = _env(env, "ENGINE") or self.api.model or "|".join(models)
        self.cache_dir = cfg.cache_dir / "api"
        self._secrets = [e.api_key for e in self.endpoints if e.api_key and e.api_key != KEYLESS]
        self._rr = itertools.cycle(range(len(self.endpoints))) if self.endpoints else None
        self._rr_lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._gate = _Gate(int(self.api.max_concurrency))
        self._stats_lock = threading.Lock()
        #: counters: requests sent (each attempt), cache hits, retries, failed requests, answers
        #: cut at max_tokens (finish_reason "length", sent or cached)
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0, "truncated": 0}
        # circuit breaker: consecutive transient failures across all threads; once tripped,
        # every request of this client fails at once with the same message
        self._streak = 0
        self._tripped: str | None = None
        self._trip_event = threading.Event()
        if self.endpoints:
            log.info("API endpoints: %s", "; ".join(e.describe() for e in self.endpoints))

    # ------------------------------------------------------------------ public API
    @staticmethod
    def available(cfg: Config, environ: Mapping[str, str] | None = None) -> bool:
        """True when at least one usable endpoint is configured (stages skip API work otherwise)."""
        return bool(discover_endpoints(cfg, environ))

    def complete(self, messages: Messages, *, use_cache: bool | None = None, **params: Any) -> str:
        """The assistant's reply to ``messages``. ``params`` go to ``chat.completions.create``
        (``model`` overrides the endpoint's model for every endpoint).

        Raises :class:`APIRequestFailed` when retries are exhausted, :class:`FatalAPIError` when
        no endpoint is configured, the endpoint rejects the credentials / model, or the circuit
        breaker tripped.
        """
        return self.reply(messages, use_cache=use_cache, **params).text

    def reply(self, messages: Messages, *, use_cache: bool | None = None, **params: Any) -> Reply:
        """:meth:`complete` with the answer's ``finish_reason`` and whether it came from the cache."""
        messages = _check_messages(messages)
        model, call_params = self._resolve_params(params)
        use_cache = self.api.cache if use_cache is None else use_cache
        key = request_key(model, messages, call_params)
        if use_cache:
            hit = self._cache_get(key)
            if hit is not None:
                self._count("cache_hits")
                if hit.truncated:
                    self._count("truncated")
                return hit
        answer = self._call(messages, params.get("model"), call_params)
        if answer.truncated:
            self._count("truncated")
        if use_cache:
            self._cache_put(key, model, messages, call_params, answer)
        return answer

    def complete_many(
        self, list_of_messages: Sequence[Messages], desc: str = "api", *, use_cache: bool | None = None,
        replies: bool = False, **params: Any,
    ) -> list[Any]:
        """Answers for many conversations, in order, ``max_concurrency`` at a time: texts, or
        :class:`Reply` objects with ``replies=True``.

        A request that fails for good gives ``None`` in its slot (counted and logged), so one
        bad sample does not lose the others; a fatal error (no endpoint, bad key, the circuit
        breaker) stops the whole batch and raises, since every remaining request would fail
        the same way. Answers that arrived before are in the cache, so a re-run keeps them.
        """
        results: list[Any] = [None] * len(list_of_messages)
        if not list_of_messages:
            return results
        before = dict(self.stats)
        failed = 0
        workers = max(1, min(int(self.api.max_concurrency), len(list_of_messages)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api")
        try:
            futures = {
                pool.submit(self.reply, msgs, use_cache=use_cache, **params): i
                for i, msgs in enumerate(list_of_messages)
            }
            for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, leave=False):
                i = futures[fut]
                try:
                    answer = fut.result()
                    results[i] = answer if replies else answer.text
                except APIRequestFailed as e:
                    failed += 1
                    log.warning("%s: request %d failed: %s", desc, i, e)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            self._log_summary(desc, results, before, stopped=True)
            raise
        pool.shutdown(wait=True)
        self._log_summary(desc, results, before)
        if failed:
            log.warning("%s: %d of %d requests failed after retries (left as None)", desc, failed, len(list_of_messages))
        return results

    def _log_summary(self, desc: str, results: list[Any], before: Mapping[str, int], stopped: bool = False) -> None:
        """One line per batch, so a run's API cost and trouble are visible without DEBUG logs."""
        d = {k: self.stats[k] - before.get(k, 0) for k in self.stats}
        n, answered = len(results), sum(r is not None for r in results)
        log.info(
            "%s: %d request(s)%s: %d answered (%d from cache), %d sent, %d retried, %d failed, %d cut at max_tokens",
            desc, n, " (batch stopped)" if stopped else "", answered, d["cache_hits"], d["requests"],
            d["retries"], d["failures"], d["truncated"],
        )

    # ------------------------------------------------------------------ internals
    def _resolve_params(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Defaults from cfg.api under the caller's params; the model is split off for the key."""
        call = {"temperature": self.api.temperature, "max_tokens": self.api.max_tokens}
        call.update({k: v for k, v in params.items() if k != "model"})
        return str(params.get("model") or self.model), call

    def _count(self, what: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[what] += n

    def _next_endpoint(self) -> Endpoint:
        if not self.endpoints or self._rr is None:
            raise FatalAPIError(
                "no API endpoint configured and the answer is not cached: set OPENAI_API_KEY and ENGINE "
                "(or OPENAI_API_KEY_01 / ENGINE_01 ...; OPENAI_API_TYPE=azure with OPENAI_API_BASE and "
                "OPENAI_API_VERSION for Azure), or api.base_url + api.model in the config for a local "
                "OpenAI-compatible server such as vLLM"
            )
        with self._rr_lock:
            return self.endpoints[next(self._rr)]

    def _client_for(self, ep: Endpoint) -> Any:
        with self._clients_lock:
            client = self._clients.get(ep.name)
            if client is None:
                import openai

                common = {"api_key": ep.api_key, "max_retries": 0, "timeout": float(self.api.timeout_s)}
                if ep.is_azure:
                    client = openai.AzureOpenAI(azure_endpoint=ep.base_url, api_version=ep.api_version, **common)
                else:
                    client = openai.OpenAI(base_url=ep.base_url or None, **common)
                self._clients[ep.name] = client
            return client

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = float(self.api.backoff_base_s) * (2**attempt)
        wait = base * (1.0 + random.random())  # full-range jitter so parallel workers spread out
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, float(self.api.backoff_max_s))

    def _transient_failure(self, last: str) -> None:
        """Count one connection/timeout/server failure; trip the breaker at the configured streak."""
        limit = int(self.api.max_consecutive_failures)
        with self._stats_lock:
            self._streak += 1
            if limit and self._streak >= limit and self._tripped is None:
                self._tripped = (
                    f"API stopped: {self._streak} consecutive attempts failed with no answer in between "
                    f"(last: {last}); the endpoint looks down or overloaded. Answers received so far are "
                    f"cached; re-run when it is back (api.max_consecutive_failures={limit}, 0 = off)"
                )
                self._trip_event.set()

    def _queued_timeout(self, in_flight: int, timeout: float) -> None:
        """A timeout with `in_flight` requests out: lower the concurrency below that (said
        once per change; another timed-out request of the same burst may have lowered it
        already). The caller re-sends without charging an attempt: each such re-send goes
        out with fewer in flight than the last, so it ends at one in flight, where a
        timeout counts as usual."""
        new = self._gate.lower(in_flight)
        if new is not None:
            log.warning(
                "an API request timed out after %g s with %d request(s) in flight: the server answers "
                "fewer at once than that, or slower than api.timeout_s each; lowering the concurrency "
                "to %d for this run (set api.max_concurrency to the server's slots)",
                timeout, in_flight, new)

    def _check_breaker(self) -> None:
        if self._tripped is not None:
            self._count("failures")
            raise FatalAPIError(self._tripped)

    def _call(self, messages: Messages, model_override: str | None, params: dict[str, Any]) -> Reply:
        import openai

        attempts = int(self.api.max_retries) + 1
        last = ""
        attempt = 0
        while attempt < attempts:
            self._check_breaker()
            ep = self._next_endpoint()
            client = self._client_for(ep)
            retry_after: float | None = None
            in_flight, timeout = 1, float(self.api.timeout_s)
            try:
                in_flight = self._gate.enter()
                timeout = float(self.api.timeout_s) * self._gate.limit
                try:
                    self._check_breaker()
                    self._count("requests")
                    resp = client.chat.completions.create(
                        model=model_override or ep.model, messages=messages,
                        timeout=timeout, **params
                    )
                finally:
                    self._gate.leave()
                choices = getattr(resp, "choices", None)
                if not choices or getattr(choices[0], "message", None) is None:
                    raise _MalformedResponse("response has no choices[0].message")
                content = choices[0].message.content
                with self._stats_lock:
                    self._streak = 0
                return Reply(content if content is not None else "", str(getattr(choices[0], "finish_reason", "") or ""))
            except openai.APIStatusError as e:
                status = e.status_code
                msg = self._redact(str(e))[:300]
                if status in FATAL_STATUSES:
                    self._count("failures")
                    raise FatalAPIError(f"API endpoint {ep.describe()} answered HTTP {status}: {msg}") from None
                if status not in RETRY_STATUSES and status < 500:
                    self._count("failures")
                    raise APIRequestFailed(f"API endpoint {ep.describe()} rejected the request (HTTP {status}): {msg}") from None
                last = f"HTTP {status} from {ep.name}: {msg}"
                retry_after = _retry_after(e)
                if status >= 500:  # rate limits (429) are the server working, not failing
                    self._transient_failure(last)
            except openai.APITimeoutError as e:
                last = f"{type(e).__name__} from {ep.name}: {self._redact(str(e))[:200]}"
                if in_flight > 1:
                    self._queued_timeout(in_flight, timeout)
                    self._count("retries")
                    continue  # the same attempt again, with fewer in flight
                self._transient_failure(last)
            except openai.APIConnectionError as e:
                last = f"{type(e).__name__} from {ep.name}: {self._redact(str(e))[:200]}"
                self._transient_failure(last)
            except (_MalformedResponse, openai.APIResponseValidationError, ValueError) as e:
                # ValueError: a 200 whose body is not JSON (a proxy's HTML page) reaches us as
                # the JSON decoder's error; it is the server misbehaving, so it is retried
                last = f"malformed response from {ep.name}: {self._redact(str(e))[:200]}"
                self._transient_failure(last)
            attempt += 1
            if attempt < attempts:
                self._check_breaker()
                wait = self._backoff(attempt, retry_after)
                self._count("retries")
                log.debug("API retry %d/%d in %.2fs after %s", attempt, attempts - 1, wait, last)
                self._trip_event.wait(wait)  # a tripped breaker wakes every sleeping retry
        self._count("failures")
        raise APIRequestFailed(f"API request failed after {attempts} attempts; last error: {last}")

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> Reply | None:
        path = self._cache_path(key)
        if not path.is_file():
            return None
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            return Reply(str(obj["response"]), str(obj.get("finish_reason") or ""), cached=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("unreadable API cache entry %s; asking again", path)
            return None

    def _cache_put(self, key: str, model: str, messages: Messages, params: dict[str, Any], answer: Reply) -> None:
        entry = {"model": model, "params": params, "messages": messages, "response": answer.text,
                 "finish_reason": answer.finish_reason, "created": time.time()}
        with atomic_open(self._cache_path(key)) as f:
            json.dump(entry, f, ensure_ascii=False)


def _retry_after(err: Any) -> float | None:
    """Seconds from a Retry-After header, when the server sent a numeric one."""
    try:
        value = err.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None
