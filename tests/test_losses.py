"""Multi-exit cross-entropy and the L_depth regularisers."""

import math

import pytest
import torch
import torch.nn.functional as F

import optdepth
from optdepth.errors import ConfigError
from optdepth.losses import exit_weights, multi_exit_cross_entropy
from optdepth.models import ExitOutputs


def outputs(rel, logits=None):
    rel = torch.as_tensor(rel, dtype=torch.float32)
    logits = torch.zeros(2, rel.shape[1], 3) if logits is None else logits
    return ExitOutputs(logits, rel, torch.ones_like(rel))


def test_exit_weights():
    torch.testing.assert_close(exit_weights(4, "uniform"), torch.ones(4))
    torch.testing.assert_close(exit_weights(3, "linear"), torch.tensor([1.0, 2.0, 3.0]) / 2)
    with pytest.raises(ConfigError, match="unknown exit weighting"):
        exit_weights(3, "cubic")


def test_multi_exit_ce_matches_per_exit_ce():
    torch.manual_seed(0)
    logits, y = torch.randn(3, 5, 4), torch.randint(0, 4, (5,))
    per_exit = torch.stack([F.cross_entropy(logits[t], y) for t in range(3)])
    torch.testing.assert_close(multi_exit_cross_entropy(logits, y), per_exit.sum())
    torch.testing.assert_close(multi_exit_cross_entropy(logits, y, "linear"),
                               (per_exit * torch.tensor([1, 2, 3]) / 2).sum())


def test_relative_penalty_known_value():
    # blocks with relative norms 1, 2 (both samples): weights 1/3, 2/3 -> 1/3*1 + 2/3*4 = 3
    reg = optdepth.create_regularizer("relative", beta=2.0)
    value = reg(outputs([[1.0, 1.0], [2.0, 2.0]]))
    assert value.item() == pytest.approx(2.0 * 3.0)


def test_decay_hinge_known_value():
    reg = optdepth.create_regularizer("decay_hinge", beta=1.0, rho=0.5)
    # r = [1, 0.9, 0.3]: excess 0.9-0.5=0.4, 0.3-0.45<0 -> 0.16
    assert reg(outputs([[1.0], [0.9], [0.3]])).item() == pytest.approx(0.16)
    assert reg(outputs([[1.0], [0.5], [0.25]])).item() == 0.0  # exact geometric decay is free


def test_beta_warmup_and_zero_beta():
    reg = optdepth.create_regularizer("relative", beta=1.0, warmup_epochs=2.0)
    assert [reg.weight(e) for e in (0, 1, 2, 5)] == [0.0, 0.5, 1.0, 1.0]
    assert reg.weight(None) == 1.0
    out = outputs([[1.0], [1.0]])
    assert reg(out, epoch=1).item() == pytest.approx(0.5 * reg(out).item())
    off = optdepth.create_regularizer("relative", beta=0.0)
    assert off(out).item() == 0.0 and not off(out).requires_grad


NORM_PENALTIES = ["relative", "decay_hinge"]


@pytest.mark.parametrize("name", NORM_PENALTIES)
def test_penalty_gradient_shrinks_later_residuals(name):
    rel = torch.tensor([[0.5, 0.4], [0.6, 0.5], [0.7, 0.8]], requires_grad=True)
    reg = optdepth.create_regularizer(name, beta=1.0)
    reg(ExitOutputs(torch.zeros(3, 2, 3), rel, torch.ones(3, 2))).backward()
    assert rel.grad[-1].sum() > 0  # pushing the last block's norm down lowers the penalty
    assert torch.isfinite(rel.grad).all()


def test_distill_matches_kl_div_and_vanishes_on_agreement():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5)
    tau = 2.0
    reg = optdepth.create_regularizer("distill", beta=1.0, temperature=tau)
    target = F.softmax(logits[-1] / tau, dim=-1)
    expected = sum(F.kl_div(F.log_softmax(logits[t] / tau, dim=-1), target, reduction="batchmean")
                   for t in range(3)) / 3 * tau**2
    value = reg(ExitOutputs(logits, torch.ones(4, 6), torch.ones(4, 6)))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    same = logits[-1].expand(4, 6, 5)
    assert reg(ExitOutputs(same, torch.ones(4, 6), torch.ones(4, 6))).item() == pytest.approx(0, abs=1e-6)


