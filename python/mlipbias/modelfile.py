"""The ``.mlip`` model file: writer, reader and schema check (docs/model_file.md).

The file is a container of named records (float64 arrays, int64 arrays, UTF-8 strings)
with a magic string, a format version and an FNV-1a checksum. Python writes it; the C++
core (``cpp/model_file.hpp``) reads it, for Python through ``mlipbias._core.ModelFile``
and for the LAMMPS plugin directly, so both sides see the same bytes and the same errors.

    records = {"meta/format": "mlipbias-model", "elements": "Si O", "descriptor/cutoff": 6.0, ...}
    validate_model_records(records)          # raises ValueError listing every problem
    write_model_file("model.mlip", records)  # atomic: a temporary file renamed into place
    records = read_model_file("model.mlip")  # {name: numpy array or str}

Python scalars are stored as arrays of shape ``[1]``, the convention of the schema.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MAGIC = b"MLIPBIAS"
FORMAT_VERSION = 1
_DTYPE_CODES = {"float64": 1, "int64": 2, "string": 3}

RecordValue = np.ndarray | str | float | int

ACTIVATIONS = ("tanh", "silu")
UQ_METHODS = ("ensemble", "mve", "evidential", "gmm", "posterior", "distance")
# No number of a model is larger in magnitude, and no scaling std smaller than its inverse:
# beyond it a file is damaged and evaluating it would overflow (the limit of cpp/model.cpp;
# the messages name it).
MAX_VALUE = 1e12
SYMMETRY_FUNCTION_COLUMNS = ("kind", "a", "b", "eta", "rs", "zeta", "lambda", "rc")


def _as_record(name: str, value: RecordValue) -> tuple[str, np.ndarray | str]:
    """(dtype name, value as a contiguous little-endian array or str); ValueError names the record."""
    if isinstance(value, str):
        return "string", value
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"record {name}: booleans are not a record dtype; store 0/1 as int64")
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = np.asarray([value])
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return "float64", np.asarray(array, dtype="<f8", order="C")
    if array.dtype.kind in "iu":
        if array.size and array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
            raise ValueError(f"record {name}: unsigned values beyond the int64 range")
        return "int64", np.asarray(array, dtype="<i8", order="C")
    raise ValueError(f"record {name}: cannot store dtype {array.dtype} (use float64, int64 or str)")


def encode_model_file(records: Mapping[str, RecordValue], version: int = FORMAT_VERSION) -> bytes:
    """The bytes of a model file holding ``records`` in their order (no schema check)."""
    from mlipbias import _core

    parts = [MAGIC, struct.pack("<II", version, len(records))]
    for name, value in records.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"record names must be non-empty strings, got {name!r}")
        dtype, data = _as_record(name, value)
        name_bytes = name.encode("utf-8")
        if dtype == "string":
            payload = data.encode("utf-8")
            shape: tuple[int, ...] = (len(payload),)
        else:
            payload = data.tobytes()
            shape = data.shape
        parts.append(struct.pack("<I", len(name_bytes)))
        parts.append(name_bytes)
        parts.append(struct.pack(f"<BI{len(shape)}Q", _DTYPE_CODES[dtype], len(shape), *shape))
        parts.append(payload)
    body = b"".join(parts)
    return body + struct.pack("<Q", _core.fnv1a64(body))


def write_model_file(path: str | os.PathLike, records: Mapping[str, RecordValue]) -> Path:
    """Write ``records`` to ``path`` atomically (a temporary file in the same folder, renamed).

    The container is generic: call :func:`validate_model_records` first when the records
    describe a model. A reader never sees a half-written file, and an existing file is only
    replaced once the new one is complete on disk.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory for the model file {path.name}")
    data = encode_model_file(records)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); a model file gets the usual permissions.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_model_file(path: str | os.PathLike) -> dict[str, np.ndarray | str]:
    """All records of a model file, in file order: numpy arrays (float64, int64) and str.

    Raises FileNotFoundError for a missing file and ValueError naming the file and the
    problem for anything that is not an intact model file of a version this mlipbias reads.
    The schema is not checked here; see :func:`validate_model_records`.
    """
    from mlipbias import _core

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    model_file = _core.ModelFile.load(str(path))
    return {name: model_file.get(name) for name in model_file.names()}


