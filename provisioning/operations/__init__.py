"""Keeping the service running: the sweeper, scheduled backups, health checks and the quickstart.
May import every other part of the core."""
