"""One call upstream: admission, the GPU slot, and the proxied exchange.

The upstreams (one slot each), the call context and record, the exchange's shell and sans-IO
core, the streaming bridge and the watchdog, and the events both cores share.
"""
