"""The HTTP server side: everything between the client's socket and a call.

The client connection and its framing rules, the site and its body limit, the raw
request-target, the routes, the listeners, the connection registry and the drain.
"""
