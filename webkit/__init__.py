"""Floor 1: what the guard booth console (edge) and the central consoles (gateway) share on the
web: argon2id passwords, failed-login limits, same-origin and CSRF checks, message catalogues
and the live SSE feed. Nothing here knows alarms or campuses."""
