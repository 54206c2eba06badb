"""The neural-ODE multi-exit classifier and the kinetic-energy L_depth."""

import math

import numpy as np
import pytest
import torch
from helpers import assert_online_equals_offline, policy_grid, tiny_data, train_on_noisy_data
from hypothesis import given, settings
from hypothesis import strategies as st

import optdepth
from optdepth.errors import ConfigError, DataError
from optdepth.losses.depth import KineticPenalty, list_regularizers
from optdepth.models import ExitOutputs
from optdepth.models.neural_ode import NeuralODEClassifier, depth_grid
from optdepth.offline import fit_exit_policy, list_exit_policies
from optdepth.offline.exit_policies import FitContext

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> NeuralODEClassifier:
    torch.manual_seed(0)
    return optdepth.create_model("node", **{"width": 8, "exits": 4, **kw}).eval()


class Linear(torch.nn.Module):
    """f(h, s) = a h: h(s) = h(0) exp(a s), the exact answer the solvers are checked against."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a, self.nfe = a, 0

    def forward(self, s, h):
        self.nfe += 1
        return self.a * h


class Constant(torch.nn.Module):
    """f(h, s) = c: the state moves in a straight line at constant speed ||c||."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c, self.nfe = c, 0

    def forward(self, s, h):
        return self.c.expand_as(h)


@pytest.mark.parametrize(("solver", "steps", "nfe_per_step", "tol"), [
    ("euler", 64, 1, 2e-2), ("midpoint", 8, 2, 2e-3), ("rk4", 4, 4, 3e-5), ("dopri5", 1, None, 1e-5)])
def test_segments_integrate_the_ode_exactly(solver, steps, nfe_per_step, tol):
    model = tiny(solver=solver, steps_per_exit=steps, grid=(0.1, 0.5, 1.0), rtol=1e-7, atol=1e-9)
    model.func = Linear(-1.5)
    h0 = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    h = h0
    for t in range(3):
        h = model.integrate(h, t)
    torch.testing.assert_close(h, h0 * math.exp(-1.5), rtol=tol, atol=0)
    if nfe_per_step is not None:  # fixed steps: the evaluation count is known in advance
        assert model.nfe_per_segment == [steps * nfe_per_step] * 3
    else:
        assert all(n > 0 for n in model.nfe_per_segment)


def test_norms_are_segment_displacements_and_states():
    model = tiny()
    x = torch.randn(5, 1, 28, 28)
    out = model(x)
    h = model.stem(x)
    for t in range(model.num_exits):
        new = model.integrate(h, t)
        torch.testing.assert_close(out.residual_norms[t], (new - h).flatten(1).norm(dim=1))
        torch.testing.assert_close(out.state_norms[t], h.flatten(1).norm(dim=1))
        torch.testing.assert_close(out.logits[t], model.readout(new, t))
        h = new
    torch.testing.assert_close(model.forward_final(x), out.logits[-1])
    assert model.exit_blocks == tuple(range(4)) and model.grid == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_fixed_step_results_do_not_depend_on_the_batch():
    model = tiny()
    x = torch.randn(6, 1, 28, 28)
    together = model(x)
    alone = [model(x[i:i + 1]) for i in range(6)]
    torch.testing.assert_close(torch.cat([a.logits for a in alone], 1), together.logits,
                               rtol=1e-5, atol=1e-6)


def test_exit_costs_grow_by_equal_segments_and_shared_head():
    model = tiny(exits=5)
    steps = model.exit_costs().diff()
    torch.testing.assert_close(steps, steps[:1].expand_as(steps), rtol=1e-6, atol=0)
    assert len(model.heads) == 1
    assert len(tiny(exits=5, shared_head=False).heads) == 5


def test_adaptive_solver_spends_more_evaluations_at_tighter_tolerance():
    x = torch.randn(2, 1, 28, 28)
    loose = tiny(solver="dopri5", exits=2, rtol=1e-2, atol=1e-2)
    tight = tiny(solver="dopri5", exits=2, rtol=1e-6, atol=1e-6)
    a, b = loose(x), tight(x)
    assert sum(tight.nfe_per_segment) > sum(loose.nfe_per_segment) >= 2 * 6
    fine = tiny(solver="rk4", exits=2, steps_per_exit=16)(x)
    torch.testing.assert_close(b.logits, fine.logits, rtol=1e-4, atol=1e-4)
    assert (a.logits - fine.logits).abs().max() < 0.1


def test_gradients_through_the_solver():
    torch.manual_seed(0)
    model = optdepth.create_model("node", width=2, exits=2, image_size=4, downsample=1,
                                  num_classes=3).double()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: model(inp).logits, (x,))


