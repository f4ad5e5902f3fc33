"""Uncertainty methods: ensemble, MVE, evidential, GMM, sketched gradient features, and their calibration.

References: numpy formulas on known inputs, scipy distributions, direct scikit-learn calls, exact
parameter gradients from torch autograd, numpy linear algebra, and finite differences of U for the
uncertainty gradients (positions and strain).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from model_fixtures import (
    evaluate_atoms,
    labelled_quartz,
    model_with_all_methods,
    numpy_network,
    quartz,
    random_network,
    small_descriptor,
    strained,
)
from scipy.spatial.distance import cdist

from mlipbias.models import AtomsData, MLIPModel, calibrate
from mlipbias.models.training import network_features
from mlipbias.uq import ensemble, evidential, mve
from mlipbias.uq.calibration import (
    CalibrationWarning,
    ConformalCalibration,
    VarianceRecalibration,
    force_rmse_per_atom,
)
from mlipbias.uq.gmm import GMMUncertainty
from mlipbias.uq.gradient_features import GradientFeatures
from mlipbias.uq.selection import select_max_dist


@pytest.fixture(scope="module")
def all_methods():
    return model_with_all_methods()


def softplus(x):
    return np.logaddexp(0.0, x)


# ------------------------------------------------------------------ ensemble


def test_ensemble_formulas_match_numpy():
    rng = np.random.default_rng(0)
    energies = rng.normal(size=(4, 5))
    forces = rng.normal(size=(4, 7, 3))
    u = ensemble.energy_uncertainty(torch.as_tensor(energies)).numpy()
    np.testing.assert_allclose(u, np.std(energies, axis=0, ddof=1), rtol=1e-13)
    u_i = ensemble.atom_uncertainty(torch.as_tensor(forces)).numpy()
    # seed 003 Eq. 5 per atom: the variance of the 3 components, averaged, with 1/(M - 1).
    np.testing.assert_allclose(u_i, np.sqrt(np.var(forces, axis=0, ddof=1).mean(axis=1)), rtol=1e-13)
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble.energy_uncertainty(torch.zeros(1, 3, dtype=torch.float64))


def test_model_ensemble_uncertainty_is_the_calibrated_member_spread(all_methods):
    model, data = all_methods
    p = model.evaluate(data.batch([0, 1, 2]), "ensemble", atom_uncertainty=True)
    np.testing.assert_allclose(p.energy, p.member_energies.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(p.uncertainty, 2.0 * np.std(p.member_energies, axis=0, ddof=1), rtol=1e-12)
    spread = np.sqrt(np.var(p.member_forces, axis=0, ddof=1).mean(axis=1))
    np.testing.assert_allclose(p.atom_uncertainty, 1.5 * spread, rtol=1e-12)


# ------------------------------------------------------------------ heads: MVE and evidential


def _head_model(head):
    sf = small_descriptor()
    data = AtomsData([quartz(1), quartz(2)], sf, labels=False)
    net = random_network(sf, data, n_members=1, head=head)
    return MLIPModel(net, methods=(head,)), data


def _raw_head(model, data):
    """Head outputs written with numpy from the records: (n_atoms, n_head), and the units head_scale."""
    records = model.to_records()
    _, hidden = numpy_network(records, data.G, data.species)
    elements = model.elements
    raw = np.array(
        [
            records[f"member/0/{elements[e]}/head_W"] @ h + records[f"member/0/{elements[e]}/head_b"]
            for h, e in zip(hidden[0], data.species, strict=True)
        ]
    )
    return raw, records["member/0/head_scale"]


def test_mve_uncertainties_follow_the_documented_formulas():
    model, data = _head_model("mve")
    p = model.evaluate(data.batch([0, 1]), "mve", forces=False, atom_uncertainty=True)
    raw, s = _raw_head(model, data)
    v_energy = s[0] * softplus(raw[:, 0]) + mve.MIN_VARIANCE
    v_force = s[1] * softplus(raw[:, 1]) + mve.MIN_VARIANCE
    np.testing.assert_allclose(
        p.uncertainty, [np.sqrt(v_energy[:9].sum()), np.sqrt(v_energy[9:].sum())], rtol=1e-12
    )
    np.testing.assert_allclose(p.atom_uncertainty, np.sqrt(v_force), rtol=1e-12)
    # Variances stay positive for any raw output.
    extreme = torch.tensor([[-800.0, -800.0], [800.0, 800.0]], dtype=torch.float64)
    v_e, v_f = mve.variances(extreme, torch.tensor([0.1, 0.1], dtype=torch.float64))
    assert (v_e > 0).all() and (v_f > 0).all() and torch.isfinite(v_f).all()
    r, v = np.array([0.3, -1.2, 2.0]), np.array([0.5, 2.0, 0.1])
    np.testing.assert_allclose(
        mve.gaussian_nll(torch.as_tensor(r), torch.as_tensor(v)).numpy(),
        -scipy.stats.norm.logpdf(r, scale=np.sqrt(v)),
        rtol=1e-12,
    )


def test_evidential_uncertainties_follow_the_documented_formulas():
    model, data = _head_model("evidential")
    p = model.evaluate(data.batch([0, 1]), "evidential", forces=False, atom_uncertainty=True)
    raw, s = _raw_head(model, data)
    nu, alpha, beta = softplus(raw[:, 3]), 1 + softplus(raw[:, 4]), s[5] * softplus(raw[:, 5])
    np.testing.assert_allclose(p.atom_uncertainty, np.sqrt(beta / (nu * (alpha - 1))), rtol=1e-10)
    for k, atoms in enumerate((slice(0, 9), slice(9, 18))):
        nu_e = softplus(raw[atoms, 0]).mean()
        alpha_e = 1 + softplus(raw[atoms, 1]).mean()
        beta_e = s[2] * softplus(raw[atoms, 2]).sum()
        assert p.uncertainty[k] == pytest.approx(np.sqrt(beta_e / (nu_e * (alpha_e - 1))), rel=1e-10)
    # nu > 0, alpha > 1, beta > 0 for any raw output.
    extreme = torch.full((2, 6), -30.0, dtype=torch.float64)
    extreme[1] = 30.0
    nu_t, alpha_t, beta_t = evidential.parameters_force(extreme, torch.full((6,), 0.1, dtype=torch.float64))
    assert (nu_t > 0).all() and (alpha_t > 1).all() and (beta_t > 0).all()
    # Without the regulariser the NIG NLL is the Student-t marginal (Amini et al. 2020, Eq. 8).
    y, gamma = np.array([0.4, -1.0, 3.0]), np.array([0.1, 0.2, -0.5])
    nu_n, alpha_n, beta_n = np.array([0.5, 2.0, 1.0]), np.array([1.5, 3.0, 1.1]), np.array([0.2, 1.0, 4.0])
    nll = evidential.nig_nll(
        *(torch.as_tensor(x) for x in (y - gamma, nu_n, alpha_n, beta_n)), regularization=0.0
    )
    scale = np.sqrt(beta_n * (1 + nu_n) / (nu_n * alpha_n))
    np.testing.assert_allclose(nll.numpy(), -scipy.stats.t.logpdf(y, 2 * alpha_n, gamma, scale), rtol=1e-12)
    reg = evidential.nig_nll(
        *(torch.as_tensor(x) for x in (y - gamma, nu_n, alpha_n, beta_n)), regularization=0.2
    )
    np.testing.assert_allclose(
        (reg - nll).numpy(), 0.2 * np.abs(y - gamma) * (2 * nu_n + alpha_n), rtol=1e-12
    )


@pytest.mark.parametrize("mode", ["joint", "detached"])
@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_heads_learn_the_size_of_the_residuals(head, mode):
    """Trained with their NLL, the heads' force variances move from their start to the residuals' size."""
    from mlipbias.models import ModelSettings, TrainingSettings, UncertaintySettings, train

    sf = small_descriptor()
    data = AtomsData(labelled_quartz(8, rattle=0.05), sf)
    settings = TrainingSettings(epochs=40, batch_size=4, learning_rate=0.02, force_weight=1.0, device="cpu")
    uq = UncertaintySettings(methods=(head,), head_training=mode)
    result = train(
        data,
        data,
        model=ModelSettings((6,)),
        uncertainty=uq,
        training=settings,
        progress=False,
        log=lambda _: None,
    )
    model = result.model
    model.calibration = {}  # the raw head uncertainties
    p = model.predict(data, head, atom_uncertainty=True)
    assert (p.atom_uncertainty > 0).all() and (p.uncertainty > 0).all()
    out = model.network(torch.as_tensor(data.G), torch.as_tensor(data.species))
    raw, units = out.head[0].detach(), model.network.head_scale[0]
    if head == "mve":
        variance = mve.variances(raw, units)[1].numpy()
    else:
        _, alpha, beta = evidential.parameters_force(raw, units)
        variance = evidential.aleatoric_variance(alpha, beta).numpy()
    start = np.mean(data.forces**2)  # where the variances start
    residual = np.mean((p.forces - data.forces) ** 2)
    # The joint NLL weights force residuals by 1 / variance, so its mean fits more slowly in 40 epochs.
    assert residual < (0.5 if mode == "detached" else 0.75) * start
    assert 0.5 < np.mean(variance) / residual < 2.0


@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_post_hoc_heads_fit_the_trained_networks_residuals(head):
    """head_training post_hoc: the network trains on energies alone (no force pass per step), then the
    heads alone learn the size of its force residuals."""
    from mlipbias.models import ModelSettings, TrainingSettings, UncertaintySettings, train

    data = AtomsData(labelled_quartz(8, rattle=0.05), small_descriptor())
    settings = TrainingSettings(
        epochs=30, batch_size=4, learning_rate=0.02, force_weight=0.0, stress_weight=0.0, device="cpu"
    )
    uq = UncertaintySettings(methods=(head,), head_training="post_hoc", head_epochs=200)
    quiet = {"progress": False, "log": lambda _: None}
    result = train(data, data, model=ModelSettings((6,)), uncertainty=uq, training=settings, **quiet)
    model = result.model
    # The accuracy part of the network never saw the head: its energies follow the energy loss alone.
    history = [r["validation_energy_rmse"][0] for r in result.history]
    assert min(history) < 0.5 * history[0]
    model.calibration = {}  # the raw head uncertainties
    p = model.predict(data, head, atom_uncertainty=True)
    out = model.network(torch.as_tensor(data.G), torch.as_tensor(data.species))
    raw, units = out.head[0].detach(), model.network.head_scale[0]
    if head == "mve":
        variance = mve.variances(raw, units)[1].numpy()
    else:
        _, alpha, beta = evidential.parameters_force(raw, units)
        variance = evidential.aleatoric_variance(alpha, beta).numpy()
    residual = np.mean((p.forces - data.forces) ** 2)
    start = np.mean(data.forces**2)  # where the variances start
    assert abs(np.log(np.mean(variance) / start)) > abs(np.log(residual / start)) / 2  # they moved ...
    assert 0.5 < np.mean(variance) / residual < 2.0  # ... to the residuals' size


@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_energy_only_head_training_skips_the_double_backward(head, monkeypatch):
    """With force weight 0 the heads see detached force residuals: the step's parameter gradients equal
    those of the fully differentiated force graph, and the forces are built without a graph."""
    import mlipbias.models.training as training
    from mlipbias.models import TrainingSettings, UncertaintySettings
    from mlipbias.models.network import BPNN
    from mlipbias.models.training import batch_loss, batch_outputs

    differentiable = []  # whether dE/dG entered the C++ vjp with a graph (then the step runs the jvp too)

    def recording(dEdG, *args):
        differentiable.append(dEdG.requires_grad)
        return pair_gradients(dEdG, *args)

    pair_gradients = training.pair_gradients
    monkeypatch.setattr(training, "pair_gradients", recording)

    data = AtomsData(labelled_quartz(3, rattle=0.05), small_descriptor(), keep_neighbours=True)
    net = BPNN(data.descriptor, (6,), "tanh", 1, head=head, seed=3)
    net.fit_scaling(data.G, data.species)
    net.fit_energy_shift(data.energy, data.counts)
    batch = data.batch(np.arange(len(data)), torch.device("cpu"), neighbours=True)
    settings = TrainingSettings(force_weight=0.0, stress_weight=0.0)
    uq = UncertaintySettings(methods=(head,), head_training="detached")

    loss, _, _ = batch_loss(net, batch, settings, uq, create_graph=True)
    fast = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    assert differentiable == [False]

    energies, out, F, _ = batch_outputs(net, batch, forces=True, stress=False, create_graph=True)
    assert differentiable == [False, True] and F.requires_grad  # the reference keeps the force graph
    e_res = (energies - batch.energy) / batch.n_atoms
    module = mve if head == "mve" else evidential
    nll = module.loss(
        out.head[0],
        net.head_scale[0],
        batch.structure,
        batch.n_structures,
        (e_res[0] * batch.n_atoms).detach(),
        (F - batch.forces)[0].detach(),
    )
    reference = torch.autograd.grad((e_res**2).mean() + nll, list(net.parameters()), allow_unused=True)
    for a, b in zip(fast, reference, strict=True):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0
        else:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-14)


def _head_network(head: str):
    from mlipbias.models.network import BPNN

    data = AtomsData(labelled_quartz(3, rattle=0.05), small_descriptor(), keep_neighbours=True)
    net = BPNN(data.descriptor, (6,), "tanh", 1, head=head, seed=3)
    net.fit_scaling(data.G, data.species)
    net.fit_energy_shift(data.energy, data.counts)
    with torch.no_grad():
        net.head_scale[:] = 0.05
    return net, data.batch(np.arange(len(data)), torch.device("cpu"), neighbours=True)


@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_head_losses_are_the_mean_scipy_log_densities(head):
    """The training NLL (seed 003 SI Eq. 3 and Eq. 6-8) is the mean of scipy's log-densities: the normal
    for MVE, the Student-t marginal of the NIG (df 2 alpha, scale^2 beta (1 + nu) / (nu alpha)) plus the
    evidence regulariser for evidential; energies per structure, forces per component."""
    from mlipbias.models.training import batch_outputs

    net, batch = _head_network(head)
    energies, out, F, _ = batch_outputs(net, batch, forces=True, stress=False, create_graph=False)
    raw, units = out.head[0].detach(), net.head_scale[0].detach()
    r_e = (energies[0] - batch.energy).detach()
    r_f = (F[0] - batch.forces).detach()
    args = (raw, units, batch.structure, batch.n_structures, r_e, r_f)
    re, rf = r_e.numpy(), r_f.numpy()
    if head == "mve":
        value = float(mve.loss(*args))
        v_e = mve.energy_variance(raw, units, batch.structure, batch.n_structures).numpy()
        v_f = mve.variances(raw, units)[1].numpy()[:, None]
        expected = -scipy.stats.norm.logpdf(re, scale=np.sqrt(v_e)).mean()
        expected -= scipy.stats.norm.logpdf(rf, scale=np.sqrt(v_f)).mean()
    else:
        lam = 0.2
        value = float(evidential.loss(*args, regularization=lam))
        expected = 0.0
        nig_e = evidential.parameters_energy(raw, units, batch.structure, batch.n_structures)
        nig_f = [x.numpy()[:, None] for x in evidential.parameters_force(raw, units)]
        for r, (nu, alpha, beta) in ((re, [x.numpy() for x in nig_e]), (rf, nig_f)):
            scale = np.sqrt(beta * (1 + nu) / (nu * alpha))
            nll = -scipy.stats.t.logpdf(r, 2 * alpha, 0.0, scale) + lam * np.abs(r) * (2 * nu + alpha)
            expected += nll.mean()
    assert value == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_joint_head_training_trains_the_mean_network_through_the_force_nll(head):
    """head_training joint (seed 003): the force NLL has gradients on the mean network's hidden and
    output weights, equal to finite differences of the force NLL; the energy NLL (not in seed 003's
    loss) trains only the head's weights, as the detached heads' whole NLL does."""
    from mlipbias.models import TrainingSettings, UncertaintySettings
    from mlipbias.models.training import batch_loss, batch_outputs, head_nll

    net, batch = _head_network(head)
    # Energy and force weights 0: the loss is the heads' NLL alone.
    settings = TrainingSettings(energy_weight=0.0, force_weight=0.0, stress_weight=0.0, nll_weight=1.0)
    mean_weights = [k for k in net.weights if "_head_" not in k and k.endswith(("_W1", "_W2"))]
    assert mean_weights
    grads = {}
    for mode in ("joint", "detached"):
        # nll_beta 0: the plain NLL, whose gradient finite differences check below.
        uq = UncertaintySettings(methods=(head,), head_training=mode, nll_beta=0.0)
        loss, per_member, parts = batch_loss(net, batch, settings, uq, create_graph=True)
        assert float(loss.detach()) == pytest.approx(float(parts["nll"]), rel=1e-12)
        if mode == "joint":  # early stopping watches the NLL too
            assert float(per_member[0].detach()) == pytest.approx(float(parts["nll"]), rel=1e-12)
        params = [net.weights[k] for k in mean_weights]
        grads[mode] = torch.autograd.grad(loss, params, allow_unused=True)
    for g in grads["detached"]:
        assert g is None or float(g.abs().max()) == 0.0
    uq = UncertaintySettings(methods=(head,), head_training="joint", nll_beta=0.0)
    energies, _, _, _ = batch_outputs(net, batch, forces=False, stress=False, create_graph=False)
    energy_residual = (energies[0] - batch.energy).detach()
    # The energy NLL alone, through the joint heads: gradients on the head, none on the mean network.
    _, out, _, _ = batch_outputs(
        net, batch, forces=False, stress=False, create_graph=False, detach_head="energy"
    )
    energy_nll = head_nll(net, out.head[0], batch, energy_residual, None, uq)
    heads = [net.weights[k] for k in net.weights if "_head_" in k]
    assert (
        sum(
            float(g.abs().sum())
            for g in torch.autograd.grad(energy_nll, heads, allow_unused=True, retain_graph=True)
            if g is not None
        )
        > 0
    )
    for g in torch.autograd.grad(energy_nll, params, allow_unused=True):
        assert g is None or float(g.abs().max()) == 0.0

    def force_nll() -> float:
        _, out, F, _ = batch_outputs(net, batch, forces=True, stress=False, create_graph=False)
        both = head_nll(net, out.head[0], batch, energy_residual, F[0] - batch.forces, uq)
        return float((both - head_nll(net, out.head[0], batch, energy_residual, None, uq)).detach())

    for name, g in zip(mean_weights, grads["joint"], strict=True):
        assert g is not None and float(g.abs().max()) > 0, name
        weight = net.weights[name]
        index = tuple(int(i) for i in np.unravel_index(int(g.abs().argmax()), g.shape))
        h, values = 1e-5, []
        for sign in (1, -1):
            with torch.no_grad():
                weight[index] += sign * h
            values.append(force_nll())
            with torch.no_grad():
                weight[index] -= sign * h
        assert float(g[index]) == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-6)


def test_beta_nll_scales_the_mean_gradient_and_keeps_the_variance_optimum():
    """beta-NLL (Seitzer et al. 2022, uncertainty.nll_beta): the force NLL's gradient on a residual is
    (v / c_1)^beta r / v, on the variance (v / c_1)^beta (1 / v - r^2 / v^2) / 2 (zero at v = r^2, as
    the plain NLL's); beta 0 is the plain NLL; the energy term is untouched."""
    rng = np.random.default_rng(0)
    raw = torch.tensor(rng.normal(size=(5, 2)), requires_grad=True)
    scale = torch.tensor([0.3, 2.0])
    structure, r_e = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0.2, -0.4])
    r_f = torch.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    for beta in (0.0, 0.5, 1.0):
        value = mve.loss(raw, scale, structure, 2, r_e, r_f, beta=beta)
        g_r, g_raw = torch.autograd.grad(value, (r_f, raw))
        v = mve.variances(raw, scale)[1].detach().numpy()[:, None]
        w = (v / 2.0) ** beta
        np.testing.assert_allclose(g_r.numpy(), w * r_f.detach().numpy() / v / r_f.numel(), rtol=1e-12)
        dv = (w * (1 / v - r_f.detach().numpy() ** 2 / v**2) / 2).sum(axis=1) / r_f.numel()
        d_softplus = 2.0 * torch.sigmoid(raw[:, 1]).detach().numpy()
        np.testing.assert_allclose(g_raw[:, 1].numpy(), dv * d_softplus, rtol=1e-10)
    plain = mve.loss(raw, scale, structure, 2, r_e, r_f)
    energy = mve.loss(raw, scale, structure, 2, r_e)
    assert float(mve.loss(raw, scale, structure, 2, r_e, beta=0.5)) == float(energy)
    assert float(mve.loss(raw, scale, structure, 2, r_e, r_f, beta=0.0)) == float(plain)


