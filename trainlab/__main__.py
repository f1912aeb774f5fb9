"""`python -m trainlab ...` (what torchrun launches) is the `trainlab` command."""

from trainlab.cli import main

raise SystemExit(main())
