"""FIWARE IoT Agent JSON compatible MQTT connector (``renkei iot-agent``)."""
