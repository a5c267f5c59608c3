"""Renkei NGSI-LD context broker."""