# ------------------------------------------------------------------------------ schema


class _Checker:
    """Collects schema problems so that one error lists all of them."""

    def __init__(self, records: Mapping[str, RecordValue]):
        self.problems: list[str] = []
        self.records: dict[str, tuple[str, np.ndarray | str]] = {}
        for name, value in records.items():
            try:
                self.records[name] = _as_record(name, value)
            except ValueError as err:
                self.problems.append(str(err))

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def get(self, name: str, dtype: str, shape: tuple[int | None, ...] | None = None, required: bool = True):
        """The value of a record of this dtype and shape (None = any size), or None after a problem."""
        if name not in self.records:
            if required:
                self.problem(f"missing record {name}")
            return None
        found_dtype, value = self.records[name]
        if found_dtype != dtype:
            self.problem(f"record {name} has dtype {found_dtype}, expected {dtype}")
            return None
        if shape is not None:
            ok = value.ndim == len(shape) and all(
                e is None or e == f for e, f in zip(shape, value.shape, strict=True)
            )
            if not ok:
                expected = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
                self.problem(f"record {name} has shape {list(value.shape)}, expected {expected}")
                return None
        return value

    def scalar(self, name: str, dtype: str, required: bool = True):
        value = self.get(name, dtype, (1,), required)
        return None if value is None else value[0].item()


def validate_model_records(records: Mapping[str, RecordValue]) -> None:
    """Check records against the model schema of docs/model_file.md.

    Checks the metadata, the element list, the symmetry-function table, the scaling of every
    element, every member/element/layer with consistent shapes (n_members, n_layers), the
    sketched gradient-feature records required by the listed uncertainty methods and the
    calibration records. Records the schema does not name are allowed (Python-only data).
    Raises ValueError listing every problem, each naming its record.
    """
    c = _Checker(records)
    _check_meta(c)
    elements = _check_elements(c)
    n_sf = _check_descriptor(c, elements)
    n_members, layers = _check_members(c, elements, n_sf)
    methods = _check_uq(c, elements, n_members, layers)
    _check_calibration(c, methods)
    for name, (dtype, value) in c.records.items():
        if dtype != "float64":
            continue
        if not np.all(np.isfinite(value)):
            c.problem(f"record {name} contains NaN or infinite values")
        elif value.size and np.abs(value).max() > MAX_VALUE:
            k = int(np.argmax(np.abs(value)))
            c.problem(
                f"record {name} has entry {k} = {value.flat[k]:.6g}, beyond the limit of 1e12 "
                "for any model number (a damaged or hand-edited file?)"
            )
    if c.problems:
        raise ValueError("invalid model records:\n  " + "\n  ".join(c.problems))


def _check_meta(c: _Checker) -> None:
    if (fmt := c.get("meta/format", "string")) is not None and fmt != "mlipbias-model":
        c.problem(f"record meta/format is {fmt!r}, expected 'mlipbias-model'")
    if (units := c.get("meta/units", "string")) is not None and units != "eV Angstrom":
        c.problem(f"record meta/units is {units!r}, expected 'eV Angstrom'")
    c.get("meta/mlipbias_version", "string")
    c.get("meta/description", "string", required=False)


def _check_elements(c: _Checker) -> list[str]:
    text = c.get("elements", "string")
    if text is None:
        return []
    from ase.data import chemical_symbols

    elements = text.split(" ")
    if not text or any(not el for el in elements):
        c.problem(f"record elements {text!r} must be symbols separated by single spaces, e.g. 'Si O'")
        return []
    unknown = [el for el in elements if el not in chemical_symbols[1:]]
    if unknown:
        c.problem(f"record elements: unknown element symbol(s) {', '.join(unknown)}")
    if len(set(elements)) != len(elements):
        c.problem(f"record elements {text!r} lists an element twice")
    return elements


