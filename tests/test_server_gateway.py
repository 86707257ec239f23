"""`workbench serve --replicas 2 --lb POLICY` and `--model A --model B --router FILE` as real
processes: a gateway in front of replica processes (workbench/server/gateway.py), driven with
the official `openai` client and httpx. Each balancer is checked by where requests went (the
`x-workbench-replica` header and the gateway's per-replica counters); a replica killed
mid-request gives OpenAI-shaped errors, not a hang; no replica outlives its gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.server_helpers import (
    free_port,
    kill_server,
    scrape,
    start_server,
    stop_server,
    wait_until,
)
from workbench.engine import SamplingParams
from workbench.server.chat import chat_prompt
from workbench.server.router import parse_rules

M = "workbench:"
PROMPT = "The quick brown fox"


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"



def gateway(lb: str, *args: str, env: dict | None = None):
    return start_server("tiny", "--replicas", "2", "--lb", lb, "--replica-threads", "1",
                        *args, env=env)


def complete(url: str, prompt, max_tokens: int = 2, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=120, json={
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        **kw})


def routed(url: str) -> dict[str, float]:
    s = scrape(url)
    return {r: s.get(f"{M}lb_routed_total{{model=tiny,replica={r}}}", 0.0) for r in "01"}


class Stream:
    """A long streamed completion on a thread: `first` is set at its first chunk."""

    def __init__(self, url: str, prompt, max_tokens: int = 1500):
        self.first, self.lines, self.error = threading.Event(), [], None
        self.replica = self.status = None
        self.thread = threading.Thread(target=self._run, args=(url, prompt, max_tokens),
                                       daemon=True)
        self.thread.start()

    def _run(self, url, prompt, max_tokens):
        try:
            with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
                    "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                    "stream": True}) as s:
                self.replica = s.headers.get("x-workbench-replica")
                self.status = s.status_code
                for line in s.iter_lines():
                    if line.startswith("data:"):
                        self.lines.append(line)
                        self.first.set()
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.first.set()

    def join(self, timeout: float = 120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream hung"


@pytest.fixture(scope="module")
def rr():
    proc, url = gateway("round-robin")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def engine(tiny_engine_factory):
    return tiny_engine_factory()


def test_round_robin_alternates_and_greedy_text_equals_generate(rr, engine):
    url = rr
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60) as c:
        assert [m.id for m in c.models.list().data] == ["tiny"]
        [ref] = engine.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0))
        before = routed(url)
        texts = [c.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                      temperature=0).choices[0].text for _ in range(4)]
        assert texts == [ref.text] * 4  # both replicas, the same greedy text
        after = routed(url)
        assert {r: after[r] - before[r] for r in "01"} == {"0": 2.0, "1": 2.0}
        messages = [{"role": "user", "content": "Name a colour."}]
        [ref] = engine.generate([chat_prompt(engine.tokenizer, messages)],
                                SamplingParams(max_tokens=8, temperature=0))
        stream = c.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                           temperature=0, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream) == ref.text
    seen = [complete(url, PROMPT).headers["x-workbench-replica"] for _ in range(4)]
    assert seen in (["0", "1", "0", "1"], ["1", "0", "1", "0"])
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "ok" and len(health["models"]["tiny"]) == 2


def test_a_client_that_leaves_aborts_its_request_in_the_replica(rr):
    url = rr

    def aborts(samples):
        return sum(v for k, v in samples.items()
                   if k.startswith(f"{M}request_success_total") and "finished_reason=abort" in k)

    before = aborts(scrape(url))
    with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
            "prompt": PROMPT, "max_tokens": 1900, "ignore_eos": True, "stream": True}) as s:
        replica = s.headers["x-workbench-replica"]
        for i, _line in enumerate(s.iter_lines()):
            if i == 4:
                break  # leaving the block closes the connection mid-stream
    # The gateway closed its upstream stream, so the replica aborted the request (its
    # counters, polled by the gateway) and holds no KV for it.
    wait_until(lambda: aborts(scrape(url)) == before + 1, "the replica's abort")
    s = wait_until(lambda: (x := scrape(url))[
        f"{M}num_requests_running{{model=tiny,replica={replica}}}"] == 0 and x, "idle replica")
    assert s[f"{M}kv_cache_usage_perc{{model=tiny,replica={replica}}}"] == 0
    assert s[f"{M}lb_outstanding{{model=tiny,replica={replica}}}"] == 0


def test_the_http_driver_runs_a_scenario_through_the_gateway(rr, tmp_path):
    """What benchmarks/bench_replicas.py does, small: token-id prompts, usage counted."""
    from workbench.traffic import load_run
    from workbench.traffic.run_scenario import run_scenario
    from workbench.traffic.scenario import parse_scenario

    sc = parse_scenario({
        "name": "via-gateway", "seed": 1,
        "target": {"kind": "http", "url": rr, "model": "tiny"},
        "arrival": {"kind": "poisson", "rate": 50.0},
        "prompt_tokens": {"dist": "uniform", "low": 20, "high": 40},
        "output_tokens": {"dist": "uniform", "low": 4, "high": 8},
        "num_requests": 6})
    before = routed(rr)
    run = load_run(run_scenario(sc, tmp_path, progress=False, log=lambda m: None))
    assert run.manifest["target"]["prompt_format"] == "tokens"
    assert len(run.requests) == 6 and (run.requests.finish_reason == "length").all()
    after = routed(rr)
    assert {r: after[r] - before[r] for r in "01"} == {"0": 3.0, "1": 3.0}


def test_gateway_errors_are_openai_shaped(rr):
    url = rr
    r = httpx.post(f"{url}/v1/completions", content=b"{not json",
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.post(f"{url}/v1/completions", json={"model": "gpt-9", "prompt": "x"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = complete(url, PROMPT, max_tokens=-1)  # the replica's own validation, passed through
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.get(f"{url}/no/such/route", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_prefix_affinity_keeps_a_shared_prefix_on_one_replica():
    proc, url = gateway("prefix-affinity")
    try:
        a = list(range(100, 132))  # two 32-token "system prompts" (two KV blocks of 16)
        b = list(range(200, 232))
        where = {"a": [], "b": []}
        for i, group in enumerate("aabbbaab"):
            prompt = (a if group == "a" else b) + [300 + i, 400 + i]
            where[group].append(complete(url, prompt).headers["x-workbench-replica"])
        # A prefix counts as shared from its second sighting (PrefixAffinity): from then on
        # every request with it goes to one replica, and the two prefixes to different ones.
        assert len(set(where["a"][1:])) == 1 and len(set(where["b"][1:])) == 1, where
        assert where["a"][1] != where["b"][1], where
    finally:
        stop_server(proc)


def test_least_kv_sends_to_the_replica_with_less_kv_in_use():
    proc, url = gateway("least-kv")
    try:
        long_prompt = list(range(100, 700))  # 600 tokens: 38 KV blocks held while it runs
        s = Stream(url, long_prompt, max_tokens=1400)  # within tiny's 2048 positions
        assert s.first.wait(120) and s.status == 200
        busy = s.replica
        # Once a poll has seen its blocks, short requests go to the other replica.
        wait_until(lambda: scrape(url).get(
            f"{M}kv_cache_usage_perc{{model=tiny,replica={busy}}}", 0) > 0, "KV in use")
        seen = {complete(url, PROMPT).headers["x-workbench-replica"] for _ in range(3)}
        assert seen == {"1" if busy == "0" else "0"}
        kill_server(proc)  # the stream ends (an error event or a closed connection), no hang
        s.join()
    finally:
        kill_server(proc)


def test_least_outstanding_a_killed_replica_and_a_clean_stop():
    proc, url = gateway("least-outstanding")
    try:
        reps = children(proc.pid)
        assert len(reps) == 2
        s = Stream(url, PROMPT)
        assert s.first.wait(120) and s.status == 200
        busy = s.replica
        other = "1" if busy == "0" else "0"
        # While one replica streams, every request goes to the idle one.
        assert [complete(url, PROMPT).headers["x-workbench-replica"] for _ in range(3)] == \
            [other] * 3
        pids = {str(r["replica"]): r["pid"]
                for r in httpx.get(f"{url}/health", timeout=10).json()["models"]["tiny"]}
        assert sorted(pids.values()) == reps
        busy_pid = pids[busy]
        os.kill(busy_pid, signal.SIGKILL)
        s.join()  # the stream ends with an error event, not a hang
        assert s.error is not None or any('"error"' in line for line in s.lines), s.lines[-2:]
        # New requests go to the survivor (a refused connection is retried there once).
        for _ in range(3):
            r = complete(url, PROMPT)
            assert r.status_code == 200 and r.headers["x-workbench-replica"] == other
        wait_until(lambda: httpx.get(f"{url}/health", timeout=10).json()["status"]
                   == "degraded", "health degraded")
        # A non-streaming request whose replica dies mid-way: a 502 in OpenAI's shape.
        result = {}
        t = threading.Thread(target=lambda: result.update(r=complete(url, PROMPT, 1500)))
        t.start()
        wait_until(lambda: scrape(url).get(f"{M}lb_outstanding{{model=tiny,replica={other}}}")
                   == 1, "the request in flight")
        os.kill(pids[other], signal.SIGKILL)
        t.join(120)
        assert not t.is_alive()
        r = result["r"]
        assert r.status_code == 502 and r.json()["error"]["type"] == "server_error", r.text
        r = complete(url, PROMPT)
        assert r.status_code in (502, 503) and "error" in r.json()
        wait_until(lambda: httpx.get(f"{url}/health", timeout=10).status_code == 503,
                   "health 503")
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        kill_server(proc)


def test_no_replica_outlives_its_gateway():
    proc, url = gateway("round-robin")
    reps = children(proc.pid)
    try:
        assert len(reps) == 2 and all(alive(p) for p in reps)
        proc.terminate()  # SIGTERM: replicas stopped, exit 0
        assert proc.wait(timeout=90) == 0
        wait_until(lambda: not any(alive(p) for p in reps), "replicas gone after SIGTERM")
    finally:
        kill_server(proc)
    proc, url = gateway("round-robin")
    reps = children(proc.pid)
    try:
        assert len(reps) == 2
        kill_server(proc)  # SIGKILL: the kernel's parent-death signal stops them
        wait_until(lambda: not any(alive(p) for p in reps), "replicas gone after SIGKILL")
    finally:
        for p in reps:
            if alive(p):
                os.kill(p, signal.SIGKILL)


ROUTER = """
rules:
  - {name: short, model: tiny, when: {max_prompt_tokens: 16}}
  - {name: long, model: tiny-qwen2}
