"""The wire: what every layer may use of HTTP, of the socket, and of the process.

HTTP constants and header hygiene, the kernel's view of a socket, bytes sent now, file
descriptors: plain functions and values, the lowest layer.
"""
