import os
import sys

# Idle OpenMP threads sleep instead of spinning: on cores other processes share, spinning threads
# slowed training two- to four-fold (read by the OpenMP runtime when torch loads, so set before it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from training.cli import main  # noqa: E402

sys.exit(main())
