"""The pure helpers of benchmarks/peers.py: FLOP counts and the table's ratios (no timing here)."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
peers = pytest.importorskip("peers")


def test_network_flops_match_torch_flop_counter():
    """Forward + input gradient of a dense network (energy + forces inference) against torch's own
    count of the matrix products it runs."""
    widths = [36, 20, 12, 1]
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [torch.nn.Linear(a, b, dtype=torch.float64), torch.nn.SiLU()]
    net = torch.nn.Sequential(*layers[:-1]).requires_grad_(False)
    atoms = 7
    x = torch.randn(atoms, widths[0], dtype=torch.float64, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()  # the weights need no gradient: only the input gradient is run
    assert x.grad.shape == x.shape
    assert peers.network_flops(widths) * atoms == counter.get_total_flops()
    assert peers.network_flops(widths, passes=6) == 3 * peers.network_flops(widths)


def test_case_names_split_into_model_and_variant():
    for case in peers.OURS:
        model, variant = peers._split(case.name)
        assert f"{model}, {variant}" == case.name
        assert variant in {v for v, _, _ in peers.VARIANTS}
        assert "ensemble" not in model
    with pytest.raises(KeyError):
        peers._split("SNAP Ta06A")


def _row(run, cpu, wall=None, **extra):
    wall = 2 * cpu if wall is None else wall
    return {
        "key": run.key,
        "case": run.case.name,
        "n_atoms": 2592,
        "cpu_us_per_atom_step": cpu,
        "us_per_atom_step": wall,
        "load_1min": 1.0,
        "threads": run.threads,
        "ranks": run.ranks,
        **extra,
    }


def test_tables_give_ratios_to_the_plain_model_of_the_same_file():
    cases = {c.name: c for c in peers.OURS}
    gm = peers.MODELS["gmnn512"]
    plain, bias = cases[f"{gm}, plain"], cases[f"{gm}, gradient-feature bias"]
    ens_plain, ens_bias = cases[f"{gm}, ensemble of 4, plain"], cases[f"{gm}, ensemble of 4, bias"]
    rows = [
        _row(peers.Run(peers.PEERS[0]), 200.0),
        _row(peers.Run(plain), 100.0),
        _row(peers.Run(plain), 80.0),  # the least of the rounds counts
        _row(peers.Run(bias), 120.0),
        _row(peers.Run(ens_plain), 400.0),
        _row(peers.Run(ens_bias), 440.0),
        _row(peers.Run(plain, "single"), 60.0),
        _row(peers.Run(bias, "single"), 90.0),
        _row(peers.Run(plain, threads=2), 90.0, wall=100.0),
        _row(peers.Run(plain, ranks=2), 88.0, wall=80.0),
        {"key": peers.Run(bias, threads=2).key, "case": bias.name, "failed": "lmp failed"},
        {"key": peers.Run(cases["BP-NN SiO2 shipped, plain"]).key, "case": "x", "failed": "lmp failed"},
    ]
    env = {
        k: {"width": 1, "cutoff": "6", "neighbours": 59.0, "triplets": 0.0, "net": [360, 512, 512, 1]}
        for k in ("fast", "bpnn", "gmnn512", "gmnn64", "ML-IAP NN Cu", "SNAP Ta06A", "torchani")
    }
    meta = {
        "command": "peers.py",
        "date": "today",
        "machine": {"cpu": "x", "cores": 2},
        "load_before": [1.0],
        "environments": env,
    }
    text = peers.tables({"meta": meta, "lammps": rows, "process": []})
    lines = {}  # the first table's row of (code, case); the scaling table follows it
    for line in text.splitlines():
        lines.setdefault(tuple(c.strip() for c in line.split("|")[1:3]), line)
    cells = lambda key: [c.strip() for c in lines[key].split("|")[1:-1]]  # noqa: E731
    # plain: 80 us, 0.40x ML-IAP NN, float32 60 = 0.75x
    assert cells((gm, "plain"))[6:11] == ["80.0", "", "0.40", "60.0", "0.75"]
    # gradient-feature bias: 120 / 80 = 1.50; float32 90 / 60 = 1.50
    assert cells((gm, "gradient-feature bias"))[6:12] == ["120.0", "**1.50**", "0.60", "90.0", "0.75", "1.50"]
    assert cells((gm, "ensemble of 4, bias"))[6:8] == ["440.0", "**1.10**"]
    assert cells((gm, "gradient-feature bias"))[5] == "nets 3,576 k"  # 4 passes
    assert cells(("BP-NN SiO2 shipped", "plain"))[6] == "failed"
    assert cells(("BP-NN SiO2 shipped", "gradient-feature bias"))[6] == ""  # not run
    # threads and ranks: speed-up from the least wall times (160 / 100, 160 / 80), CPU against 1 x 1 (80)
    scaling = [line for line in text.splitlines() if line.startswith(f"| {gm} | plain | 160.0")]
    assert [c.strip() for c in scaling[0].split("|")[3:10]] == [
        "160.0",
        "100.0",
        "1.60",
        "1.12",
        "80.0",
        "2.00",
        "1.10",
    ]


def test_ten_times_ahead_takes_the_floor_off_the_fastest_peer():
    from peers import ten_times_ahead

    line = ten_times_ahead(0.05, [125.0, 43.6], 8.72)
    assert "<= 4.36 us" in line and "may cost <= 4.31" in line and "not met (2.0x the target)" in line
    assert ten_times_ahead(0.05, [125.0, 43.6], 4.0).endswith(": met.")
    assert "no 10x line" in ten_times_ahead(None, [125.0], 4.0)
