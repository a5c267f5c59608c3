"""Notification dispatch to HTTP and MQTT endpoints."""
