"""The central gateway: MQTT ingest, the alarm store, the police relay, the REST API.

Floor 2: imports only ``contract`` and ``drivers``.
"""
