"""`python -m tfdiffusion.cli ARGS` runs the `tfdiffusion` command."""

import sys

from tfdiffusion.cli import main
from tfdiffusion.console import quiet_native_logs

if "--debug" not in sys.argv:
    quiet_native_logs()  # TensorFlow's run-time chatter; its import-time lines are already out
sys.exit(main())
