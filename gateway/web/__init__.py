"""The central consoles (issue 8): dispatch, technician, inspector and admin pages, served by
the gateway, server-rendered (Jinja2) with one SSE stream per tab for live updates.

Each console adds its pages with ``add_routes(app, rt, web)``; ``Web`` is the shared kit: the
page guard (a session cookie, else the login page), rendering with the visitor's language, the
security headers, and the live hub. Logging in is the API's (``/api/auth/login``).
"""
