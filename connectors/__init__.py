"""Connectors: MQTT IoT agent and city-system CSV import."""
