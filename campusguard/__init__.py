"""CampusGuard: the command line and the demo (floor 3, composes everything below)."""

__version__ = "0.1.0"