def test_head_outputs_detach_only_the_energy_outputs():
    """detach_head 'energy' (joint training): the energy outputs (1 of MVE, 3 of evidential) reach the
    head but not the features; the force outputs reach both; values equal the undetached ones."""
    for head, k in (("mve", 1), ("evidential", 3)):
        layer = torch.nn.Linear(
            4, mve.N_OUTPUTS if head == "mve" else evidential.N_OUTPUTS, dtype=torch.float64
        )
        h = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        raw = mve.head_outputs(layer, h, "energy", head)
        torch.testing.assert_close(raw, layer(h), rtol=0, atol=0)
        (g,) = torch.autograd.grad(raw[:, :k].sum(), h, retain_graph=True)
        assert float(g.abs().max()) == 0.0
        (g,) = torch.autograd.grad(raw[:, k:].sum(), h)
        assert float(g.abs().max()) > 0
    with pytest.raises(ValueError, match="detach_head"):
        mve.head_outputs(layer, h, "forces", "mve")


# ------------------------------------------------------------------ GMM


def test_gmm_matches_a_direct_scikit_learn_fit():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(1)
    hidden = np.concatenate(
        [rng.normal(0, 1, (150, 3)), rng.normal(4, 0.5, (150, 3)), rng.normal(-3, 1, (60, 3))]
    )
    species = np.repeat([0, 1, 0], [150, 150, 60])
    gmm = GMMUncertainty.fit(["Si", "O"], hidden, species, max_components=4, seed=2)
    for e in range(2):
        x = hidden[species == e]
        fits = [
            GaussianMixture(k, covariance_type="full", random_state=2, reg_covar=1e-6).fit(x)
            for k in range(1, 5)
        ]
        best = fits[int(np.argmin([f.bic(x) for f in fits]))]
        assert len(gmm.weights[e]) == best.n_components
        test = rng.normal(1.0, 2.0, (20, 3))
        scores = gmm.atom_scores(torch.as_tensor(test), torch.full((20,), e)).numpy()
        np.testing.assert_allclose(scores, -best.score_samples(test), rtol=1e-10)
    assert gmm.n_components == {"Si": 2, "O": 1}


