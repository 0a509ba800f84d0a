"""`python -m seggen.cli` (what `accelerate launch -m seggen.cli` runs): the `seggen` command."""

from seggen.cli import main

main()
