"""The guest SDK: build amd64 and i686 guests from C sources.

    from hlsandbox import sdk
    sdk.build(["guest.c"], "guest.elf")          # amd64, with the C library
    sdk.build(["g32.c"], "g32.elf", profile="i686")

The same from the command line: `python3 -m hlsandbox build guest.c -o guest.elf`.
docs/guests.md is the guide.

Pure standard library (setup.py uses it to build the bundled guests before
anything is compiled).
"""
from .build import API_NAMES, PROFILES, build, include_dirs, sdk_root

__all__ = ["API_NAMES", "PROFILES", "build", "include_dirs", "sdk_root"]