def test_distill_pulls_early_exits_only():
    torch.manual_seed(1)
    logits = torch.randn(3, 8, 4, requires_grad=True)
    reg = optdepth.create_regularizer("distill", beta=1.0)
    reg(ExitOutputs(logits, torch.ones(3, 8), torch.ones(3, 8))).backward()
    assert torch.all(logits.grad[-1] == 0)  # the final exit is the target, not pulled
    # a small step against the gradient brings exit 0 closer to the final exit
    before = reg(ExitOutputs(logits.detach(), torch.ones(3, 8), torch.ones(3, 8)))
    after = reg(ExitOutputs(logits.detach() - 0.1 * logits.grad, torch.ones(3, 8), torch.ones(3, 8)))
    assert after < before


def test_regularizer_errors():
    with pytest.raises(ConfigError, match="unknown regularizer 'l3'.*relative"):
        optdepth.create_regularizer("l3")
    with pytest.raises(ConfigError, match="beta must be a finite number >= 0"):
        optdepth.create_regularizer("relative", beta=-1)
    with pytest.raises(ConfigError, match="beta must be"):
        optdepth.create_regularizer("relative", beta=math.nan)
    with pytest.raises(ConfigError, match="rho must be a number in"):
        optdepth.create_regularizer("decay_hinge", rho=1.5)
    with pytest.raises(ConfigError, match="bad arguments"):
        optdepth.create_regularizer("relative", rho=0.5)
    with pytest.raises(ConfigError, match="temperature must be"):
        optdepth.create_regularizer("distill", temperature=0)


# --- the expected stopping loss -----------------------------------------------------------------

def brute_force_soft_stopping(rewards, tau):
    """q by the definition, one path and one exit at a time (float64)."""
    t_max = len(rewards)
    value, stop = rewards[-1], [1.0] * t_max
    for t in range(t_max - 2, -1, -1):
        stop[t] = 1 / (1 + math.exp(-(rewards[t] - value) / tau))
        value = stop[t] * rewards[t] + (1 - stop[t]) * value
    q, alive = [], 1.0
    for t in range(t_max):
        q.append(alive * stop[t])
        alive *= 1 - stop[t]
    return q


def test_soft_stopping_distribution_matches_its_definition():
    from optdepth.losses import soft_stopping_distribution
    torch.manual_seed(0)
    rewards = torch.randn(5, 7, dtype=torch.float64)
    q = soft_stopping_distribution(rewards, 0.3)
    torch.testing.assert_close(q.sum(dim=0), torch.ones(7, dtype=torch.float64))
    for b in range(7):
        expected = brute_force_soft_stopping(rewards[:, b].tolist(), 0.3)
        torch.testing.assert_close(q[:, b], torch.tensor(expected, dtype=torch.float64))
    # two exits: q_1 = σ((r_1 − r_2) / τ)
    two = soft_stopping_distribution(torch.tensor([[0.5], [0.2]], dtype=torch.float64), 0.1)
    assert two[0, 0].item() == pytest.approx(1 / (1 + math.exp(-3.0)))


def test_soft_stopping_distribution_tends_to_the_hard_envelope():
    """τ → 0: the rule stops at each path's best exit (the pathwise Snell envelope)."""
    from optdepth.losses import soft_stopping_distribution
    torch.manual_seed(1)  # distinct rewards 0.1 apart, in random order along each path
    rewards = torch.stack([torch.randperm(6) for _ in range(50)], dim=1).double() / 10
    q = soft_stopping_distribution(rewards, 1e-3)
    torch.testing.assert_close(q, F.one_hot(rewards.argmax(dim=0), 6).T.to(q), atol=1e-6, rtol=0)


