"""`python -m chessvlm` runs the `chessvlm` command (handy under `torchrun -m`)."""

import sys

from chessvlm.cli import main

sys.exit(main())
