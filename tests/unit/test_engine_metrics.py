"""The node agent reads the engine's own queue from its Prometheus /metrics into each heartbeat."""

from __future__ import annotations

import httpx

from adapters.agent import Agent, AgentConfig, command_line, parse_engine_metrics

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
vllm:request_success_total{finished_reason="stop",model_name="m"} 17.0
"""
OLD_VLLM = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\nvllm:num_requests_running{model_name="m"} 1\n'
LLAMACPP = """# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
llamacpp:requests_deferred 5
llamacpp:kv_cache_usage_ratio 0.125
"""


def test_vllm_llamacpp_and_older_vllm_series() -> None:
    assert parse_engine_metrics(VLLM) == {"engine_running": 3.0, "engine_waiting": 3.0, "engine_kv_cache": 0.42}
    assert parse_engine_metrics(OLD_VLLM) == {"engine_kv_cache": 0.5, "engine_running": 1.0}
    assert parse_engine_metrics(LLAMACPP) == {"engine_running": 2.0, "engine_waiting": 5.0, "engine_kv_cache": 0.125}


def test_malformed_or_hostile_lines_are_skipped() -> None:
    text = 'vllm:num_requests_running{x="1"}\nvllm:num_requests_waiting NaN\nllamacpp:requests_deferred -3\n{}\n'
    assert parse_engine_metrics(text + "vllm:num_requests_waiting 4 1700000000000\n") == {"engine_waiting": 4.0}


def _agent(handler: httpx.MockTransport, metrics_path: str | None = "/metrics") -> Agent:
    cfg = AgentConfig("node-1", "http://cp/inventory/heartbeat", "nt_x", endpoint="http://engine", probe_key="k",
                      metrics_path=metrics_path)  # fmt: skip
    agent = Agent(cfg, client=httpx.Client(transport=handler))
    agent.state = "ready"
    return agent


def test_each_heartbeat_carries_the_queue_and_a_404_pauses_the_scrape() -> None:
    calls: list[str] = []

    def engine(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        assert req.headers["authorization"] == "Bearer k"  # an engine started with a key wants it on /metrics
        return httpx.Response(200, text=LLAMACPP)

    body = _agent(httpx.MockTransport(engine)).heartbeat_body()
    assert body["engine_running"] == 2.0 and body["engine_waiting"] == 5.0 and calls == ["/metrics"]

    missing: list[str] = []

    def gone(req: httpx.Request) -> httpx.Response:
        missing.append(req.url.path)
        return httpx.Response(404)

    agent = _agent(httpx.MockTransport(gone))
    assert "engine_running" not in agent.heartbeat_body()
    assert "engine_running" not in agent.heartbeat_body()
    assert missing == ["/metrics"]  # not asked again at every beat
    asked: list[str] = []

    def engine_without_metrics(req: httpx.Request) -> httpx.Response:
        asked.append(req.url.path)
        return httpx.Response(200)

    _agent(httpx.MockTransport(engine_without_metrics), metrics_path=None).heartbeat_body()
    assert asked == []


def test_the_metrics_path_travels_on_the_agent_command_line() -> None:
    argv = command_line("py", "n", "http://cp/hb", 1.0, endpoint="http://e", engine_cmd=["e"], metrics_path="/metrics")
    assert argv[argv.index("--metrics-path") + 1] == "/metrics"
