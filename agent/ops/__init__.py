"""What operators see: metrics, the HTTP listener (health, status page), logs, systemd notify."""
