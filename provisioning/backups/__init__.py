"""Backups as records you can trust: every file described, checked, copied offsite and kept by a
retention policy. Imports the platform, the shared models and the sites' driver types (and boto3,
for the offsite store)."""
