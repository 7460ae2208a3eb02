"""WebSocket passthrough: a slot-guarded byte tunnel.

The session's shell and sans-IO core, its vocabulary, the upstream head before a 101, the two
sides' connections and the frame boundaries.
"""
