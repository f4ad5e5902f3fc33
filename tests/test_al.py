"""mlipbias al: configuration, labels written once (oracle failures recorded), the loop on Dask
(threads and processes, a worker that dies), warm starts, and resume after kill -9 of a real run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from subprocess_env import mlipbias_env

from mlipbias import sample_claims
from mlipbias.al.config import TEMPLATE, ALConfig, al_config_from_dict, load_al_config
from mlipbias.al.loop import read_trajectories
from mlipbias.al.report import read_summary
from mlipbias.al.tasks import LABELLED, REJECTED, SKIPPED, label_candidate
from mlipbias.datasets import open_dataset

# A tiny but complete run: 9-atom quartz, BKS labels, a 7-function descriptor, 8 hidden neurons.
TINY = {
    "start": {"structures": "alpha-quartz"},
    "oracle": {"name": "bks"},
    "initial": {"n_structures": 6, "position_amplitude": 0.1, "strain_amplitude": 0.02},
    "train": {
        "descriptor": {
            "preset": None,
            "elements": ["Si", "O"],
            "g2": [[0.5, 1.6, 4.5], [0.5, 2.6, 4.5]],
            "g4": [[0.05, 1.0, 1.0, 4.5]],
        },
        "model": {"hidden": [8]},
        "training": {"epochs": 2, "batch_size": 4},
    },
    "explore": {"walkers": 2, "threshold": 0.8, "max_steps": 60, "record_interval": 5, "tau": 0.2},
    "select": {"batch_size": 2},
    "stop": {"max_size": 12},
    "dask": {"workers": 1, "processes": False},
}


def _config(tmp_path, **changes) -> Path:
    values = json.loads(json.dumps(TINY))
    for section, update in changes.items():
        values[section] = {**values.get(section, {}), **update}
    values["output"] = {"directory": str(tmp_path / "run")}
    path = tmp_path / "al.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _keys(path) -> list[str]:
    if not Path(path).exists():
        return []
    return [row.sample_key for row in open_dataset(path).select()]


def test_template_loads_to_the_defaults(tmp_path):
    values = yaml.safe_load(TEMPLATE)
    config = al_config_from_dict(values)
    default = ALConfig()
    default.start.structures, default.oracle.name = values["start"]["structures"], values["oracle"]["name"]
    for section in ("start", "oracle", "initial", "explore", "select", "stop", "test", "dask", "output"):
        assert getattr(config, section) == getattr(default, section), section
    # The train section spells out the AL defaults the empty sections stand for.
    assert config.train_config("d.db", "r", 0).to_dict() == default.train_config("d.db", "r", 0).to_dict()
    assert config.explore.threshold == 1.5 and config.explore.max_steps == 20000  # seed 002
    assert config.explore.thermostat_time == 100.0 and config.explore.barostat_time == 1000.0
    assert config.select.max_force == 20.0 and config.stop.max_size == 512


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"explore": {"ensemble": "nve"}}, "explore.ensemble"),
        ({"select": {"mehtod": "max_det"}}, "select.mehtod is unknown .did you mean method"),
        ({"train": {"training": {"epochs": "many"}}}, "training.epochs"),
        (
            {"select": {"method": "max_dist"}, "train": {"uncertainty": {"methods": ["ensemble"]}}},
            "gradient features",
        ),
        ({"stop": {"force_rmse": 0.1}}, "needs test.path"),
        ({"oracle": {"name": "dft"}}, "oracle.name"),
        ({"explore": {"tau_species": {"H": -1.0}}}, "explore.tau_species.H"),
        ({"explore": {"explorer": "adversarial", "options": {"lr": 0.1}}}, r"explore\.options\.lr"),
        (
            {"explore": {"explorer": "adversarial", "options": {"iterations": 0}}},
            r"explore\.options\.iterations",
        ),
    ],
)
def test_check_names_the_key(tmp_path, change, message):
    path = _config(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        load_al_config(path)


def test_species_tau_is_read_as_tau_species_with_a_warning(tmp_path):
    """The key's former name (state.json of older runs) still loads, and warns with the new one."""
    with pytest.warns(DeprecationWarning, match=r"use explore\.tau_species"):
        config = load_al_config(_config(tmp_path, explore={"species_tau": {"O": 0.1}}))
    assert config.explore.tau_species == {"O": 0.1}
    both = {"species_tau": {"O": 0.1}, "tau_species": {"O": 0.1}}
    with pytest.raises(ValueError, match="give tau_species only"):
        load_al_config(_config(tmp_path, explore=both))