def test_gmm_uncertainty_is_the_recalibrated_mean_atom_score(all_methods):
    model, data = all_methods
    p = model.evaluate(data.batch([0, 1]), "gmm", forces=False, atom_uncertainty=True)
    _, hidden = numpy_network(model.to_records(), data.G[:18], data.species[:18])
    scores = np.zeros(18)
    for e in range(2):
        rows = data.species[:18] == e
        scores[rows] = model.gmm.atom_scores(
            torch.as_tensor(hidden[0][rows]), torch.full((rows.sum(),), e)
        ).numpy()
    np.testing.assert_allclose(p.atom_score, scores, rtol=1e-10)
    np.testing.assert_allclose(p.score, [scores[:9].mean(), scores[9:].mean()], rtol=1e-10)
    np.testing.assert_allclose(p.uncertainty, np.sqrt(np.maximum(0.3 * p.score + 2.0, 0.1)), rtol=1e-12)
    np.testing.assert_allclose(p.atom_uncertainty, np.sqrt(np.maximum(0.1 * scores + 1.0, 0.1)), rtol=1e-12)


# ------------------------------------------------------------------ sketched gradient features


def _exact_gradients(net, G, species, atoms):
    """dE/d[W_l b_l] of member 0 for atomic energies (``atoms`` list) or the total energy (None)."""
    params = [(net.layer(el, layer)) for el in net.elements for layer in range(1, net.n_layers + 1)]
    flat = [p for pair in params for p in pair]
    out = net(torch.as_tensor(G), torch.as_tensor(species))
    targets = [out.energy[0].sum()] if atoms is None else [out.energy[0, i] for i in atoms]
    result = []
    for target in targets:
        grads = torch.autograd.grad(target, flat, allow_unused=True, retain_graph=True)
        blocks = {}
        for k, (el, layer) in enumerate(
            (el, layer) for el in net.elements for layer in range(1, net.n_layers + 1)
        ):
            gW, gb = grads[2 * k], grads[2 * k + 1]
            blocks[(net.elements.index(el), layer)] = torch.cat([gW[0], gb[0][:, None]], dim=1).numpy()
        result.append(blocks)
    return result