"""


def test_several_models_and_a_router(tmp_path):
    router = tmp_path / "router.yaml"
    router.write_text(ROUTER)
    proc, url = start_server("tiny", "--model", "tiny-qwen2", "--router", str(router),
                             "--replica-threads", "1", env={"WORKBENCH_API_KEYS": "k1"})
    try:
        auth = {"Authorization": "Bearer k1"}
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k1", max_retries=0,
                           timeout=60) as c:
            assert [m.id for m in c.models.list().data] == ["tiny", "tiny-qwen2"]
            for model in ("tiny", "tiny-qwen2"):
                r = c.completions.create(model=model, prompt=PROMPT, max_tokens=2)
                assert r.model == model
            with pytest.raises(openai.NotFoundError):
                c.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=2)
        post = lambda body: httpx.post(f"{url}/v1/completions", json=body,  # noqa: E731
                                       headers=auth, timeout=60)
        r = post({"prompt": list(range(100, 110)), "max_tokens": 2})
        assert r.headers["x-workbench-routed-to"] == "tiny" and r.json()["model"] == "tiny"
        assert r.headers["x-workbench-route-rule"] == "short"
        r = post({"prompt": list(range(100, 140)), "max_tokens": 2})
        assert r.headers["x-workbench-routed-to"] == "tiny-qwen2"
        assert r.json()["model"] == "tiny-qwen2"
        r = post({"prompt": "word " * 40, "max_tokens": 2})  # text: counted in tokens
        assert r.headers["x-workbench-routed-to"] == "tiny-qwen2"
        r = post({"model": "tiny-qwen2", "prompt": [5, 6], "max_tokens": 2})
        assert "x-workbench-routed-to" not in r.headers  # named: no routing
        s = scrape(url, auth)
        assert s[f"{M}router_decisions_total{{model=tiny,rule=short}}"] == 1
        assert s[f"{M}router_decisions_total{{model=tiny-qwen2,rule=long}}"] == 2
    finally:
        stop_server(proc)


@pytest.mark.parametrize("doc, message", [
    ([], "router.rules: must be a non-empty list"),
    ({"rules": [{"model": "gpt"}]}, "router.rules[0].model: 'gpt' is not served"),
    ({"rules": [{"model": "tiny", "when": {"max_prompt_chars": 3}}]},
     "router.rules[0].when.max_prompt_chars: unknown condition"),
    ([{"model": "tiny", "when": {"max_prompt_tokens": -1}}],
     "router.rules[0].when.max_prompt_tokens: must be an integer >= 0"),
    ([{"model": "tiny"}, {"model": "tiny"}], "router.rules[1].name: must be a unique"),
    ([{"model": "tiny", "why": 1}], "router.rules[0]: unknown field(s) ['why']"),
])
def test_router_files_are_checked_naming_the_field(doc, message):
    with pytest.raises(ValueError) as e:
        parse_rules(doc, ["tiny", "tiny-qwen2"])
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2", "--lb", "nearest"], "error: lb: must be one of"),
    (["--replicas", "0"], "error: replicas: must be >= 1"),
    (["--model", "tiny", "--model", "tiny"], "error: model: 'tiny' would be served as"),
    (["--model", "tiny", "--model", "no-such-model"], "error: model: "),
    (["--replicas", "2", "--rate-limit-rpm", "60"], "error: rate-limit-rpm / rate-limit-tpm: "
                                                    "not yet supported behind a gateway"),
])
def test_gateway_arguments_are_checked_in_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "workbench", "serve", "--port", str(free_port()),
                        *args],
                       capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert r.returncode == 2 and r.stderr.startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_admission_limits_apply_behind_the_gateway():
    """The size limit is checked at the gateway (before a body is proxied); the queue bound
    per replica, its 503 and Retry-After passed through to the client."""
    proc, url = gateway("round-robin", "--max-num-seqs", "1", "--max-queued", "1",
                        "--max-request-bytes", "4096")
    try:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x" * 5000}, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["param"] == "body", r.text
        assert scrape(url)[f"{M}requests_rejected_total{{reason=too_large}}"] == 1
        running = [Stream(url, PROMPT, 300) for _ in range(2)]  # one per replica, running
        for s in running:
            assert s.first.wait(120) and s.status == 200
        waiting = [Stream(url, PROMPT, 300) for _ in range(2)]  # one queued in each
        wait_until(lambda: sum(v for k, v in scrape(url).items()
                               if k.startswith(f"{M}num_requests_waiting{{")) == 2,
                   "both replicas have one request waiting")
        r = complete(url, PROMPT)  # round-robin: replica 0 again, whose queue is full
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "overloaded"
        for s in running + waiting:
            s.join()
            assert s.status == 200 and s.lines[-1] == "data: [DONE]"
    finally:
        stop_server(proc)


def test_max_output_tokens_follows_what_the_server_will_generate():
    """A completion without max_tokens asks for 16 (OpenAI's default); a chat without one runs
    to the end of the context, so it never counts as short."""
    from workbench.server.router import Router

    rules = parse_rules([{"model": "small", "name": "short", "when": {"max_output_tokens": 32}},
                         {"model": "tiny"}], ["tiny", "small"])
    router = Router(rules, "tiny", {})
    assert router.decide({"prompt": [1, 2]}).rule == "short"
    assert router.decide({"prompt": [1, 2], "max_tokens": 33}).rule == "default"
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert router.decide(chat).rule == "default"
    assert router.decide({**chat, "max_completion_tokens": 8}).rule == "short"
