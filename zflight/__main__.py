"""``python -m zflight``: see :mod:`zflight.cli`."""

from zflight.cli import main

if __name__ == "__main__":
    main()
