"""Central configuration and health through the broker the gateways already use (docs/fleet.md).

The gateway side (``agent``: pushes in, results and health out), its versions on disk
(``store``), the boot rule (``boot``), the checks a push passes (``push``), the signature
(``sign``), the health document (``health``) and the operator's commands (``operator``).
"""
