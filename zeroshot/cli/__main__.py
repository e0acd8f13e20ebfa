"""``python -m zeroshot.cli``."""
from . import main

main()
