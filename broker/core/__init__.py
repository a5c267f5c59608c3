"""Broker services: the NGSI-LD operations, independent of HTTP and of the store."""