# --------------------------------------------------------------------------- kinetic L_depth


def test_kinetic_penalty_is_exact_for_a_constant_field():
    """f = c: ∫_0^1 w(s)||c||² ds = ||c||² (uniform), and ∫ 2s ds ||c||² = ||c||² (linear)."""
    model = tiny(grid=(0.1, 0.3, 0.7, 1.0))
    c = torch.randn(8, 7, 7)
    model.func = Constant(c)
    out = model(torch.randn(4, 1, 28, 28))
    energy = float(c.pow(2).sum())
    for weight in ("uniform", "linear"):
        penalty = KineticPenalty(beta=2.0, weight=weight, grid=model.grid[1:])(out)
        assert penalty.item() == pytest.approx(2.0 * energy, rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(norms=st.lists(st.floats(0.0, 10.0), min_size=3, max_size=3), scale=st.floats(0.1, 5.0))
def test_kinetic_penalty_matches_its_formula(norms, scale):
    res = torch.tensor(norms, dtype=torch.float32)[:, None].repeat(1, 2)  # (3 segments, B=2)
    out = ExitOutputs(torch.zeros(3, 2, 10), res, torch.ones(3, 2))
    grid = (0.5, 0.75, 1.0)
    expected = sum(2 * m / d * n**2 for n, m, d in zip(norms, (0.25, 0.625, 0.875), (0.5, 0.25, 0.25),
                                                        strict=True))
    got = KineticPenalty(beta=1.0, grid=grid)(out)
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    scaled = ExitOutputs(out.logits, res * scale, out.state_norms)
    assert float(KineticPenalty(beta=1.0, grid=grid)(scaled)) == pytest.approx(
        scale**2 * expected, rel=1e-4, abs=1e-5)


def test_kinetic_is_registered_and_trains():
    reg = optdepth.create_regularizer("kinetic", beta=1e-2, weight="uniform")
    model = tiny()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(16, 1, 28, 28)
    first = None
    for _ in range(5):  # the penalty alone must go down: its gradient reaches the ODE
        loss = reg(model(x))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert reg(model(x)).item() < first
    assert {"relative", "decay_hinge", "kinetic"} <= set(list_regularizers())


# --------------------------------------------------------------------------- real early exit


@pytest.fixture(scope="module")
def trained_ode():
    data = tiny_data(384, 192, 128)
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cal, test = train_on_noisy_data(model, data, opt, steps=30, batch=48, eval_batch=96)
    return model, data, cal, test


def test_online_equals_offline_for_every_policy_on_a_neural_ode(trained_ode):
    model, data, cal, test = trained_ode
    ctx = FitContext.from_traces(cal, folds=4)
    used = set()
    for name in list_exit_policies():
        for param in np.asarray(policy_grid(name, cal))[[0, -1]]:  # two points per policy: time
            policy = fit_exit_policy(name, ctx, float(param))
            used |= assert_online_equals_offline(model, policy, data, test, f"{name}({param:.3g})",
                                                 batch_sizes=((32, True), (5, False)),
                                                 features="skip")
    assert len(used) >= 3, f"policies used only exits {sorted(used)}: the test would be weak"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"exits": 0}, "exits must be a positive int"),
    ({"exits": None}, "exactly one of exits"),
    ({"grid": (0.5, 0.9)}, "ending at 1.0"),
    ({"grid": (0.5, 0.5, 1.0)}, "strictly increasing"),
    ({"grid": (0.0, 1.0)}, r"in \(0, 1\]"),
    ({"grid": "abc"}, "sequence of numbers"),
    ({"solver": "rk5"}, "unknown solver 'rk5'.*rk4"),
    ({"downsample": 3}, "downsample must be 1 or 2"),
    ({"rtol": -1.0}, "rtol must be a finite number > 0"),
    ({"width": 0}, "width must be a positive int"),
    ({"steps_per_exit": 1.5}, "steps_per_exit must be a positive int"),
    ({"colour": 1}, "bad arguments for model 'node'"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        optdepth.create_model("node", **kwargs)


def test_bad_images_and_penalty_arguments():
    model = tiny()
    with pytest.raises(DataError, match=r"expects images of shape \(B, 1, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ConfigError, match="weight must be one of"):
        optdepth.create_regularizer("kinetic", weight="cubic")
    with pytest.raises(ConfigError, match="ending at 1.0"):
        optdepth.create_regularizer("kinetic", grid=(0.5,))
    with pytest.raises(ConfigError, match="grid has 2 depths but the model reported 4"):
        KineticPenalty(beta=1.0, grid=(0.5, 1.0))(model(torch.randn(2, 1, 28, 28)))
    assert depth_grid(2, None) == (0.5, 1.0)