def _check_descriptor(c: _Checker, elements: list[str]) -> int | None:
    cutoff = c.scalar("descriptor/cutoff", "float64")
    if cutoff is not None and not cutoff > 0:
        c.problem(f"record descriptor/cutoff is {cutoff}, expected a positive cutoff in Angstrom")
    kind = c.get("descriptor/kind", "string", required=False) or "symmetry_functions"
    n_sf = None
    if kind == "gaussian_moments":
        n_sf = _check_gaussian_moments(c, elements, cutoff)
    elif kind != "symmetry_functions":
        c.problem(f"record descriptor/kind is {kind!r}, expected symmetry_functions or gaussian_moments")
    else:
        table = c.get("descriptor/functions", "float64", (None, len(SYMMETRY_FUNCTION_COLUMNS)))
        if table is not None:
            n_sf = table.shape[0]
            if n_sf == 0:
                c.problem("record descriptor/functions has no rows (no symmetry functions)")
            _check_symmetry_functions(c, table, len(elements), cutoff)
    for el in elements:
        c.get(f"scaling/{el}/mean", "float64", (n_sf,))
        std = c.get(f"scaling/{el}/std", "float64", (n_sf,))
        if std is not None and np.any(~(std >= 1 / MAX_VALUE)):
            c.problem(f"record scaling/{el}/std has entries below 1e-12 (constant features get 1)")
    return n_sf


def _check_gaussian_moments(c: _Checker, elements: list[str], cutoff) -> int | None:
    """The GM-NN descriptor records (docs/model_file.md "GM-NN"); returns the number of features."""
    from mlipbias.descriptors.gaussian_moments import contraction_sizes

    sizes = {}
    for name, low, high in (("n_basis", 1, 10**4), ("n_radial", 1, 10**3), ("n_contractions", 1, 8)):
        value = c.scalar(f"descriptor/{name}", "int64")
        if value is not None and not low <= value <= high:
            c.problem(f"record descriptor/{name} is {value}, expected {low}..{high}")
            value = None
        sizes[name] = value
    r_min = c.scalar("descriptor/r_min", "float64")
    if r_min is not None and cutoff is not None and not 0 <= r_min < cutoff:
        c.problem(f"record descriptor/r_min is {r_min}, expected 0 <= r_min < descriptor/cutoff ({cutoff})")
    if c.get("model/kind", "string") not in (None, "gmnn"):
        c.problem("record model/kind must be 'gmnn' with descriptor/kind 'gaussian_moments'")
    n_members = c.scalar("model/n_members", "int64")
    if None in sizes.values():
        return None
    shape = (len(elements), len(elements), sizes["n_radial"], sizes["n_basis"])
    for m in range(min(n_members or 0, 10**4)):
        if f"member/{m}/energy_scale" not in c.records:
            continue  # the member check reports missing members
        c.get(f"member/{m}/descriptor/beta", "float64", shape)
        c.get(f"member/{m}/gmnn/element_scale", "float64", (len(elements),))
    return sum(contraction_sizes(sizes["n_radial"])[: sizes["n_contractions"]])


