"""Bench servers: the registry operators keep, and where each tenant's site is placed. Imports
the platform, the shared models and the audit trail."""
