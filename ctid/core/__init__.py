"""The pure core: no I/O, no ``await``, no sockets, no SQLite.

AMI bytes are parsed here, events are applied to the call and agent model
here, and what should happen outside (publish, store, send an action) comes
out as effect data for the adapters to carry out.
"""