def test_structure_feature_is_the_sketch_of_the_total_gradient():
    """Phi = sum_i phi_i equals the tensor sketch of dE/dtheta: diag(R1 g_l R2^T) / sqrt(k) per block."""
    sf = small_descriptor()
    data = AtomsData([quartz(3)], sf, labels=False)
    net = random_network(sf, data, n_members=2, hidden=(5, 4))
    gradient = GradientFeatures.random(net, 6, seed=4)
    phi = net(
        torch.as_tensor(data.G), torch.as_tensor(data.species), sketch=gradient.sketch(net.energy_scale)
    )
    Phi = phi.features.detach().numpy().sum(axis=0)
    (total,) = _exact_gradients(net, data.G, data.species, None)
    expected = []
    for e in range(2):
        for layer in range(1, net.n_layers + 1):
            r1, r2 = gradient.R1[(e, layer)], gradient.R2[(e, layer)]
            expected.append(np.diag(r1 @ total[(e, layer)] @ r2.T) / np.sqrt(gradient.k))
    np.testing.assert_allclose(Phi, np.concatenate(expected), rtol=1e-10, atol=1e-12)


def test_sketched_inner_products_approach_the_gradient_inner_products():
    sf = small_descriptor()
    data = AtomsData([quartz(3)], sf, labels=False)
    net = random_network(sf, data, n_members=1, hidden=(5, 4))
    atoms = [0, 1, 2]  # Si atoms (atoms of one element share the sketch block)
    assert (data.species[atoms] == 0).all()
    exact = _exact_gradients(net, data.G, data.species, atoms)
    vectors = np.array([np.concatenate([b.ravel() for b in blocks.values()]) for blocks in exact])
    gram = vectors @ vectors.T
    errors = []
    for k in (4, 64, 1024):
        err = []
        for seed in range(10):
            gradient = GradientFeatures.random(net, k, seed=seed)
            out = net(
                torch.as_tensor(data.G),
                torch.as_tensor(data.species),
                sketch=gradient.sketch(net.energy_scale),
            )
            phi = out.features.detach().numpy()[atoms]
            err.append(np.abs(phi @ phi.T - gram).max() / np.abs(gram).max())
        errors.append(np.mean(err))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1


