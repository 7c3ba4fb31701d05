"""`python -m evolvelm ...` is the `evolvelm` command (and `accelerate launch -m evolvelm run ...`
trains each round's update over several processes: evolvelm.update.parallel)."""
import sys

from evolvelm.cli import main

sys.exit(main())
