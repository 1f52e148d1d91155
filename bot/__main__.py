"""``python -m bot`` is the ``videobot`` command."""

from bot.cli import main

main()
