"""The ``pare`` command installed by the wheel: the CLI itself, inside the extension."""

import sys


def main() -> None:
    from pare import _pare

    try:
        code = _pare.main(["pare", *sys.argv[1:]])
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
