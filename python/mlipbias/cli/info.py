"""``mlipbias info`` and ``mlipbias lammps-plugin-path``: what this installation contains."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="show the build (CUDA, LAMMPS plugin, OpenMP) and versions")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run_info)
    q = sub.add_parser(
        "lammps-plugin-path",
        help="print the path of the LAMMPS plugin, for `plugin load` in the Python lammps module",
    )
    q.set_defaults(func=run_plugin_path)


def collect() -> dict:
    from mlipbias import __version__, _core, gpu

    info = {"mlipbias": __version__, **dict(_core.build_info)}
    info["cuda_devices"] = gpu.device_count()
    info["cuda_unavailable_reason"] = gpu.unavailable_reason()
    try:
        from mlipbias.lammps import plugin_path

        info["lammps_plugin_path"] = plugin_path()
    except FileNotFoundError as exc:
        info["lammps_plugin_path"] = None
        info["lammps_plugin_missing"] = str(exc)
    return info


def run_info(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:24s} {value}")
    return 0


def run_plugin_path(args) -> int:
    from mlipbias.lammps import plugin_path

    print(plugin_path())
    return 0
