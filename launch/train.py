"""usage: python -m launch.train CONFIG [dotted.key=value ...]

Locally it starts a Ray cluster on this machine; under `ray job submit` it joins the job's cluster.
Examples:
    python -m launch.train configs/quickstart.yaml
    python -m launch.train configs/debug_cpu.yaml trainer.total_steps=3 trainer.output_dir=/tmp/run
A configuration or input problem exits with status 2 and one `error:` line per problem, naming the
key/file and the fix (every unknown key at once, with the name it has here when it is a TRL, verl or
OpenRLHF name). `--help` lists every config key with its type, default and meaning.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"{__doc__}\nRun with --help for every config key.", file=sys.stderr)
        return 2
    from launch.packages import pin

    pin()  # before anything imports reward/rl/rollout: a user's reward.py in the cwd must not replace them
    if argv[0] in ("-h", "--help"):
        from launch.config import help_text

        print(f"{__doc__}\n{help_text()}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)

    from launch.config import ConfigError, load_config
    from launch.models import ModelNotFoundError
    from rollout.data import DataError

    path, overrides = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    try:
        cfg = load_config(path, overrides)
        from launch.loop import run

        out = run(cfg)
    except (ConfigError, DataError, ModelNotFoundError) as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(f"done: outputs in {out} (final model: {out / 'final'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
