"""Bench servers: the registry operators keep, where each tenant's site is placed, and each
server's pool of standby sites. Imports the platform, the shared models and the audit trail."""
