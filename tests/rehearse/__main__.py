"""python -m tests.rehearse: see tests/rehearse/run.py."""

import sys

from tests.rehearse.run import main

sys.exit(main())
