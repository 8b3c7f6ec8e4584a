"""`sinkstream serve` on loopback: the official openai client unchanged, sessions that continue one
stream (in memory, across eviction, across SIGTERM and kill -9 restarts), limits and bad input."""
from __future__ import annotations

import json
import re
import signal
import time

import httpx
import openai
import pytest

import sinkstream
from server_helpers import ServerProcess, server_in_thread
from sinkstream.system_sinks import system_prompt_tokens

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
GREEDY = dict(temperature=0.0)
# The same sampling in a local session: the server, like OpenAI's API, applies no repetition penalty
# unless asked, while SamplingParams' default has one.
LOCAL_GREEDY = dict(GREEDY, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def model(default_model_path):
    with sinkstream.Model(default_model_path, n_threads=1) as m:  # closed: no session outlives the module
        yield m


@pytest.fixture(scope="module")
def base(model, tmp_path_factory):
    with server_in_thread(model, state_dir=str(tmp_path_factory.mktemp("state"))) as url:
        yield url


@pytest.fixture
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def _local(model):
    return model.session(n_threads=1)


# -- the openai client ----------------------------------------------------------------------------

def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]


def test_completion_equals_generate(client, model):
    expected = _local(model).generate("The sea", max_tokens=12, seed=5, repeat_penalty=1.0)
    r = client.completions.create(model=MODEL_ID, prompt="The sea", max_tokens=12, seed=5)
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(model.tokenize("The sea"))
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL_ID, prompt="The sea", max_tokens=12,
                                                                     seed=5, stream=True)]
    assert len(pieces) > 2 and "".join(pieces) == expected


def test_chat_equals_session_chat(client, model):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    expected = "".join(_local(model).chat(messages, max_tokens=16, **LOCAL_GREEDY))
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=16, **GREEDY)
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_logprobs(client, model):
    r = client.completions.create(model=MODEL_ID, prompt="One, two, three,", max_tokens=6, logprobs=3, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) == 3
        assert max(top.values()) == pytest.approx(logprob)  # greedy: the chosen token is the best
        assert list(top.values()) == sorted(top.values(), reverse=True)
    c = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       logprobs=True, top_logprobs=2, **GREEDY)
    content = c.choices[0].logprobs.content
    assert "".join(t.token for t in content) == c.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_stop(client, model):
    text = _local(model).generate("1, 2, 3,", max_tokens=20, **LOCAL_GREEDY)
    assert " 6" in text
    r = client.completions.create(model=MODEL_ID, prompt="1, 2, 3,", max_tokens=20, stop=[" 6"], **GREEDY)
    assert r.choices[0].text == text[:text.index(" 6")] and r.choices[0].finish_reason == "stop"


# -- sessions -------------------------------------------------------------------------------------

def test_completion_session_continues_one_stream(client, model):
    local = _local(model)
    expected = [local.generate("A story:", max_tokens=10, seed=1, repeat_penalty=1.0),
                local.generate(" Then", max_tokens=10, seed=2, repeat_penalty=1.0)]
    got = [client.completions.create(model=MODEL_ID, prompt="A story:", max_tokens=10, seed=1,
                                     extra_body={"session_id": "story-1"}).choices[0].text,
           client.completions.create(model=MODEL_ID, prompt=" Then", max_tokens=10, seed=2,
                                     extra_headers={"X-Session-Id": "story-1"}).choices[0].text]
    assert got == expected


def test_chat_session_continues_with_new_or_whole_conversation(client, model):
    local = _local(model)
    first = "".join(local.chat("Hello! Who are you?", max_tokens=12, **LOCAL_GREEDY))
    second = "".join(local.chat("And what can you do?", max_tokens=12, **LOCAL_GREEDY))
    third = "".join(local.chat("Thanks.", max_tokens=12, **LOCAL_GREEDY))

    def ask(messages, sid):
        return client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=12,
                                              extra_body={"session_id": sid}, **GREEDY).choices[0].message.content

    assert ask([{"role": "user", "content": "Hello! Who are you?"}], "chat-a") == first
    assert ask([{"role": "user", "content": "And what can you do?"}], "chat-a") == second  # only the new message
    whole = [{"role": "user", "content": "Hello! Who are you?"}, {"role": "assistant", "content": first},
             {"role": "user", "content": "And what can you do?"}, {"role": "assistant", "content": second},
             {"role": "user", "content": "Thanks."}]
    assert ask(whole, "chat-a") == third  # the whole conversation resent: only its tail is fed


def test_keep_system_prompt(client, model, base):
    system = "You are a pirate. Always answer like a pirate would, with many arrs."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    n = system_prompt_tokens(model, system)
    local = model.session(n_sink=n, n_threads=1)
    expected = "".join(local.chat(messages, max_tokens=8, **LOCAL_GREEDY))
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=8,
                                       extra_body={"session_id": "pirate", "keep_system_prompt": True}, **GREEDY)
    assert r.choices[0].message.content == expected
    info = httpx.get(base + "/v1/sessions/pirate").json()
    assert info["n_sink"] == n > 10


