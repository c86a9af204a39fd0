"""Towards the devices: the driver registry, the pollers (per device, per shared line), and the
commands (writes) that go to devices."""
