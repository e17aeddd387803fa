"""python -m otcore: the headless face of the dashboard."""
import sys

from otcore.cli import main

sys.exit(main())
