"""Scale-out on a local Ray cluster (loopback): two replicas, a session's requests stay on one
replica, and when that replica is killed the session continues on the other from its save.

Slow and needs Ray (not in the test extra): pip install -e ".[ray]" (or "ray[serve]"), then
    python -m pytest -q -m slow tests/test_ray_serve.py
"""
from __future__ import annotations

import os
import signal
import time

import pytest

import openai

import sinkstream
from server_helpers import free_port

pytestmark = pytest.mark.slow
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def cluster(default_model_path, tmp_path_factory):
    ray = pytest.importorskip("ray")  # here, not at import: CI (-m "not slow") deselects without a skip
    serve = pytest.importorskip("ray.serve")
    from sinkstream.server.ray_serve import deployment

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        state = str(tmp_path_factory.mktemp("shared-state"))
        serve.run(deployment(state_dir=state, num_replicas=2, model_path=default_model_path, n_threads=1),
                  route_prefix="/", name="sinkstream")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _complete(client, prompt, seed, sid, attempts=60):
    """One completion on session sid; retried while Ray replaces a dead replica."""
    for attempt in range(attempts):
        try:
            raw = client.completions.with_raw_response.create(model=MODEL_ID, prompt=prompt, max_tokens=8, seed=seed,
                                                              extra_headers={"X-Session-Id": sid})
            return raw.parse().choices[0].text, raw.headers["x-sinkstream-replica"]
        except (openai.APIConnectionError, openai.InternalServerError, openai.APIStatusError):
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


def test_sessions_stick_to_a_replica_and_move_through_their_save(cluster, default_model_path):
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="x", max_retries=0, timeout=120)
    prompts = [("Part one.", 1), (" Part two.", 2), (" Part three.", 3), (" Part four.", 4)]
    with sinkstream.Model(default_model_path, n_threads=1) as model:
        local = model.session(n_threads=1)
        expected = [local.generate(p, max_tokens=8, seed=s, repeat_penalty=1.0) for p, s in prompts]

    got, replicas = [], []
    for prompt, seed in prompts[:3]:
        text, replica = _complete(client, prompt, seed, "moving")
        got.append(text)
        replicas.append(replica)
    assert len(set(replicas)) == 1, replicas  # multiplexing keeps the session on its replica
    assert got == expected[:3]

    # Streaming goes through the router too.
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=6,
                                                                     stream=True)]
    assert len(pieces) >= 2

    # The replica holding the session dies: the session continues elsewhere from its save.
    os.kill(int(replicas[0].rsplit(":", 1)[1]), signal.SIGKILL)
    text, replica = _complete(client, *prompts[3], "moving")
    assert text == expected[3]
    assert replica != replicas[0]