def test_posterior_and_distance_match_direct_numpy_computations(all_methods):
    model, data = all_methods
    g = model.gradient
    phi_train = network_features(model.network, data, sketch=g.sketch(model.network.energy_scale))
    structure = np.repeat(np.arange(len(data)), data.n_atoms)
    Phi_train = np.zeros((len(data), phi_train.shape[1]))
    np.add.at(Phi_train, structure, phi_train)
    pbar = Phi_train / data.n_atoms[:, None]
    K = phi_train.shape[1]
    test = AtomsData([quartz(55, rattle=0.2)], model.descriptor, labels=False)
    phi = network_features(model.network, test, sketch=g.sketch(model.network.energy_scale))
    Phi = phi.sum(axis=0)
    batch = test.batch([0])
    p = model.evaluate(batch, "posterior", forces=False, atom_uncertainty=True)
    u_energy = np.sqrt(Phi @ np.linalg.solve(pbar.T @ pbar + g.lam * np.eye(K), Phi))
    assert p.uncertainty[0] == pytest.approx(0.7 * u_energy, rel=1e-8)
    a_atom = phi_train.T @ phi_train + g.lam * np.eye(K)
    u_atom = np.sqrt(np.einsum("ik,ik->i", phi, np.linalg.solve(a_atom, phi.T).T))
    np.testing.assert_allclose(p.atom_uncertainty, u_atom, rtol=1e-8)
    # Distance: the training features of the energy are pbar; of atoms the greedy max-dist subset.
    np.testing.assert_allclose(g.train_atom, phi_train[select_max_dist(phi_train, 20)], rtol=1e-12)
    p = model.evaluate(batch, "distance", forces=False, atom_uncertainty=True)
    assert p.uncertainty[0] == pytest.approx(9 * cdist([Phi / 9], pbar).min(), rel=1e-10)
    np.testing.assert_allclose(p.atom_uncertainty, cdist(phi, g.train_atom).min(axis=1), rtol=1e-10)
    # On training data the energy distance is zero.
    p = model.evaluate(data.batch([2]), "distance", forces=False)
    assert p.uncertainty[0] < 1e-6


