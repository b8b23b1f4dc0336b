"""`python -m tptlib.workbook ...`: run notebooks into reports (see `tptlib.workbook.runner`)."""
import sys

from .runner import UnknownParameterError, main

try:
    sys.exit(main())
except UnknownParameterError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
