"""Logging (structlog JSON), metrics (Prometheus) and trace context shared by every process."""