def _check_symmetry_functions(c: _Checker, table: np.ndarray, n_elements: int, cutoff) -> None:
    name = "descriptor/functions"

    def is_index(x: float, allow_minus_one: bool = False) -> bool:
        return x == int(x) and (0 <= x < n_elements or (allow_minus_one and x == -1))

    for row, (kind, a, b, eta, _rs, zeta, lam, rc) in enumerate(table):
        where = f"record {name} row {row}"
        if kind not in (2, 4, 5):
            c.problem(f"{where}: kind {kind:g} is not 2, 4 or 5")
            continue
        if n_elements and not is_index(a):
            c.problem(f"{where}: neighbour element index a = {a:g} is not in 0..{n_elements - 1}")
        if kind == 2 and b != -1:
            c.problem(f"{where}: b = {b:g}, expected -1 for a G2 function")
        if kind != 2:
            if n_elements and not is_index(b):
                c.problem(f"{where}: neighbour element index b = {b:g} is not in 0..{n_elements - 1}")
            if lam not in (-1, 1):
                c.problem(f"{where}: lambda = {lam:g}, expected -1 or 1")
            if not zeta >= 1:
                c.problem(f"{where}: zeta = {zeta:g}, expected >= 1")
        if not eta >= 0:
            c.problem(f"{where}: eta = {eta:g}, expected >= 0")
        if not rc > 0:
            c.problem(f"{where}: rc = {rc:g}, expected a positive cutoff")
    if cutoff is not None and len(table) and np.isfinite(table[:, 7]).all():
        largest = float(table[:, 7].max())
        if not np.isclose(cutoff, largest, rtol=1e-12, atol=0):
            c.problem(
                f"record descriptor/cutoff is {cutoff:g}, expected the largest rc of {name}, {largest:g}"
            )


def _check_members(
    c: _Checker, elements: list[str], n_sf: int | None
) -> tuple[int | None, dict[str, list[tuple[int, int]]]]:
    """Checks every member; returns n_members and the (n_out, n_in) of each layer of member 0."""
    activation = c.get("model/activation", "string")
    if activation is not None and activation not in ACTIVATIONS:
        c.problem(f"record model/activation is {activation!r}, expected one of {', '.join(ACTIVATIONS)}")
    n_members = c.scalar("model/n_members", "int64")
    n_layers = c.scalar("model/n_layers", "int64")
    for name, value in (("model/n_members", n_members), ("model/n_layers", n_layers)):
        if value is not None and value < 1:
            c.problem(f"record {name} is {value}, expected >= 1")
    layers: dict[str, list[tuple[int, int]]] = {}
    if not n_members or not n_layers or n_members < 1 or n_layers < 1:
        return n_members, layers
    # Only members with records are walked, so a corrupt n_members cannot make this loop long.
    present = {int(match[1]) for name in c.records if (match := re.match(r"member/(\d+)/", name))}
    absent = [m for m in range(min(n_members, len(present) + 3)) if m not in present]
    if absent:
        listed = ", ".join(map(str, absent[:3])) + (", ..." if n_members > len(present) + 3 else "")
        c.problem(f"record model/n_members is {n_members} but member(s) {listed} have no records")
    for m in sorted(m for m in present if m < n_members):
        prefix = f"member/{m}"
        scale = c.scalar(f"{prefix}/energy_scale", "float64")
        if scale is not None and scale == 0:
            c.problem(f"record {prefix}/energy_scale is 0")
        c.get(f"{prefix}/energy_shift", "float64", (len(elements),))
        for el in elements:
            n_in = n_sf
            shapes = []
            for layer in range(1, n_layers + 1):
                n_out = 1 if layer == n_layers else None
                w = c.get(f"{prefix}/{el}/W{layer}", "float64", (n_out, n_in))
                if w is None:
                    break
                c.get(f"{prefix}/{el}/b{layer}", "float64", (w.shape[0],))
                shapes.append(w.shape)
                n_in = w.shape[0]
            if m == 0 and len(shapes) == n_layers:
                layers[el] = shapes
    # Weights beyond the declared sizes mean n_members or n_layers is wrong.
    pattern = re.compile(r"member/(\d+)/(.+?)/([Wb])(\d+)$")
    for name in c.records:
        match = pattern.match(name)
        if match is None:
            continue
        m, el, _, layer = int(match[1]), match[2], match[3], int(match[4])
        if m >= n_members:
            c.problem(f"record {name} is present but model/n_members is {n_members}")
        elif el not in elements:
            c.problem(f"record {name} is for element {el!r}, which is not in elements")
        elif not 1 <= layer <= n_layers:
            c.problem(f"record {name} is present but model/n_layers is {n_layers}")
    return n_members, layers


