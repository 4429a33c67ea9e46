"""Search hyper-parameters: ``python run_hyper.py --model=CMI --dataset=micro_video --params_file=...`` is
``python -m recbole_cmi tune`` (see its --help)."""

import sys

from recbole_cmi.__main__ import tune as main

if __name__ == "__main__":
    sys.exit(main())
