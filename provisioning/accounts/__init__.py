"""Who may call the API and for which tenant: tenants, users, memberships, tokens, and the audit
trail of what they did. Imports the platform and the shared models."""
