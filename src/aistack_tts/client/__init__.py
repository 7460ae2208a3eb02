"""The upstream client: a lean ``IAgent``, where a call leaves the gateway.

Connection, pool, request writer, response parser and its events. It knows nothing of the
error envelope above it.
"""
