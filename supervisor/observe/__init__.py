"""Observation: HTTP endpoints and control socket, Prometheus exposition, counters, status text."""
