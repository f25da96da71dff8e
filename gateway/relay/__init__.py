"""The police relay: a durable queue in the database drained into sinks (DC-09 first)."""
