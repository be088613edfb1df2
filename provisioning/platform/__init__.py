"""The platform underneath: settings, the database engine, logs, migrations, identifiers and
quoting. It knows nothing of jobs or tenants, and imports only libraries and itself."""
