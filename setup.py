"""Build: Cython extensions for the hot paths, the guest SDK into the package, and the
bundled guests through hlsandbox.sdk.build (the one build path for guests)."""
import importlib
import os
import shutil
import sys
import types
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SDK_SOURCES = HERE / "csrc" / "sdk"
BUNDLED_GUESTS = HERE / "csrc" / "guests"
sys.path.insert(0, str(HERE / "csrc"))
from lua.build_lua import build_lua_guest  # noqa: E402  (Lua from a pinned sdist, then sdk.build)

ABI_HEADER_DIR = "csrc/sdk/common"  # hl_abi.h, read by hlsandbox/abi.pxd

EXTENSIONS = [
    Extension("hlsandbox.abi", ["hlsandbox/abi.pyx"], include_dirs=[ABI_HEADER_DIR]),
    Extension("hlsandbox.mem.shared_memory", ["hlsandbox/mem/shared_memory.pyx"]),
    Extension("hlsandbox.mem.paging", ["hlsandbox/mem/paging.pyx"]),
    Extension("hlsandbox.func.wire", ["hlsandbox/func/wire.pyx"], include_dirs=[ABI_HEADER_DIR]),
    Extension("hlsandbox.hypervisor.device", ["hlsandbox/hypervisor/device.pyx"],
              include_dirs=["hlsandbox/hypervisor"]),
    Extension("hlsandbox.hypervisor.kvm", ["hlsandbox/hypervisor/kvm.pyx"], include_dirs=["hlsandbox/hypervisor"]),
    Extension("hlsandbox.sandbox.call_path", ["hlsandbox/sandbox/call_path.pyx"],
              include_dirs=["hlsandbox/hypervisor", ABI_HEADER_DIR]),
    Extension("hlsandbox.sandbox.hot_path", ["hlsandbox/sandbox/hot_path.pyx"],
              include_dirs=["hlsandbox/hypervisor", "hlsandbox/sandbox", ABI_HEADER_DIR]),
]


def _sdk_module():
    """hlsandbox.sdk.build without running hlsandbox/__init__.py (which needs the
    extensions this build makes): a bare package object stands in for hlsandbox."""
    saved = {k: v for k, v in sys.modules.items() if k == "hlsandbox" or k.startswith("hlsandbox.")}
    pkg = types.ModuleType("hlsandbox")
    pkg.__path__ = [str(HERE / "hlsandbox")]
    sys.modules["hlsandbox"] = pkg
    try:
        return importlib.import_module("hlsandbox.sdk.build")
    finally:
        for k in [k for k in sys.modules if k == "hlsandbox" or k.startswith("hlsandbox.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _up_to_date(out: Path, inputs: list) -> bool:
    try:
        built = out.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(p.stat().st_mtime_ns < built for p in inputs)


def build_bundled_guests(out_dir: Path) -> list:
    """csrc/guests/<profile>/*.c → out_dir/<name>.elf; outputs newer than every input
    (the guest, the SDK, sdk/build.py) are not rebuilt."""
    sdk = _sdk_module()
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for profile in sdk.PROFILES:
        sdk_inputs = [p for p in (SDK_SOURCES / profile).iterdir()] + list((SDK_SOURCES / "common").iterdir())
        sdk_inputs.append(HERE / "hlsandbox" / "sdk" / "build.py")
        for guest in sorted((BUNDLED_GUESTS / profile).glob("*.c")):
            out = out_dir / f"{guest.stem}.elf"
            if out in outputs:
                raise RuntimeError(f"two bundled guests are named {guest.stem!r}")
            if not _up_to_date(out, sdk_inputs + [guest]):
                # Relative file names in __FILE__ and the debug info, free of this machine's paths.
                sdk.build([guest], out, profile=profile,
                          extra_cflags=["-Werror", f"-ffile-prefix-map={HERE}/="])
            outputs.append(out)
    return outputs


class BuildPyWithSdk(build_py):
    """Copies the SDK's C sources into the package (hlsandbox/sdk/src), so an installed
    hlsandbox builds guests without the source tree."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            dest = Path(self.build_lib) / "hlsandbox" / "sdk" / "src"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(SDK_SOURCES, dest, ignore=shutil.ignore_patterns("*.o", "*~"))


class BuildExtAndGuests(build_ext):
    """Builds the extensions, then the bundled guests into hlsandbox/guests/bin."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:  # the extensions compile independently
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        super().run()
        in_source = self.inplace or getattr(self, "editable_mode", False)
        root = HERE if in_source else Path(self.build_lib)
        build_bundled_guests(root / "hlsandbox" / "guests" / "bin")
        build_lua_guest(root / "hlsandbox" / "guests" / "bin", _sdk_module())


setup(
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
    cmdclass={"build_ext": BuildExtAndGuests, "build_py": BuildPyWithSdk},
)
