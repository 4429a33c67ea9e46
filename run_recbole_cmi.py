"""Train and test a model: ``python run_recbole_cmi.py --model=CMI --dataset=micro_video`` is ``python -m recbole_cmi run``."""

import sys

from recbole_cmi.__main__ import run as main

if __name__ == "__main__":
    sys.exit(main())
