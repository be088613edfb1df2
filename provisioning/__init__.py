"""The provisioning core: settings, data model, job state machine, service and drivers."""
