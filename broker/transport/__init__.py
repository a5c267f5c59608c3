"""Transports shared by the broker and the connectors.

A leaf package: its modules import the standard library and their protocol's client
library only, never another ``broker`` package, so ``connectors/`` may use them without
pulling in the broker's core, store or API.
"""
