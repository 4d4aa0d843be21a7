#!/usr/bin/env python
"""Check every rank of a job before training: versions, devices, disk, data, collective bandwidth.

    torchrun --nproc-per-node 8 tools/preflight.py --config configs/125m.yaml [key=value ...] [--json OUT]

The launchers run it before training (PREFLIGHT=0 turns that off). See docs/operations.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapa_scale.preflight import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