def test_stopping_penalty_known_value_and_gradient():
    """One sample, two exits, known logits: the penalty is Σ_t q_t (ℓ_t + λ C_t) by hand."""
    reg = optdepth.create_regularizer("stopping", beta=1.0, price=0.3, temperature=0.2,
                                      costs=(0.4, 1.0))
    logits = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 3.0, 0.0]]], requires_grad=True)
    y = torch.tensor([1])
    value = reg(outputs([[1.0], [1.0]], logits), targets=y)
    log_p = torch.log_softmax(logits.detach(), -1)[:, 0]  # (2, 3)
    rewards = [log_p[0].max().item() - 0.3 * 0.4, log_p[1].max().item() - 0.3]
    q1 = 1 / (1 + math.exp(-(rewards[0] - rewards[1]) / 0.2))
    losses = [-log_p[0, 1].item() + 0.12, -log_p[1, 1].item() + 0.3]
    assert value.item() == pytest.approx(q1 * losses[0] + (1 - q1) * losses[1], rel=1e-5)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_stopping_penalty_prefers_early_exits_that_are_right():
    """Same losses at a higher price: the rule moves earlier; a confidently wrong first exit is
    penalised more than a confidently right one."""
    right = torch.tensor([[[4.0, 0.0]], [[4.0, 0.0]]])
    wrong = torch.tensor([[[0.0, 4.0]], [[4.0, 0.0]]])
    y = torch.tensor([0])
    reg = optdepth.create_regularizer("stopping", beta=1.0, price=0.0, costs=(0.5, 1.0))
    assert reg(outputs([[1.0], [1.0]], wrong), targets=y) > reg(outputs([[1.0], [1.0]], right),
                                                              targets=y)


def test_stopping_penalty_bad_input():
    with pytest.raises(ConfigError, match="price must be a finite number >= 0"):
        optdepth.create_regularizer("stopping", price=-1.0)
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        optdepth.create_regularizer("stopping", temperature=0.0)
    with pytest.raises(ConfigError, match="costs must increase strictly"):
        optdepth.create_regularizer("stopping", costs=(0.5, 0.4, 1.0))
    reg = optdepth.create_regularizer("stopping", beta=1.0, costs=(0.5, 1.0))
    with pytest.raises(ConfigError, match="reads the labels"):
        reg(outputs([[1.0], [1.0]]))
    with pytest.raises(ConfigError, match="2 exit costs but the model has 3 exits"):
        reg(outputs([[1.0]], torch.zeros(3, 1, 4)), targets=torch.tensor([0]))


def test_stopping_penalty_reads_the_models_exit_costs():
    model = optdepth.create_model("resnet20", width=2, exits="stages")
    reg = optdepth.create_regularizer("stopping", beta=1.0)
    reg.attach(model)
    assert reg.costs == tuple(float(c) for c in model.exit_costs())


def test_sum_penalty_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(0)
    logits, y = torch.randn(3, 4, 5), torch.randint(0, 5, (4,))
    out = outputs(torch.rand(3, 4), logits)
    total = optdepth.create_regularizer(
        "sum", beta=1.5, terms={"distill": 2.0, "stopping": 0.5},
        term_kwargs={"stopping": {"price": 0.1, "costs": (0.2, 0.6, 1.0)}})
    distill = optdepth.create_regularizer("distill", beta=2.0)
    stopping = optdepth.create_regularizer("stopping", beta=0.5, price=0.1, costs=(0.2, 0.6, 1.0))
    expected = 1.5 * (distill(out) + stopping(out, targets=y))
    torch.testing.assert_close(total(out, targets=y), expected)
    assert total.needs_targets and not optdepth.create_regularizer(
        "sum", beta=1.0, terms={"distill": 1.0, "relative": 1.0}).needs_targets


def test_sum_penalty_attaches_its_terms_and_refuses_bad_terms():
    model = optdepth.create_model("resnet20", width=2, exits="stages")
    total = optdepth.create_regularizer("sum", beta=1.0, terms={"distill": 1.0, "stopping": 1.0})
    total.attach(model)
    assert total.parts["stopping"].costs == tuple(float(c) for c in model.exit_costs())
    for terms, message in (({}, "needs terms"), (None, "needs terms"),
                           ({"sum": 1.0}, "other than 'sum'"),
                           ({"distill": -1.0}, "beta must be a finite number >= 0")):
        with pytest.raises(ConfigError, match=message):
            optdepth.create_regularizer("sum", terms=terms)
    with pytest.raises(ConfigError, match="not terms: stopping"):
        optdepth.create_regularizer("sum", terms={"distill": 1.0},
                                    term_kwargs={"stopping": {"price": 0.1}})
