"""The operator API under /admin: one module per resource, all behind the admin token."""
