"""ChatClient against a real OpenAI-compatible HTTP server on 127.0.0.1 (no mock of the library)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from core.api_client import (
    APIRequestFailed,
    ChatClient,
    FatalAPIError,
    Reply,
    discover_endpoints,
    request_key,
)
from core.utils import StageError
from tests.fixtures_explan import FakeOpenAI, clear_api_env, completion, tiny_cfg

KEY = "sk-test-SECRET-0123456789"


def _msgs(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def _echo(body: dict, n: int) -> tuple[int, str]:
    return 200, "echo: " + body["messages"][-1]["content"]


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch):
    clear_api_env(monkeypatch)


def test_endpoint_discovery_numbered_fallbacks_and_no_key_in_repr(tmp_path):
    cfg = tiny_cfg(tmp_path, "api.model=cfg-model", "api.api_version='v-cfg'")
    env = {
        "OPENAI_API_KEY_01": "k1", "OPENAI_API_BASE_01": "https://a.example/", "OPENAI_API_TYPE_01": "azure",
        "OPENAI_API_VERSION_01": "2023-03-15-preview", "ENGINE_01": "gpt4-deploy",
        "OPENAI_API_KEY_02": "k2",  # siblings missing -> un-numbered vars -> cfg.api
        "OPENAI_API_BASE": "http://local:8000/v1",
        "OPENAI_API_KEY_10": "k10", "ENGINE_10": "ten",
        "OPENAI_API_KEY": "k0", "ENGINE": "env-engine",
    }
    eps = discover_endpoints(cfg, env)
    assert [e.name for e in eps] == ["key_01", "key_02", "key_10", "default"]
    a, b, c, d = eps
    assert (a.api_type, a.base_url, a.api_version, a.model, a.is_azure) == (
        "azure", "https://a.example/", "2023-03-15-preview", "gpt4-deploy", True)
    # _02 has no siblings: the un-numbered OPENAI_API_BASE and ENGINE are used
    assert (b.base_url, b.model, b.api_type, b.api_version) == ("http://local:8000/v1", "env-engine", "openai", "v-cfg")
    assert c.model == "ten" and d.model == "env-engine" and d.api_key == "k0"
    assert all(k not in repr(eps) for k in ("k1", "k2", "k10", "k0'"))
    assert "k1" not in a.describe()


def test_endpoint_needs_a_model_and_keyless_base_url(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert discover_endpoints(cfg, {"OPENAI_API_KEY": "k"}) == []  # a key alone never guesses a paid model
    assert not ChatClient.available(cfg, {"OPENAI_API_KEY": "k"})
    assert not ChatClient.available(cfg, {})
    local = tiny_cfg(tmp_path, "api.base_url=http://127.0.0.1:9/v1", "api.model=local")
    (ep,) = discover_endpoints(local, {})
    assert ep.name == "keyless" and ep.base_url == "http://127.0.0.1:9/v1" and ep.model == "local"
    assert ChatClient.available(local, {})


def test_no_endpoint_is_a_clear_error(tmp_path):
    client = ChatClient(tiny_cfg(tmp_path), environ={})
    with pytest.raises(FatalAPIError) as ei:
        client.complete(_msgs("hi"))
    assert isinstance(ei.value, StageError)
    assert "OPENAI_API_KEY" in str(ei.value) and "ENGINE" in str(ei.value)
    with pytest.raises(FatalAPIError):
        client.complete_many([_msgs("a"), _msgs("b")])
    with pytest.raises(StageError):
        client.complete([{"role": "user"}])  # malformed message named, not sent


def test_normal_answers_params_auth_and_cache(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(_echo) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=judge-model", "api.max_tokens=77")
        env = {"OPENAI_API_KEY": KEY}
        client = ChatClient(cfg, environ=env)
        out = client.complete_many([_msgs(f"q{i}") for i in range(6)], desc="t")
        assert out == [f"echo: q{i}" for i in range(6)]  # order kept under concurrency
        assert len(srv.requests) == 6 and client.stats["requests"] == 6
        body = srv.requests[0]
        assert body["model"] == "judge-model" and body["max_tokens"] == 77 and body["temperature"] == 0.0
        assert srv.auth[0] == f"Bearer {KEY}"
        # explicit params and model override reach the server and are part of the cache key
        assert client.complete(_msgs("q0"), temperature=0.7, model="other") == "echo: q0"
        assert srv.requests[-1]["model"] == "other" and srv.requests[-1]["temperature"] == 0.7
        assert len(srv.requests) == 7

        # second run, fresh client: everything comes from the disk cache, zero requests
        again = ChatClient(cfg, environ=env)
        assert again.complete_many([_msgs(f"q{i}") for i in range(6)]) == out
        assert again.complete(_msgs("q0"), temperature=0.7, model="other") == "echo: q0"
        assert len(srv.requests) == 7 and again.stats == {"requests": 0, "cache_hits": 7, "retries": 0, "failures": 0, "truncated": 0}
    # cached answers are served even with no endpoint at all
    offline = ChatClient(cfg, environ={})
    assert offline.complete(_msgs("q3")) == "echo: q3"
    files = list((cfg.cache_dir / "api").rglob("*.json"))
    assert len(files) == 7
    assert not list((cfg.cache_dir / "api").rglob("*.tmp"))
    assert all(KEY not in f.read_text() for f in files)
    assert KEY not in caplog.text


def test_cache_key_is_exact():
    m = _msgs("x")
    k = request_key("a", m, {"temperature": 0})
    assert k == request_key("a", [dict(x) for x in m], {"temperature": 0})
    assert len({k, request_key("b", m, {"temperature": 0}), request_key("a", m, {"temperature": 1}),
                request_key("a", _msgs("y"), {"temperature": 0})}) == 4


def test_429_then_success_is_retried(tmp_path):
    def responder(body: dict, n: int):
        return (429, "slow down") if n == 0 else (200, "ok")

    with FakeOpenAI(responder) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m")
        client = ChatClient(cfg, environ={"OPENAI_API_KEY": KEY})
        assert client.complete(_msgs("hi")) == "ok"
        assert len(srv.requests) == 2
        assert client.stats["retries"] == 1 and client.stats["requests"] == 2


def test_500_until_retries_run_out(tmp_path, caplog):
    with FakeOpenAI(lambda body, n: (500, f"boom {KEY}")) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m", "api.max_retries=3")
        client = ChatClient(cfg, environ={"OPENAI_API_KEY": KEY})
        t0 = time.time()
        with pytest.raises(APIRequestFailed) as ei:
            client.complete(_msgs("hi"))
        assert time.time() - t0 < 5
        assert len(srv.requests) == 4  # 1 + 3 retries, the library's own retries are off
        assert "500" in str(ei.value) and KEY not in str(ei.value)  # the echoed key is redacted
        # in a batch the failure is a None in its slot, the others still answer
        srv.responder = lambda body, n: (500, "boom") if body["messages"][-1]["content"] == "bad" else (200, "fine")
        out = client.complete_many([_msgs("good"), _msgs("bad"), _msgs("good2")])
        assert out == ["fine", None, "fine"]
        assert client.stats["failures"] == 2
    assert not (cfg.cache_dir / "api").exists() or not any(
        "boom" in f.read_text() for f in (cfg.cache_dir / "api").rglob("*.json"))  # failures never cached
    assert KEY not in caplog.text


def test_fatal_401_stops_the_batch(tmp_path):
    with FakeOpenAI(lambda body, n: (401, "invalid api key")) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m", "api.max_concurrency=1")
        client = ChatClient(cfg, environ={"OPENAI_API_KEY": KEY})
        with pytest.raises(FatalAPIError, match="401"):
            client.complete_many([_msgs(str(i)) for i in range(20)])
        assert len(srv.requests) < 20  # not retried, not repeated for every sample


def test_round_robin_over_keys_and_concurrency_limit(tmp_path):
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def slow(body: dict, n: int):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return 200, "x" + body["messages"][-1]["content"]

    with FakeOpenAI(slow) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m", "api.max_concurrency=2")
        env = {"OPENAI_API_KEY_01": "key-one", "OPENAI_API_KEY_02": "key-two"}
        client = ChatClient(cfg, environ=env)
        out = client.complete_many([_msgs(str(i)) for i in range(8)])
        assert out == [f"x{i}" for i in range(8)]
        assert state["peak"] <= 2
        assert sorted(srv.auth) == ["Bearer key-one"] * 4 + ["Bearer key-two"] * 4


def test_dead_endpoint_trips_the_circuit_breaker_in_seconds(tmp_path, caplog):
    """Connection refused on every attempt: the batch stops after max_consecutive_failures
    attempts in all, not after each of the 20 requests has used up its own retries."""
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_cfg(tmp_path, f"api.base_url=http://127.0.0.1:{port}/v1", "api.model=m", "api.max_retries=6",
                   "api.max_consecutive_failures=5", "api.backoff_base_s=0.2", "api.max_concurrency=4")
    client = ChatClient(cfg, environ={})
    caplog.set_level(logging.INFO)
    t0 = time.time()
    with pytest.raises(FatalAPIError, match="5 consecutive attempts failed") as ei:
        client.complete_many([_msgs(str(i)) for i in range(20)], desc="judge")
    assert time.time() - t0 < 10
    assert "max_consecutive_failures" in str(ei.value)
    assert client.stats["requests"] < 12  # 20 x 7 attempts without the breaker
    assert "judge: 20 request(s) (batch stopped): 0 answered" in caplog.text


def _one_slot_server(seconds: float):
    """A responder that answers one request at a time (llama.cpp's default), `seconds` each."""
    slot = threading.Lock()

    def respond(body: dict, n: int):
        with slot:
            time.sleep(seconds)
        return 200, "ok " + body["messages"][-1]["content"]

    return respond


def test_one_at_a_time_server_gets_no_duplicated_work(tmp_path, caplog):
    """6 requests in flight against a one-slot server that takes 0.3 s each, api.timeout_s
    0.5: the 6th waits 1.5 s there. The timeout counts one request's own processing, not the
    queue, so nothing times out and the server computes each request exactly once."""
    caplog.set_level(logging.INFO)
    with FakeOpenAI(_one_slot_server(0.3)) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m", "api.max_concurrency=6",
                       "api.timeout_s=0.5", "api.max_retries=0")
        client = ChatClient(cfg, environ={})
        out = client.complete_many([_msgs(str(i)) for i in range(6)], desc="judge")
        assert out == [f"ok {i}" for i in range(6)]
        assert len(srv.requests) == 6 and client.stats["retries"] == 0 and client._gate.limit == 6
    assert "judge: 6 request(s): 6 answered (0 from cache), 6 sent, 0 retried, 0 failed" in caplog.text