def test_label_task_writes_once_and_records_failures(tmp_path):
    data, rejects = str(tmp_path / "data.db"), str(tmp_path / "rejects.db")
    good = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
    close = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 0.2]])
    squeezed = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 1.2]])
    assert label_candidate(data, rejects, "k/0", good, "emt", {}, 20.0)["status"] == LABELLED
    assert label_candidate(data, rejects, "k/0", good, "emt", {}, 20.0)["status"] == SKIPPED
    result = label_candidate(data, rejects, "k/1", close, "emt", {}, 20.0)
    assert result["status"] == REJECTED and "closer than" in result["reason"]
    result = label_candidate(data, rejects, "k/2", squeezed, "emt", {}, 1.0)
    assert result["status"] == REJECTED and "select.max_force" in result["reason"]
    assert label_candidate(data, rejects, "k/2", squeezed, "emt", {}, 1.0)["status"] == SKIPPED
    assert _keys(data) == ["k/0"] and sorted(_keys(rejects)) == ["k/1", "k/2"]
    from ase.calculators.emt import EMT

    reference = good.copy()
    reference.calc = EMT()
    row = open_dataset(data).get(sample_key="k/0")
    assert row.energy == pytest.approx(reference.get_potential_energy())
    assert "select.max_force" in open_dataset(rejects).get(sample_key="k/2").reason


def _check_run(directory: Path, max_size: int) -> None:
    """No duplicate, no missing label: every selected key is labelled or rejected exactly once."""
    labelled, rejected = _keys(directory / "dataset.db"), _keys(directory / "rejects.db")
    assert len(labelled) == len(set(labelled)) and not set(labelled) & set(rejected)
    expected = {f"al/gen=0/cand={i}" for i in range(TINY["initial"]["n_structures"])}
    for selection in directory.glob("gen_*/selection.json"):
        expected |= set(json.loads(selection.read_text())["keys"])
    assert set(labelled) | set(rejected) == expected
    assert len(labelled) == max_size
    done = sample_claims.done_keys(open_dataset(directory / "dataset.db"))
    assert set(done) == set(labelled)
    # Each generation reports the data its model was trained on, also when it was resumed.
    sizes = [row["dataset_size"] for row in read_summary(directory)]
    assert sizes == list(range(6, max_size + 1, 2))


def test_loop_runs_to_the_maximum_size_with_warm_starts(tmp_path, capsys):
    from dask.distributed import Client

    from mlipbias.al import run_active_learning

    config = load_al_config(_config(tmp_path, explore={"trajectory_interval": 5}))
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        rows = run_active_learning(config, client=client, progress=False)
    out = capsys.readouterr().out
    directory = tmp_path / "run"
    _check_run(directory, 12)
    assert [r["dataset_size"] for r in rows] == [6, 8, 10, 12] and rows[-1]["final"]
    assert "warm start from" in out and "stop.max_size = 12" in out
    assert (directory / "al_summary.png").stat().st_size > 0
    assert (directory / "summary.csv").read_text().startswith("generation,dataset_size")
    walker = json.loads((directory / "gen_001/walkers/walker_00.json").read_text())
    assert walker["stop_reason"] in ("threshold", "max_steps", "failed")
    trajectories = read_trajectories(directory, 1)
    assert len(trajectories) == 2 and all(t["step"][0] == 0 for t in trajectories)
    assert [t["walker"] for t in trajectories] == [0, 1] and trajectories[0]["steps"] == walker["steps"]
    assert all(np.all(t["step"] % 5 == 0) and t["step"][-1] <= t["steps"] for t in trajectories)
    # Rerunning a finished run repeats nothing.
    with Client(processes=False, n_workers=1, dashboard_address=None) as client:
        run_active_learning(config, client=client, progress=False)
    _check_run(directory, 12)
    # A resumed run with another configuration is refused, naming the key.
    changed = load_al_config(_config(tmp_path, explore={"tau": 0.3}))
    with pytest.raises(ValueError, match=r"explore\.tau"):
        with Client(processes=False, n_workers=1, dashboard_address=None) as client:
            run_active_learning(changed, client=client, progress=False)


