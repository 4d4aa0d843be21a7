"""`python -m tapa_scale.train --config FILE [key=value ...]` (console script `tapa-train`)."""
from __future__ import annotations

import argparse
import sys


def _refuse(error: Exception) -> int:
    """One `error: ...` line on stderr, written in one call: ranks of a launch share the launcher's
    stderr, and print() writes the text and its newline separately, so two ranks' lines could merge."""
    sys.stderr.write(f"error: {error}\n")
    sys.stderr.flush()
    return 2


def main(argv=None) -> int:
    # Imports here, not at the top: spawned helper processes (the checkpoint writers' Manager) import
    # this main module again and need none of it.
    from ..config import ConfigError, load_config

    parser = argparse.ArgumentParser(
        prog="tapa-train", description="Train (or resume) a TAPA / RoPE-family language model.",
        epilog="Overrides are dotted keys of the config schema, e.g. train.steps=200 model.pos_encoding=rope "
               "model.tapa.alpha=0.1 parallel.tp=2. The same command resumes from the latest complete "
               "checkpoint in run.dir.")
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        return _refuse(e)
    from ..data import DataError
    from .loop import NonFiniteStop, OutOfMemory, train
    try:
        train(cfg)
    except (ConfigError, DataError, NonFiniteStop, OutOfMemory) as e:  # refused resume, bad data, policy stop, OOM
        return _refuse(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
