"""The quotad daemon: server, broker, gates, routing, providers, store."""