# ------------------------------------------------------------------ uncertainty gradients


@pytest.fixture(scope="module")
def heads():
    return {head: _head_model(head)[0] for head in ("mve", "evidential")}


def test_distance_reference_keeps_every_training_atom_below_the_cap(all_methods):
    model, _ = all_methods
    g = GradientFeatures(model.gradient.elements, model.gradient.k, model.gradient.R1, model.gradient.R2)
    rng = np.random.default_rng(3)
    phi = rng.normal(size=(60, g.n_features))
    structure, n_atoms = np.repeat(np.arange(10), 6), np.full(10, 6)
    np.testing.assert_array_equal(g.fit(phi, structure, n_atoms).train_atom, phi)  # default cap: all
    np.testing.assert_array_equal(g.fit(phi, structure, n_atoms, 60).train_atom, phi)
    np.testing.assert_array_equal(
        g.fit(phi, structure, n_atoms, 25).train_atom, phi[select_max_dist(phi, 25)]
    )


@pytest.mark.parametrize("method", ["ensemble", "mve", "evidential", "gmm", "posterior", "distance"])
def test_uncertainty_gradients_match_finite_differences(all_methods, heads, method):
    model = heads[method] if method in heads else all_methods[0]
    atoms = quartz(9, rattle=0.1)
    p = evaluate_atoms(model, atoms, method, forces=False, gradient=True)
    rng = np.random.default_rng(5)
    h = 1e-5

    def u(a):
        return evaluate_atoms(model, a, method, forces=False).uncertainty[0]

    for _ in range(2):
        v = rng.normal(size=atoms.positions.shape)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions += h * v
        minus.positions -= h * v
        slope = (u(plus) - u(minus)) / (2 * h)
        assert np.sum(p.uncertainty_gradient * v) == pytest.approx(slope, rel=1e-5, abs=1e-7)
    eps = rng.normal(size=(3, 3))
    slope = (u(strained(atoms, h * eps)) - u(strained(atoms, -h * eps))) / (2 * h)
    # uncertainty_virial = +sum r (x) dU/dr, the strain derivative of U (transposed).
    assert np.sum(p.uncertainty_virial[0].T * eps) == pytest.approx(slope, rel=1e-5, abs=1e-7)
    assert np.abs(p.uncertainty_gradient.sum(axis=0)).max() < 1e-8 * max(
        1.0, np.abs(p.uncertainty_gradient).max()
    )


