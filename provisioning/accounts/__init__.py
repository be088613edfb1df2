"""Who may call the API, for which tenant and to do what: tenants, users, memberships, scoped
tokens, and the audit trail of what they did. Imports the platform and the shared models."""
