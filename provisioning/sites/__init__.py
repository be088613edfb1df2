"""The sites themselves: the drivers that make, back up and drop them (simulated, Frappe's
bench), the steps of standby sites every driver shares, and each site's Administrator password.
Imports the platform, the shared models and accounts (for the audit trail)."""