def _check_uq(
    c: _Checker, elements: list[str], n_members: int | None, layers: dict[str, list[tuple[int, int]]]
) -> list[str]:
    text = c.get("uq/methods", "string", required=False) or ""
    methods = text.split()
    for method in methods:
        if method not in UQ_METHODS:
            c.problem(f"record uq/methods: unknown method {method!r} (known: {', '.join(UQ_METHODS)})")
    if len(set(methods)) != len(methods):
        c.problem(f"record uq/methods {text!r} lists a method twice")
    if "ensemble" in methods and n_members is not None and n_members < 2:
        c.problem("record uq/methods lists 'ensemble' but model/n_members is below 2")

    gradient = "posterior" in methods or "distance" in methods
    if not gradient and not any(name.startswith("uq/gradient/") for name in c.records):
        return methods
    k = c.scalar("uq/gradient/k", "int64")
    if k is not None and k < 1:
        c.problem(f"record uq/gradient/k is {k}, expected >= 1")
        k = None
    n_feat = None
    if k is not None and elements and len(layers) == len(elements):
        n_layers = len(next(iter(layers.values())))
        n_feat = len(elements) * n_layers * k
        for el, shapes in layers.items():
            for layer, (n_out, n_in) in enumerate(shapes, start=1):
                c.get(f"uq/gradient/{el}/R1_{layer}", "float64", (k, n_out))
                c.get(f"uq/gradient/{el}/R2_{layer}", "float64", (k, n_in + 1))
    posterior = "posterior" in methods
    lam = c.scalar("uq/gradient/lambda", "float64", required=posterior)
    if lam is not None and not lam > 0:
        c.problem(f"record uq/gradient/lambda is {lam}, expected > 0")
    for name in ("precision_energy", "precision_atom"):
        a = c.get(f"uq/gradient/{name}", "float64", (n_feat, n_feat), required=posterior)
        # A tolerance, as inverses of ill-conditioned matrices are symmetric only to eps * cond.
        if a is not None and a.shape[0] == a.shape[1] and np.abs(a - a.T).max() > 1e-4 * np.abs(a).max():
            c.problem(f"record uq/gradient/{name} is not symmetric")
    for name in ("train_energy", "train_atom"):
        t = c.get(f"uq/gradient/{name}", "float64", (None, n_feat), required="distance" in methods)
        if t is not None and t.shape[0] == 0:
            c.problem(f"record uq/gradient/{name} has no rows")
    return methods


def _check_calibration(c: _Checker, methods: list[str]) -> None:
    has_factors = False
    for name in c.records:
        parts = name.split("/")
        if parts[0] != "calibration" or name == "calibration/alpha":
            continue
        if len(parts) == 3 and parts[1] in ("energy", "force"):
            has_factors = True
            factor = c.scalar(name, "float64")
            if factor is not None and not factor > 0:
                c.problem(f"record {name} is {factor}, expected a positive factor")
        elif len(parts) == 4 and parts[1] == "nll" and parts[2] in ("energy", "force"):
            # (a, b, min_variance) of mlipbias.uq.calibration.VarianceRecalibration
            value = c.get(name, "float64", (3,))
            if value is not None and not (value[0] >= 0 and value[2] > 0):
                c.problem(
                    f"record {name} holds a = {value[0]:g}, min_variance = {value[2]:g}; "
                    "expected a >= 0 and min_variance > 0"
                )
        else:
            c.problem(
                f"record {name} is not calibration/energy|force/METHOD or calibration/nll/energy|force/METHOD"
            )
            continue
        if parts[-1] not in methods:
            c.problem(f"record {name} calibrates method {parts[-1]!r}, which is not in uq/methods")
    alpha = c.scalar("calibration/alpha", "float64", required=has_factors)
    if alpha is not None and not 0 < alpha < 1:
        c.problem(f"record calibration/alpha is {alpha}, expected 0 < alpha < 1")
