"""`python -m shared.cli`: the same command as `openrouter-agent`."""

from shared.cli import main

main()
