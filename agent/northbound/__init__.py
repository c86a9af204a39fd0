"""Northbound configuration pieces that belong to the formats rather than to the connection."""