def test_timeouts_with_others_in_flight_lower_the_concurrency(tmp_path, caplog):
    """A server stalled on the first 3 requests (another client's long jobs, say), then fast:
    the 3 sent together all time out. Those that had others in flight halve the concurrency
    and are re-sent without using an attempt; the rest is retried as usual; all answered."""
    def stalled_then_fast(body: dict, n: int):
        if n < 3:
            time.sleep(1.0)
        return 200, "ok " + body["messages"][-1]["content"]

    caplog.set_level(logging.INFO)
    with FakeOpenAI(stalled_then_fast) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m", "api.max_concurrency=3",
                       "api.timeout_s=0.1", "api.max_retries=1", "api.max_consecutive_failures=0")
        client = ChatClient(cfg, environ={})
        out = client.complete_many([_msgs(str(i)) for i in range(3)], desc="judge")
    assert out == [f"ok {i}" for i in range(3)]
    assert client.stats["failures"] == 0 and client._gate.limit < 3
    assert "request(s) in flight: the server answers fewer at once than that" in caplog.text
    assert "set api.max_concurrency to the server's slots" in caplog.text


def test_breaker_resets_on_success_and_ignores_rate_limits(tmp_path):
    # every other attempt fails with 503: never 3 in a row, so everything is answered
    def flaky(body: dict, n: int):
        return (503, "busy") if n % 2 == 0 else (200, "ok")

    with FakeOpenAI(flaky) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m", "api.max_concurrency=1",
                       "api.max_consecutive_failures=3")
        client = ChatClient(cfg, environ={})
        assert client.complete_many([_msgs(str(i)) for i in range(5)]) == ["ok"] * 5
        # 429s are the server working: they are retried but never trip the breaker
        start = len(srv.requests)
        srv.responder = lambda body, n: (429, "slow down") if n < start + 3 else (200, "fine")
        assert client.complete(_msgs("x"), use_cache=False) == "fine"
        assert len(srv.requests) == start + 4