def test_delete_session(client, base):
    client.completions.create(model=MODEL_ID, prompt="x", max_tokens=2, extra_body={"session_id": "doomed"})
    assert httpx.delete(base + "/v1/sessions/doomed").json()["deleted"] is True
    assert httpx.get(base + "/v1/sessions/doomed").status_code == 404
    assert httpx.delete(base + "/v1/sessions/doomed").status_code == 404
    # the id starts a new stream: a prompt-less continuation has nothing to continue
    r = httpx.post(base + "/v1/completions", json={"model": MODEL_ID, "prompt": "", "session_id": "doomed"})
    assert r.status_code == 400


def test_chat_session_api_keeps_the_system_prompt_as_sinks(model):
    system = "You are terse and precise."
    s = model.chat_session(system, window=32, n_threads=1)
    assert s.n_sink == system_prompt_tokens(model, system) and s.mode == "streaming"
    reference = model.session(n_sink=s.n_sink, window=32, n_threads=1)
    assert "".join(s.chat("Hi", max_tokens=6, **LOCAL_GREEDY)) == "".join(
        reference.chat([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}], max_tokens=6,
                       **LOCAL_GREEDY))
    for _ in range(3):  # far past the window: the system prompt stays as the sinks
        "".join(s.chat("Tell me more.", max_tokens=16, **LOCAL_GREEDY))
    assert s.n_past > s.capacity and s.n_cached == s.capacity


def test_eviction_under_max_sessions_and_memory_budget(model, tmp_path):
    one = model.session_bytes("streaming", None, None, n_threads=1)
    for limits in ({"max_sessions": 2}, {"memory_budget": int(2.5 * one)}):
        with server_in_thread(model, state_dir=str(tmp_path / str(len(limits) + len(str(limits)))), **limits) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            locals_ = {}
            for sid in ("a", "b", "c"):
                locals_[sid] = _local(model)
                locals_[sid].generate(f"Session {sid}:", max_tokens=5, seed=1, repeat_penalty=1.0)
                client.completions.create(model=MODEL_ID, prompt=f"Session {sid}:", max_tokens=5, seed=1,
                                          extra_body={"session_id": sid})
            time.sleep(0.3)
            info = {s["id"]: s for s in httpx.get(url + "/v1/sessions").json()["data"]}
            assert [info[s]["in_memory"] for s in "abc"] == [False, True, True]  # the least recently used left
            # a comes back from disk and continues exactly
            r = client.completions.create(model=MODEL_ID, prompt=" more", max_tokens=8, seed=3,
                                          extra_body={"session_id": "a"})
            assert r.choices[0].text == locals_["a"].generate(" more", max_tokens=8, seed=3, repeat_penalty=1.0)
            metrics = httpx.get(url + "/metrics").text
            assert re.search(r"^sinkstream_sessions_evicted_total [2-9]", metrics, re.M)


def test_q8_0_sessions_fit_twice_as_many_in_a_memory_budget(model, tmp_path):
    """--kv-type q8_0: each session's cache in 8-bit blocks, so a budget that holds two f16
    sessions holds four; replies equal a local q8_0 session's, and the sessions list says q8_0."""
    one = model.session_bytes("streaming", None, None, n_threads=1)
    assert model.session_bytes("streaming", None, None, n_threads=1, kv_type="q8_0") < 0.6 * one
    with server_in_thread(model, state_dir=str(tmp_path), memory_budget=int(2.5 * one), kv_type="q8_0") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        for sid in "abcd":
            text = client.completions.create(model=MODEL_ID, prompt=f"Session {sid}:", max_tokens=5, seed=1,
                                             extra_body={"session_id": sid}).choices[0].text
            local = model.session(n_threads=1, kv_type="q8_0")
            assert text == local.generate(f"Session {sid}:", max_tokens=5, seed=1, repeat_penalty=1.0)
        time.sleep(0.3)
        info = {s["id"]: s for s in httpx.get(url + "/v1/sessions").json()["data"]}
        assert all(info[s]["in_memory"] and info[s]["kv_type"] == "q8_0" for s in "abcd")


