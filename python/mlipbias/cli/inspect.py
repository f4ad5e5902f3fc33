"""``mlipbias inspect MODEL.mlip``: what a model file holds, without loading torch.

Reads the file with :func:`mlipbias.modelfile.read_model_file` (the C++ reader: magic, version,
checksum), checks it against the schema, and describes it: kind (descriptor and network),
elements, cutoffs, descriptor size, network sizes, ensemble size, uncertainty methods,
calibration factors, the training data and settings stored with it, and the format version.
``--json`` prints the same as one JSON object.

Model kinds: ``model/kind`` names the kind (absent in files of the BP-NN, the first kind). Each
kind describes its descriptor and network in one function registered in :data:`KIND_SECTIONS`,
which returns ``{"descriptor": {...}, "network": {...}}``; everything else is common to all kinds.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

Records = Mapping[str, "np.ndarray | str"]


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="describe a .mlip model: kind, elements, cutoffs, sizes, uncertainties, calibration, data",
        description=(
            "Describe a .mlip model file: model kind (descriptor and network), elements, cutoffs, "
            "descriptor and network sizes, ensemble size, uncertainty methods, calibration factors, "
            "the training data and settings stored with it, and the file format version."
        ),
    )
    p.add_argument("model", help="the .mlip model file")
    p.add_argument("--json", action="store_true", help="print as one JSON object")
    p.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    info = describe(args.model)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


# ------------------------------------------------------------------------------ describe


def describe(path: str | Path) -> dict:
    """A JSON-ready description of the model file at ``path``.

    Raises FileNotFoundError for a missing file and ValueError naming the file for anything that is
    not an intact, schema-valid mlipbias model.
    """
    from mlipbias.modelfile import read_model_file, validate_model_records

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the .mlip file (e.g. {path / 'model.mlip'})")
    records = read_model_file(path)  # FileNotFoundError / ValueError naming the file
    try:
        validate_model_records(records)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    with path.open("rb") as f:
        (version,) = struct.unpack("<I", f.read(12)[8:12])

    kind = str(records.get("model/kind", "bpnn"))
    if kind not in KIND_SECTIONS:
        known = ", ".join(KIND_SECTIONS)
        raise ValueError(f"{path}: model kind {kind!r} is unknown to this mlipbias (known: {known})")
    info: dict = {
        "file": str(path),
        "format_version": int(version),
        "written_by": f"mlipbias {records['meta/mlipbias_version']}",
        "units": str(records["meta/units"]),
        "kind": kind,
        "elements": str(records["elements"]).split(),
        "cutoff": float(records["descriptor/cutoff"][0]) if "descriptor/cutoff" in records else None,
    }
    info.update(KIND_SECTIONS[kind](records))
    info["uncertainty"] = _uncertainty(records)
    info["calibration"] = _calibration(records)
    info["training"] = _training(records)
    return info


def _bpnn(records: Records) -> dict:
    """Behler-Parrinello: symmetry functions and one MLP per element (docs/model_file.md)."""
    from mlipbias.descriptors import SymmetryFunctions

    sf = SymmetryFunctions.from_records(records)
    table = sf.table
    counts = {f"G{k}": int(np.sum(table[:, 0] == k)) for k in (2, 4, 5)}
    radial = table[table[:, 0] == 2]
    angular = table[table[:, 0] != 2]
    # Every row acts on one neighbour element (G2) or one unordered element pair (G4, G5).
    channels = Counter(
        sf.elements[int(a)] if kind == 2 else "-".join(sf.elements[int(x)] for x in sorted((a, b)))
        for kind, a, b in table[:, :3]
    )
    descriptor = {
        "name": "atom-centred symmetry functions (Behler 2011)",
        "size": sf.n_sf,
        "functions": counts,
        "functions_per_channel": dict(channels),
        "radial_cutoffs": sorted({float(rc) for rc in radial[:, 7]}),
        "angular_cutoffs": sorted({float(rc) for rc in angular[:, 7]}),
        "radial_shells": [float(radial[:, 4].min()), float(radial[:, 4].max())] if len(radial) else None,
    }
    network = {"name": "Behler-Parrinello network (one MLP per element)", **_networks(records, sf.elements)}
    return {"descriptor": descriptor, "network": network}


def _gmnn(records: Records) -> dict:
    """GM-NN: Gaussian moments with trainable radial coefficients per member, one shared MLP
    (written per element in the BP-NN form, docs/model_file.md)."""
    from mlipbias.descriptors.gaussian_moments import contraction_sizes

    elements = str(records["elements"]).split()
    n_radial = int(records["descriptor/n_radial"][0])
    n_contractions = int(records["descriptor/n_contractions"][0])
    descriptor = {
        "name": "Gaussian moments (Zaverkin and Kastner 2020)",
        "size": int(sum(contraction_sizes(n_radial)[:n_contractions])),
        "gaussians": int(records["descriptor/n_basis"][0]),
        "radial_functions": n_radial,
        "contraction_groups": n_contractions,
        "r_min": float(records["descriptor/r_min"][0]),
        "beta_per_member": int(records["member/0/descriptor/beta"].size),
    }
    # Every element holds the same effective weights: count one of them.
    network = {"name": "GM-NN network (one MLP for all elements)", **_networks(records, elements[:1])}
    network["layers"] = {el: network["layers"][elements[0]] for el in elements}
    return {"descriptor": descriptor, "network": network}


def _networks(records: Records, elements: Sequence[str]) -> dict:
    """The network section common to the kinds: activation, layer widths per element, parameters
    of member 0's networks as stored, ensemble size and head."""
    n_members = int(records["model/n_members"][0])
    n_layers = int(records["model/n_layers"][0])
    layers, parameters = {}, 0
    for el in elements:
        shapes = [records[f"member/0/{el}/W{layer}"].shape for layer in range(1, n_layers + 1)]
        layers[el] = [int(shapes[0][1])] + [int(s[0]) for s in shapes]
        parameters += sum(n_out * n_in + n_out for n_out, n_in in shapes)
    network = {
        "activation": str(records["model/activation"]),
        "layers": layers,
        "parameters_per_member": parameters,
        "ensemble_members": n_members,
        "head": str(records.get("model/head", "none")),
    }
    if "model/head" in records:  # MVE/evidential outputs on the last hidden layer, beside the layers above
        network["head_parameters_per_member"] = int(
            sum(records[f"member/0/{el}/head_{x}"].size for el in elements for x in "Wb")
        )
    return network


