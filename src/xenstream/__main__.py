"""``python -m xenstream``."""

import sys

from xenstream.cli.main import main

sys.exit(main())