def _saved(base, sid):
    info = httpx.get(f"{base}/v1/sessions/{sid}").json()
    return info["saved_n_past"] is not None and info["saved_n_past"] == info["n_past"]


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_session_survives_a_restart(model, default_model_path, tmp_path, how):
    state = str(tmp_path / "state")
    local = _local(model)
    expected = [local.generate("Chapter one.", max_tokens=8, seed=1, repeat_penalty=1.0),
                local.generate(" Chapter two.", max_tokens=8, seed=2, repeat_penalty=1.0)]
    args = ("--state-dir", state, "--threads", "1")
    with ServerProcess(default_model_path, *args) as server:
        c = openai.OpenAI(base_url=server.base + "/v1", api_key="x", max_retries=0)
        first = c.completions.create(model=MODEL_ID, prompt="Chapter one.", max_tokens=8, seed=1,
                                     extra_body={"session_id": "book"}).choices[0].text
        if how == "sigterm":
            assert server.stop(signal.SIGTERM) == 0
        else:
            deadline = time.monotonic() + 10
            while not _saved(server.base, "book") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _saved(server.base, "book")
            server.stop(signal.SIGKILL)
    with ServerProcess(default_model_path, *args, port=server.port) as server:
        c = openai.OpenAI(base_url=server.base + "/v1", api_key="x", max_retries=0)
        second = c.completions.create(model=MODEL_ID, prompt=" Chapter two.", max_tokens=8, seed=2,
                                      extra_body={"session_id": "book"}).choices[0].text
    assert [first, second] == expected


def test_sigterm_mid_generation_saves_the_session_consistent(model, default_model_path, tmp_path):
    state = str(tmp_path / "state")
    ban = {str(model.eos_id): -100}
    with ServerProcess(default_model_path, "--state-dir", state, "--threads", "1") as server:
        with httpx.stream("POST", server.base + "/v1/completions", timeout=30,
                          json={"model": MODEL_ID, "prompt": "Endless", "max_tokens": 100000, "logit_bias": ban,
                                "stream": True, "session_id": "endless", **GREEDY}) as r:
            lines = r.iter_lines()
            assert next(l for l in lines if l.startswith("data: {"))
            assert server.stop(signal.SIGTERM) == 0
            rest = list(lines)  # the stream ends: finish_reason "length", then [DONE]
            assert rest[-1] == "data: [DONE]" or rest[-2] == "data: [DONE]"
    with ServerProcess(default_model_path, "--state-dir", state, "--threads", "1") as server:
        info = httpx.get(server.base + "/v1/sessions/endless").json()
        assert info["saved_n_past"] > 1
        c = openai.OpenAI(base_url=server.base + "/v1", api_key="x", max_retries=0)
        c.completions.create(model=MODEL_ID, prompt="", max_tokens=4, extra_body={"session_id": "endless"})
        assert httpx.get(server.base + "/v1/sessions/endless").json()["n_past"] > info["saved_n_past"]


# -- limits and bad input -------------------------------------------------------------------------

def test_api_key(model):
    with server_in_thread(model, api_key="s3cret") as url:
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=url + "/v1", api_key="s3cret").models.list().data[0].id == MODEL_ID
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


BAD = [
    ("malformed JSON", b'{"model": "x", "prompt": ', 400, "invalid_json"),
    ("not an object", [1, 2], 400, None),
    ("unknown field", {"prompt": "x", "temprature": 1}, 400, "unknown_field"),
    ("no prompt", {}, 400, None),
    ("temperature < 0", {"prompt": "x", "temperature": -1}, 400, None),
    ("temperature a string", {"prompt": "x", "temperature": "hot"}, 400, None),
    ("max_tokens a float", {"prompt": "x", "max_tokens": 1.5}, 400, None),
    ("max_tokens < 0", {"prompt": "x", "max_tokens": -1}, 400, None),
    ("top_p 0", {"prompt": "x", "top_p": 0}, 400, None),
    ("n = 2", {"prompt": "x", "n": 2}, 400, None),
    ("echo", {"prompt": "x", "echo": True}, 400, None),
    ("empty stop", {"prompt": "x", "stop": [""]}, 400, None),
    ("logit_bias key", {"prompt": "x", "logit_bias": {"abc": 1}}, 400, None),
    ("logit_bias id", {"prompt": "x", "logit_bias": {"99999999": 1}}, 400, None),
    ("token out of vocabulary", {"prompt": [10**9]}, 400, None),
    ("lone surrogate", b'{"model": "%s", "prompt": "\\ud800"}', 400, None),
    ("seed too big", {"prompt": "x", "seed": 2**64}, 400, None),
    ("unknown model", {"model": "gpt-4", "prompt": "x"}, 404, "model_not_found"),
    ("path in session id", {"prompt": "x", "session_id": "../../etc/passwd"}, 400, "invalid_session_id"),
    ("slash in session id", {"prompt": "x", "session_id": "a/b"}, 400, "invalid_session_id"),
    ("dot session id", {"prompt": "x", "session_id": ".."}, 400, "invalid_session_id"),
    ("long session id", {"prompt": "x", "session_id": "a" * 200}, 400, "invalid_session_id"),
    ("session id a number", {"prompt": "x", "session_id": 5}, 400, None),
]


