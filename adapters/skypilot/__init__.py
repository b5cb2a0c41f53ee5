"""The SkyPilot provider: one SkyPilot cluster per node, placed by SkyPilot's optimizer.

Everything that reaches a cloud (launch, exec, down, status, logs) goes through `client.py`;
the rest (config, catalog offers, task construction, placement and cost decisions, error
translation) is plain code over SkyPilot's own objects. See docs/SKYPILOT.md.
"""