# One function per model kind: records -> {"descriptor": {...}, "network": {...}}.
KIND_SECTIONS: dict[str, Callable[[Records], dict]] = {"bpnn": _bpnn, "gmnn": _gmnn}


def _uncertainty(records: Records) -> dict:
    methods = str(records.get("uq/methods", "")).split()
    out: dict = {"methods": methods}
    if "uq/gradient/k" in records:
        gradient = {
            "sketch_size_k": int(records["uq/gradient/k"][0]),
            "features": int(records["uq/gradient/precision_atom"].shape[0])
            if "uq/gradient/precision_atom" in records
            else None,
            "posterior_lambda": float(records["uq/gradient/lambda"][0])
            if "uq/gradient/lambda" in records
            else None,
        }
        for name, label in (("train_energy", "distance_structures"), ("train_atom", "distance_atoms")):
            if f"uq/gradient/{name}" in records:
                gradient[label] = int(records[f"uq/gradient/{name}"].shape[0])
        out["gradient_features"] = gradient
    gmm = {
        name.split("/")[2]: int(len(value))
        for name, value in records.items()
        if name.endswith("/weights") and name.startswith("uq/gmm/")
    }
    if gmm:
        out["gmm_components"] = gmm
    return out


def _calibration(records: Records) -> dict:
    """Conformal factors per method (1 where absent) and the GMM/NLL recalibrations."""
    methods = str(records.get("uq/methods", "")).split()
    factors = {
        method: {
            quantity: float(records[f"calibration/{quantity}/{method}"][0])
            if f"calibration/{quantity}/{method}" in records
            else None
            for quantity in ("energy", "force")
        }
        for method in methods
    }
    out: dict = {"conformal_factors": factors}
    if "calibration/alpha" in records:
        out["alpha"] = float(records["calibration/alpha"][0])
    nll = {
        name.removeprefix("calibration/nll/"): [float(x) for x in value]
        for name, value in records.items()
        if name.startswith("calibration/nll/")
    }
    if nll:
        out["nll_recalibration (a, b, min_variance)"] = nll
    return out