def test_one_generation_with_the_adversarial_explorer(tmp_path):
    from dask.distributed import Client

    from mlipbias.al import run_active_learning

    # An untrained-like model (2 epochs) predicts energies far from BKS's: no energy cutoff here.
    options = {"n_samples": 2, "iterations": 5, "learning_rate": 0.01, "energy_cutoff": None}
    config = load_al_config(
        _config(
            tmp_path,
            explore={"explorer": "adversarial", "options": options},
            stop={"max_generations": 1},
        )
    )
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        rows = run_active_learning(config, client=client, progress=False)
    directory = tmp_path / "run"
    assert [r["dataset_size"] for r in rows] == [6, 8] and rows[-1]["final"]
    for k in range(TINY["explore"]["walkers"]):
        walker = json.loads((directory / f"gen_001/walkers/walker_{k:02d}.json").read_text())
        assert walker["stop_reason"] == "done" and walker["n_candidates"] == 2, walker
        assert "2 adversarial samples of 2 attempts" in walker["detail"]
    # The two labelled samples are adversarial candidates of generation 1, with finite U.
    labelled = [row for row in open_dataset(directory / "dataset.db").select("al_generation=1")]
    assert len(labelled) == 2
    selection = json.loads((directory / "gen_001/selection.json").read_text())
    assert sorted(selection["keys"]) == sorted(row.sample_key for row in labelled)
    import ase.io

    candidates = ase.io.read(directory / "gen_001/walkers/walker_00.extxyz", index=":")
    assert all(np.isfinite(c.info["uncertainty"]) and c.info["uncertainty"] > 0 for c in candidates)


