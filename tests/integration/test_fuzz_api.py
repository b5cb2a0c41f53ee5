"""Fuzz every route of the HTTP API from its own OpenAPI schema: no 5xx, every error in the JSON shape.

Hypothesis generates path parameters, query strings and JSON bodies (valid-looking and garbage) for
each operation in /openapi.json and sends them, with the admin token, to the API replica's data port.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.boot import ControlPlane

# routes whose success has side effects we do not want at random (they are covered elsewhere)
SKIP = {("DELETE", "/v1/pools/{ref}"), ("POST", "/v1/pools/{ref}/scale")}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
segment = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/?#"), min_size=1, max_size=20)


def _operations(cp: ControlPlane) -> list[tuple[str, str, dict[str, Any]]]:
    spec = httpx.get(cp.data_url + "/openapi.json", timeout=30, trust_env=False).json()
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if (method.upper(), path) not in SKIP:
                ops.append((method.upper(), path, op))
    return ops


def _body_for(op: dict[str, Any], spec_fields: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "requestBody" not in op:
        return st.none()
    # mostly bodies shaped like the schema's fields with random values, sometimes pure garbage
    shaped = st.fixed_dictionaries({}, optional={k: json_values for k in spec_fields}) if spec_fields else json_values
    return st.one_of(shaped, json_values)


@pytest.fixture(scope="module")
def http(control_plane: ControlPlane) -> httpx.Client:
    return httpx.Client(
        base_url=control_plane.data_url,
        headers={"authorization": f"Bearer {control_plane.api_token}"},
        timeout=60,
        trust_env=False,
    )


def test_fuzz_every_operation(control_plane: ControlPlane, http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    schemas = spec.get("components", {}).get("schemas", {})
    ops = _operations(control_plane)
    assert len(ops) >= 25, ops

    def fields_of(op: dict[str, Any]) -> dict[str, Any]:
        ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
        return dict(schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}))

    for method, path, op in ops:
        _fuzz_operation(http, method, path, op, fields_of(op))


PROXY_PATHS = ("/v1/chat/completions", "/v1/completions")


def _fuzz_operation(http: httpx.Client, method: str, path: str, op: dict[str, Any], fields: dict[str, Any]) -> None:
    names = re.findall(r"{(\w+)}", path)
    query_names = [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"]

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        params=st.fixed_dictionaries({n: segment for n in names}),
        query=st.fixed_dictionaries({}, optional={q: st.text(max_size=12) for q in query_names if q != "wait"}),
        body=_body_for(op, fields),
    )
    def run(params: dict[str, str], query: dict[str, str], body: Any) -> None:
        url = path
        for k, v in params.items():
            url = url.replace("{" + k + "}", quote(v, safe=""))
        kw: dict[str, Any] = {"params": query}
        if body is not None:
            kw["content"] = json.dumps(body)
            kw["headers"] = {"content-type": "application/json"}
        r = http.request(method, url, **kw)
        # the only 5xx allowed: the inference proxy's "no healthy endpoint" for a model nobody deployed
        allowed_5xx = path in PROXY_PATHS and r.status_code == 503
        assert r.status_code < 500 or allowed_5xx, (method, url, body, r.status_code, r.text[:300])
        if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
            err = r.json()
            if path in PROXY_PATHS or path == "/v1/models":  # OpenAI's shape on the OpenAI routes
                assert isinstance(err, dict) and isinstance(err.get("error"), dict), (method, url, r.text[:300])
                err = err["error"]
            assert isinstance(err, dict) and {"code", "message"} <= set(err), (method, url, r.text[:300])

    run()
