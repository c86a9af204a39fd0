"""Siemens S7 driver (``driver: s7``): ISO-on-TCP through python-snap7."""