def test_finish_reason_is_kept_counted_and_cached(tmp_path, caplog):
    def responder(body: dict, n: int):
        out = completion("RATING-", body["model"])
        out["choices"][0]["finish_reason"] = "length"
        return 200, out

    caplog.set_level(logging.INFO)
    with FakeOpenAI(responder) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m")
        client = ChatClient(cfg, environ={})
        (r,) = client.complete_many([_msgs("a")], replies=True, desc="cut")
        assert r == Reply("RATING-", "length", cached=False) and r.truncated
        assert client.stats["truncated"] == 1
        assert "cut: 1 request(s): 1 answered (0 from cache), 1 sent, 0 retried, 0 failed, 1 cut at max_tokens" in caplog.text
    again = ChatClient(cfg, environ={})
    hit = again.reply(_msgs("a"))
    assert hit.truncated and hit.cached and again.stats["truncated"] == 1


def test_non_json_200_is_retried_not_a_traceback(tmp_path):
    def responder(body: dict, n: int):
        return (200, b"<html>proxy says hi</html>") if n == 0 else (200, "ok")

    with FakeOpenAI(responder) as srv:
        cfg = tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m")
        client = ChatClient(cfg, environ={})
        assert client.complete(_msgs("a")) == "ok"
        assert client.stats["retries"] == 1
        srv.responder = lambda body, n: (200, b"not json")
        with pytest.raises(APIRequestFailed, match="malformed response"):
            ChatClient(tiny_cfg(tmp_path, f"api.base_url={srv.base_url}", "api.model=m", "api.max_retries=1",
                                "api.max_consecutive_failures=0"), environ={}).complete(_msgs("b"))
