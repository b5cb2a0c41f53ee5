"""The session fixtures (provider_env, control_plane, api, k8s_cluster, fake_kubelet) live in
tests/support/session_fixtures.py and are loaded by tests/conftest.py, so tests/conformance shares them."""
