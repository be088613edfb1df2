"""Webhooks: endpoints that tenants and the platform register, and the signed deliveries of job,
backup and tenant events to them, fanned out from the events outboxes and sent by the sweeper
process. Imports the platform, the shared models, the audit trail and the sites' credentials
(the cipher that keeps the secrets); never the jobs' execution, the API or the tasks."""
