"""Entry point for `python -m modelrig`."""

from modelrig.cli import main

raise SystemExit(main())
