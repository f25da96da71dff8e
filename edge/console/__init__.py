"""The guard booth console: a web page served by the campus edge itself (issue 7).

Layers: ``store`` (its own SQLite file: the console's alarm records and the audit trail),
``auth`` (accounts, sessions, rate limit, CSRF), ``i18n`` (message catalogues), ``hub`` (the
live feed: events, centre statuses, devices, uplink, drills -> one SSE stream per tab),
``app`` (the FastAPI factory and the server the edge runs in its own event loop).
"""
