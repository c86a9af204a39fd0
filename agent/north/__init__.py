"""Towards the brokers: the MQTT session that drains the buffer and the formats it speaks."""
