"""``python -m provisioning.cli``: the command line, as the quickstart starts its own processes."""

from provisioning.cli import main

main()
