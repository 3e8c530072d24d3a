"""``python -m medflow``: the medflow command line."""

import sys

from medflow.cli.main import main

sys.exit(main())
