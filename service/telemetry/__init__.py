"""What operators see: logs, the backlog gauges and the metrics exposition, optional tracing.
May import `config`, `net` and `jobs`."""
