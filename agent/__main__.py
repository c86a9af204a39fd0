"""``python -m agent``: the same command as the ``edge-agent`` console script."""

import sys

from agent.app.cli import main

sys.exit(main())
