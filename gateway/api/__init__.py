"""The gateway's REST API (issue 8): one module per resource, every route behind a permission."""
