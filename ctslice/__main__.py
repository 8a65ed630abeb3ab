"""``python -m ctslice`` runs the CLI; this is the entry ``torchrun -m ctslice train ...`` uses."""

from ctslice.cli import main

main()
