"""Top-level configuration schema: one pydantic model written as YAML.

Sections: ``server`` (ports, keys), ``models`` (one entry per served model), and the
reserved ``tenants``, ``canary`` and ``autoscaler`` sections owned by their subpackages.
Owned by the serving layer; each section's model lives in its own subpackage.
"""