def _training(records: Records) -> dict | None:
    """What ``mlipbias train`` stored in ``meta/description`` (JSON), or the free text."""
    text = str(records.get("meta/description", "")).strip()
    if not text:
        return None
    try:
        stored = json.loads(text)
    except json.JSONDecodeError:
        return {"description": text}
    if not isinstance(stored, dict):
        return {"description": text}
    out: dict = {}
    if isinstance(data := stored.get("training_data"), dict):
        out["data"] = data
    if choice := stored.get("descriptor_choice"):
        out["descriptor_choice"] = "\n".join(map(str, choice))
    if isinstance(config := stored.get("trained_with"), dict):
        settings = {}
        gmnn = config.get("model", {}).get("kind") == "gmnn"  # its descriptor settings are model keys
        for section, keys in (
            ("data", ("path", "selection", "validation_fraction", "test_fraction", "seed")),
            ("descriptor", () if gmnn else ("preset",)),
            (
                "model",
                ("kind", "hidden") + (("cutoff", "n_basis", "n_radial", "n_contractions") if gmnn else ()),
            ),
            ("training", ("epochs", "energy_weight", "force_weight", "stress_weight", "loss", "seed")),
        ):
            for key in keys:
                if key in config.get(section, {}):
                    settings[f"{section}.{key}"] = config[section][key]
        out["settings"] = settings
    return out or {"description": text}


def training_data_summary(splits: Mapping[str, Sequence]) -> dict:
    """A summary of the training data to store with a model: ``{split: list of Atoms}`` ->
    structures, atoms, element counts, energy per atom range (eV/atom) and labels present.
    """
    summary: dict = {}
    for name, structures in splits.items():
        elements: Counter = Counter()
        energies, n_forces, n_stress = [], 0, 0
        for atoms in structures:
            elements.update(atoms.get_chemical_symbols())
            results = atoms.calc.results if atoms.calc is not None else {}
            if results.get("energy") is not None:
                energies.append(float(results["energy"]) / len(atoms))
            n_forces += results.get("forces") is not None
            n_stress += results.get("stress") is not None
        summary[name] = {
            "structures": len(structures),
            "atoms": int(sum(elements.values())),
            "elements": dict(sorted(elements.items())),
            "energy_per_atom_range": [min(energies), max(energies)] if energies else None,
            "with_forces": int(n_forces),
            "with_stress": int(n_stress),
        }
    return summary


# ------------------------------------------------------------------------------ text


def format_description(info: dict) -> str:
    """The human-readable form of :func:`describe`."""
    d, n = info["descriptor"], info["network"]
    lines = [
        f"{info['file']}: mlipbias model file, format version {info['format_version']}, "
        f"written by {info['written_by']}, units {info['units']}",
        f"kind          {info['kind']}: {d['name']} + {n['name']}",
        f"elements      {' '.join(info['elements'])}",
        f"cutoff        {_text(info['cutoff'])} A (neighbour-list radius)",
        "",
        "descriptor",
    ]
    lines += _block({k: v for k, v in d.items() if k != "name"})
    lines += ["", "network"]
    n = {**n, "layers": {el: "-".join(map(str, widths)) for el, widths in n["layers"].items()}}
    lines += _block({k: v for k, v in n.items() if k != "name"})
    lines += ["", "uncertainty"]
    u = dict(info["uncertainty"])
    u["methods"] = " ".join(u["methods"]) or "none"
    lines += _block(u)
    lines += ["", "calibration"]
    c = info["calibration"]
    factors = {
        method: ", ".join(f"{q} {'1 (none stored)' if v is None else f'{v:.4g}'}" for q, v in fq.items())
        for method, fq in c["conformal_factors"].items()
    }
    lines += _block(
        {"conformal factors": factors or "none", **{k: v for k, v in c.items() if k != "conformal_factors"}}
    )
    lines += ["", "training"]
    lines += _block(info["training"] or {"description": "none stored"})
    return "\n".join(lines)


# Units shown after a value in the text form.
UNITS = {
    "radial_cutoffs": "A",
    "angular_cutoffs": "A",
    "radial_shells": "A (first and last rs)",
    "r_min": "A (centre of the first Gaussian)",
    "energy_per_atom_range": "eV/atom",
}


def _block(values: dict, indent: int = 2) -> list[str]:
    lines = []
    for key, value in values.items():
        label = key if "." in key else key.replace("_", " ")  # config keys keep their spelling
        if isinstance(value, dict):
            lines.append(" " * indent + f"{label}")
            lines += _block(value, indent + 2)
        else:
            unit = f" {UNITS[key]}" if key in UNITS and value is not None else ""
            text = _text(value).replace("\n", "\n" + " " * (indent + 27))  # multi-line text stays aligned
            lines.append(" " * indent + f"{label:26s} {text}{unit}")
    return lines


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) if value else "-"
    return str(value)
