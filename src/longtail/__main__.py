"""`python -m longtail` is the same as the `longtail` command."""

import sys

from longtail.cli import main

sys.exit(main())
