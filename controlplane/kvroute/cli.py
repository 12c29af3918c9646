"""`kvroute serve | sim | demo`: each subcommand owns its flags in its own module."""

from __future__ import annotations

import sys
from typing import Sequence

USAGE = """usage: kvroute <command> [options]

commands:
  serve   run the router in front of vLLM backends (kvroute serve --help)
  sim     run simulated vLLM servers (kvroute sim --help)
  demo    simulated fleet + router + a short workload (kvroute demo --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from kvroute.gateway import main as run
    elif command == "sim":
        from kvroute.sim.cli import main as run
    elif command == "demo":
        from kvroute.demo import main as run
    else:
        print(f"kvroute: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
