"""``python -m clip_har`` runs the CLI."""

from clip_har.cli.main import main

main()
