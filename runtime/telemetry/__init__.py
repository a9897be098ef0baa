"""Per-request telemetry store, Prometheus metrics and the security-overhead bench."""
