"""Build: Cython extensions for the hot paths, and the C guests with the system compiler."""
import sys
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "csrc"))
from build_guests import build_guests  # noqa: E402
from lua.build_lua import build_lua_guest  # noqa: E402

EXTENSIONS = [
    Extension("hlsandbox.mem.shared_memory", ["hlsandbox/mem/shared_memory.pyx"]),
    Extension("hlsandbox.mem.paging", ["hlsandbox/mem/paging.pyx"]),
    Extension("hlsandbox.func.wire", ["hlsandbox/func/wire.pyx"]),
    Extension("hlsandbox.hypervisor.kvm", ["hlsandbox/hypervisor/kvm.pyx"], include_dirs=["hlsandbox/hypervisor"]),
    Extension("hlsandbox.sandbox.call_path", ["hlsandbox/sandbox/call_path.pyx"],
              include_dirs=["hlsandbox/hypervisor"]),
]


class BuildExtAndGuests(build_ext):
    """Builds the extensions, then the guests into hlsandbox/guests/bin."""

    def run(self) -> None:
        super().run()
        in_source = self.inplace or getattr(self, "editable_mode", False)
        root = HERE if in_source else Path(self.build_lib)
        build_guests(root / "hlsandbox" / "guests" / "bin")
        build_lua_guest(root / "hlsandbox" / "guests" / "bin")


setup(
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
    cmdclass={"build_ext": BuildExtAndGuests},
)