# ------------------------------------------------------------------ calibration


def test_calibration_on_validation_data_matches_the_reference_classes():
    sf = small_descriptor()
    structures = labelled_quartz(14, seed=3)
    data = AtomsData(structures, sf)
    model, _ = model_with_all_methods()
    messages = []
    coverage = calibrate(model, data, ["ensemble", "gmm", "posterior"], alpha=0.2, log=messages.append)
    raw = MLIPModel(model.network, ("ensemble", "posterior"), gradient=model.gradient)  # factors 1
    p = raw.predict(data, "ensemble", atom_uncertainty=True)
    e_err = np.abs(p.energy - data.energy)
    f_err = force_rmse_per_atom(p.forces, data.forces)
    expected = ConformalCalibration(0.2).fit(e_err, p.uncertainty).factor
    assert model.factor("energy", "ensemble") == pytest.approx(expected, rel=1e-12)
    expected = ConformalCalibration(0.2).fit(f_err, p.atom_uncertainty).factor
    assert model.factor("force", "ensemble") == pytest.approx(expected, rel=1e-12)
    p_post = raw.predict(data, "posterior", atom_uncertainty=True)
    expected = ConformalCalibration(0.2).fit(e_err, p_post.uncertainty).factor
    assert model.factor("energy", "posterior") == pytest.approx(expected, rel=1e-12)
    for key, value in coverage.items():
        assert value >= 0.8, key
    # The GMM's scores are recalibrated with sigma^2 = a s + b fitted on the same data (seed 003 Eq. 13).
    p_gmm = model.predict(data, "gmm", atom_uncertainty=True)
    fit = VarianceRecalibration("positive_variance").fit(p_gmm.energy - data.energy, p_gmm.score)
    np.testing.assert_allclose(
        model.calibration["calibration/nll/energy/gmm"], [fit.a, fit.b, fit.min_variance]
    )
    c_e = model.factor("energy", "gmm")
    np.testing.assert_allclose(p_gmm.uncertainty, c_e * fit.apply(p_gmm.score), rtol=1e-10)
    assert any("conformal factor" in m for m in messages)
    # Seed 002's level (alpha 0.05) needs 19 points: 14 energies get the largest ratio, with a warning.
    messages.clear()
    with pytest.warns(CalibrationWarning, match="needs at least 19 calibration points, got 14"):
        calibrate(model, data, ["ensemble"], alpha=0.05, log=messages.append)
    assert model.factor("energy", "ensemble") == pytest.approx(np.max(e_err / p.uncertainty), rel=1e-12)
    assert any("the largest of 14 ratios" in m for m in messages)


def test_unavailable_methods_are_clear_errors(all_methods):
    model, data = all_methods
    batch = data.batch([0])
    with pytest.raises(ValueError, match="'mve' is not available: the network has no mve head"):
        model.evaluate(batch, "mve")
    with pytest.raises(ValueError, match="unknown uncertainty method 'dropout'"):
        model.evaluate(batch, "dropout")
    with pytest.raises(ValueError, match="an uncertainty gradient needs an uncertainty method"):
        model.evaluate(batch, None, gradient=True)
    no_pairs = AtomsData([quartz(1)], model.descriptor, labels=False, keep_neighbours=False)
    with pytest.raises(ValueError, match="need the neighbour pairs"):
        model.evaluate(no_pairs.batch([0], neighbours=False), "ensemble")
