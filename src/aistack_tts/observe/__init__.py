"""What operators see: the access log, JSON lines, metrics, readiness, the start-up line."""
