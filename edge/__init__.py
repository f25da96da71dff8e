"""The campus edge daemon: polls devices, turns readings into events, keeps them on disk, sends.

Floor 2: imports only ``contract`` and ``drivers``.
"""