@pytest.mark.parametrize("what,body,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(base, what, body, status, code):
    if isinstance(body, bytes):
        content = body.replace(b"%s", MODEL_ID.encode()) if b"%s" in body else body
    else:
        if isinstance(body, dict):
            body = {"model": MODEL_ID, "max_tokens": 2, **body}
        content = json.dumps(body).encode()
    r = httpx.post(base + "/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code


def test_bad_chat_requests_and_headers(base):
    def post(body, **headers):
        return httpx.post(base + "/v1/chat/completions", json={"model": MODEL_ID, "max_tokens": 2, **body},
                          headers=headers)

    assert post({"messages": []}).status_code == 400
    assert post({"messages": [{"role": "wizard", "content": "x"}]}).status_code == 400
    assert post({"messages": [{"role": "user", "content": 5}]}).status_code == 400
    assert post({"messages": [{"role": "user", "content": "x"}], "tools": []}).status_code == 400
    r = post({"messages": [{"role": "user", "content": "x"}]}, **{"X-Session-Id": "../x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_session_id"
    r = httpx.get(base + "/v1/sessions/..%2F..%2Fetc")
    assert r.status_code in (400, 404) and "error" in r.json()
    r = httpx.get(base + "/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # a chat session cannot serve a completion
    assert post({"messages": [{"role": "user", "content": "x"}], "session_id": "kind-1"}).status_code == 200
    r = httpx.post(base + "/v1/completions", json={"model": MODEL_ID, "prompt": "x", "session_id": "kind-1"})
    assert r.status_code == 400


def test_client_disconnect_cancels_the_generation(base, model):
    ban = {str(model.eos_id): -100}
    with httpx.stream("POST", base + "/v1/completions", timeout=30,
                      json={"model": MODEL_ID, "prompt": "Forever", "max_tokens": 100000, "logit_bias": ban,
                            "stream": True, "session_id": "gone"}) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(l for l in lines if l.startswith("data: {"))
    # the connection is closed: the generation stops and the session goes idle
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = httpx.get(base + "/health").json()
        if health["active"] == 0 and not httpx.get(base + "/v1/sessions/gone").json()["busy"]:
            break
        time.sleep(0.05)
    assert health["active"] == 0
    n = httpx.get(base + "/v1/sessions/gone").json()["n_past"]
    time.sleep(0.3)
    assert httpx.get(base + "/v1/sessions/gone").json()["n_past"] == n < 5000
    assert re.search(r"^sinkstream_generations_cancelled_total [1-9]", httpx.get(base + "/metrics").text, re.M)


def test_client_disconnect_cancels_a_non_streaming_generation(base, model):
    ban = {str(model.eos_id): -100}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(base + "/v1/completions", timeout=1.0,
                   json={"model": MODEL_ID, "prompt": "Forever", "max_tokens": 100000, "logit_bias": ban,
                         "session_id": "gone-2"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(base + "/v1/sessions/gone-2").json()["busy"]:
        time.sleep(0.05)
    n = httpx.get(base + "/v1/sessions/gone-2").json()["n_past"]
    time.sleep(0.3)
    assert httpx.get(base + "/v1/sessions/gone-2").json()["n_past"] == n < 5000


def test_timeout(model):
    ban = {str(model.eos_id): -100}
    with server_in_thread(model, request_timeout=0.5) as url:
        body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 100000, "logit_bias": ban}
        start = time.monotonic()
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
        assert time.monotonic() - start < 8
        assert re.search(r"^sinkstream_request_timeouts_total [1-9]", httpx.get(url + "/metrics").text, re.M)


def test_queue_limit(model):
    ban = {str(model.eos_id): -100}
    with server_in_thread(model, max_concurrent=1, max_queue=0, request_timeout=None) as url:
        body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 100000, "logit_bias": ban}
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=30) as s:
            lines = s.iter_lines()  # kept: dropping the iterator would close the stream
            assert next(lines).startswith("data: {")
            busy = httpx.post(url + "/v1/completions", json=body, timeout=30)  # the one slot is taken
            assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"


def test_health_and_metrics_format(base, client):
    client.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=3, stream=True).close()
    assert httpx.get(base + "/health").json()["status"] == "ok"
    r = httpx.get(base + "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? '
                        r'[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|Inf|NaN)$')
    names = set()
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif not line.startswith("# HELP "):
            assert sample.match(line), line
    for name in ("sinkstream_tokens_per_second", "sinkstream_active_sessions", "sinkstream_queue_depth",
                 "sinkstream_time_to_first_token_seconds", "sinkstream_inter_token_latency_seconds",
                 "sinkstream_generated_tokens_total", "sinkstream_requests_total"):
        assert name in names
    assert re.search(r'^sinkstream_time_to_first_token_seconds_count [1-9]', r.text, re.M)
