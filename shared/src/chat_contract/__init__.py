"""The chat wire contract (docs/protocol.md v1) as pure data.

Nothing in this package performs I/O: it is imported by every deployable and
by the tests, and describes what crosses a socket or a NATS subject.
"""