def _label_after_killing_the_first_worker(marker, *args):
    """A label task whose first attempt takes its worker process down (as a node failure would)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return label_candidate(*args)


def test_a_label_task_lost_with_its_worker_is_retried(tmp_path):
    import cloudpickle
    from dask.distributed import Client, LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    data, rejects = str(tmp_path / "data.db"), str(tmp_path / "rejects.db")
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            future = client.submit(
                _label_after_killing_the_first_worker,
                str(tmp_path / "marker"),
                data,
                rejects,
                "k/0",
                atoms,
                "emt",
                {},
                20.0,
                retries=2,
            )
            assert future.result(timeout=120)["status"] == LABELLED
    assert _keys(data) == ["k/0"]


def test_kill_9_at_random_points_then_resume(tmp_path):
    path = _config(tmp_path)
    env = mlipbias_env()
    command = [sys.executable, "-m", "mlipbias", "al", str(path), "--no-progress"]
    state = tmp_path / "run" / "state.json"
    rng = np.random.default_rng(11)
    # Each run is killed at a random moment of a later phase: (generation, phase) reached, then a delay.
    targets = [(0, "label"), (1, "train"), (1, "label"), (2, "explore"), (3, "train")]
    order = {"initial": 0, "train": 1, "explore": 2, "select": 3, "label": 4, "finished": 5}
    for index in sorted(rng.choice(len(targets), size=3, replace=False)):
        target = targets[index]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.time()
        while process.poll() is None and time.time() - started < 60:
            if state.exists() and state.stat().st_mtime > started:
                where = json.loads(state.read_text())
                if (where["generation"], order[where["phase"]]) >= (target[0], order[target[1]]):
                    break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _check_run(tmp_path / "run", 12)


def test_warm_start_copies_the_model_and_refuses_another_architecture():
    import torch
    from model_fixtures import labelled_quartz, small_descriptor

    from mlipbias.models import AtomsData, ModelSettings, UncertaintySettings
    from mlipbias.models.training import build_network, warm_start

    data = AtomsData(labelled_quartz(4), small_descriptor())
    source = build_network(data, ModelSettings(hidden=(6,)), UncertaintySettings(), seed=1)
    from mlipbias.models import MLIPModel

    target = build_network(data, ModelSettings(hidden=(6,)), UncertaintySettings(), seed=2)
    warm_start(target, MLIPModel(source))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
    other = build_network(data, ModelSettings(hidden=(7,)), UncertaintySettings(), seed=2)
    with pytest.raises(ValueError, match="does not match the configured architecture"):
        warm_start(other, MLIPModel(source))


def test_cli_template_and_check(tmp_path, capsys):
    from mlipbias.cli import main

    assert main(["al", "--template"]) == 0
    template = capsys.readouterr().out
    assert template == TEMPLATE
    good = _config(tmp_path)
    assert main(["al", str(good), "--check"]) == 0
    assert "configuration is valid" in capsys.readouterr().out
    bad = _config(tmp_path, explore={"walkers": 0})
    assert main(["al", str(bad), "--check"]) == 2
    assert "explore.walkers" in capsys.readouterr().err


def test_selection_wiring_matches_the_models_uncertainties(tmp_path):
    """The first pick of max-det is the candidate of largest posterior U, of max-dist the one of largest
    distance U (same atom count), as MLIPCalculator computes them; max-unc ranks the recorded U."""
    from lammps_fixtures import structure, write_model

    from mlipbias.al.loop import select_candidates
    from mlipbias.calculators import MLIPCalculator
    from mlipbias.dynamics.perturb import perturbed

    model = str(write_model(tmp_path / "m.mlip"))
    rng = np.random.default_rng(5)
    pool = [perturbed(structure(0), 0.15, 0.03, rng) for _ in range(12)]
    uncertainty = {}
    for method in ("posterior", "distance"):
        calc = MLIPCalculator(model, uncertainty=method, backend="torch")
        uncertainty[method] = [calc.get_property("uncertainty", a.copy()) for a in pool]
    for atoms, u in zip(pool, uncertainty["posterior"], strict=True):
        atoms.info["uncertainty"] = u
    det = select_candidates(pool, "max_det", 4, model)
    dist = select_candidates(pool, "max_dist", 4, model)
    assert det[0] == int(np.argmax(uncertainty["posterior"])) and len(set(det)) == 4
    assert dist[0] == int(np.argmax(uncertainty["distance"])) and len(set(dist)) == 4
    np.testing.assert_array_equal(
        select_candidates(pool, "max_unc", 3, model), np.argsort(uncertainty["posterior"])[::-1][:3]
    )
    chosen = select_candidates(pool, "random", 5, model, rng=np.random.default_rng(0))
    assert len(set(chosen)) == 5 and chosen.max() < len(pool)


def test_a_dataset_left_mid_transaction_by_a_killed_writer_opens(tmp_path):
    """kill -9 inside a write transaction leaves a hot journal; the next open rolls it back."""
    path = tmp_path / "data.db"
    label_candidate(str(path), str(tmp_path / "rejects.db"), "k/0", Atoms("Cu"), "emt", {}, 20.0)
    script = (
        "import sqlite3, os, signal\n"
        f"con = sqlite3.connect({str(path)!r})\n"
        "con.execute('BEGIN IMMEDIATE')\n"
        "con.execute('DELETE FROM systems')\n"
        "con.execute('CREATE TABLE filler (x)')\n"
        "con.executemany('INSERT INTO filler VALUES (?)', [(b'x' * 4000,)] * 2000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    assert Path(str(path) + "-journal").stat().st_size > 0
    assert _keys(path) == ["k/0"]  # the uncommitted delete is rolled back


def _recording_explorer(model_path, start, settings, seed, training=None):
    """An explorer that returns its start, tagged with the pressure it was given."""
    from mlipbias.dynamics.explorer import STOP_DONE, Exploration, candidate

    frame = candidate(start, 1.0, np.ones(len(start)), 1)
    frame.info["given_pressure"] = settings.pressure
    return Exploration([frame], STOP_DONE, 1)


def test_walker_pressures_reach_the_walkers_and_the_test_set_stress_error(tmp_path, monkeypatch):
    """Half the NPT walkers at another pressure (seed 002's unbiased MIL-53(Al) runs): each walker's
    explorer gets its pressure, which the walker summary records; the test errors include the
    stress RMSE, equal to the one of the calculator's stresses."""
    import ase.io
    from dask.distributed import Client

    from mlipbias import dynamics
    from mlipbias.al import run_active_learning
    from mlipbias.calculators import MLIPCalculator
    from mlipbias.dynamics.perturb import perturbed
    from mlipbias.oracles import attach_results, label, make_oracle
    from mlipbias.structures import default_structure

    monkeypatch.setitem(dynamics.EXPLORERS, "recording", _recording_explorer)
    bks, quartz = make_oracle("bks"), default_structure("alpha-quartz")
    test = open_dataset(tmp_path / "test.db", create=True)
    for i in range(3):
        atoms = perturbed(quartz, 0.05, 0.03, np.random.default_rng(i))
        test.write(attach_results(atoms, label(atoms, bks), "bks"))
    explore = {"explorer": "recording", "walkers": 3, "ensemble": "npt", "walker_pressures": [0.0, 20.0]}
    path = _config(
        tmp_path, explore=explore, stop={"max_generations": 1}, test={"path": str(tmp_path / "test.db")}
    )
    config = load_al_config(path)
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        run_active_learning(config, client=client, progress=False)
    walkers = tmp_path / "run" / "gen_001" / "walkers"
    for k, pressure in enumerate([0.0, 20.0, 0.0]):
        assert json.loads((walkers / f"walker_{k:02d}.json").read_text())["pressure"] == pressure
        assert ase.io.read(walkers / f"walker_{k:02d}.extxyz").info["given_pressure"] == pressure
    errors = json.loads((tmp_path / "run" / "gen_001" / "test_errors.json").read_text())
    calc = MLIPCalculator(str(tmp_path / "run" / "gen_001" / "train" / "model.mlip"))
    residuals = []
    for row in test.select():
        atoms = row.toatoms()
        reference = atoms.get_stress(voigt=True)
        atoms.calc = calc
        residuals.append(atoms.get_stress(voigt=True) - reference)
    assert errors["stress_rmse"] == pytest.approx(np.sqrt(np.mean(np.square(residuals))), rel=1e-6)
    with pytest.raises(ValueError, match=r"explore\.walker_pressures"):
        load_al_config(_config(tmp_path, explore={"walker_pressures": []}))
    with pytest.raises(ValueError, match=r"explore\.walker_pressures"):
        load_al_config(_config(tmp_path, explore={"walker_pressures": [0.0, "high"]}))


def test_a_run_started_before_a_key_existed_resumes_at_its_default(tmp_path):
    """state.json of a run made before ``explore.rescale_window`` existed: the missing key reads as
    its default (the run resumes); a changed value is still refused, naming the key."""
    from mlipbias.al.loop import ActiveLearning

    config = load_al_config(_config(tmp_path))
    (tmp_path / "run").mkdir()
    ActiveLearning(config, None)._check_state()
    state_path = tmp_path / "run" / "state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["explore"]["rescale_window"]
    state_path.write_text(json.dumps(state))
    ActiveLearning(config, None)._check_state()
    assert json.loads(state_path.read_text())["config"]["explore"]["rescale_window"] == 100
    state_path.write_text(json.dumps(state))  # again without the key
    changed = load_al_config(_config(tmp_path, explore={"rescale_window": 20}))
    with pytest.raises(ValueError, match=r"explore\.rescale_window"):
        ActiveLearning(changed, None)._check_state()
