"""``python -m zeroshot``: the command line."""
from .cli import main

main()
