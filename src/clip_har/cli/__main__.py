"""``python -m clip_har.cli`` (what ``torchrun -m clip_har.cli train ...`` runs)."""

from clip_har.cli.main import main

main()
