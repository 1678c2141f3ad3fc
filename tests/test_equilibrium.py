import pytest
import torch

from began_dist.config import TrainConfig
from began_dist.families.equilibrium import LrControl, convergence, update_k

t = torch.tensor


def test_k_update_matches_hand_computation():
    # k + lambda_k (gamma L(x) - L(G(z))) = 0.1 + 0.001 * (0.5 * 0.3 - 0.05) = 0.1001
    k = update_k(t(0.1), t(0.3), t(0.05), gamma=0.5, lambda_k=0.001)
    assert k.item() == pytest.approx(0.1001, abs=1e-7)
    k = update_k(t(0.1), t(0.3), t(0.35), gamma=0.5, lambda_k=0.01)  # 0.1 + 0.01 * (0.15 - 0.35) = 0.098
    assert k.item() == pytest.approx(0.098, abs=1e-7)


def test_k_is_clipped_to_unit_interval():
    assert update_k(t(0.0005), t(0.1), t(0.9), gamma=0.5, lambda_k=0.001).item() == 0.0
    assert update_k(t(0.9995), t(0.9), t(0.0), gamma=1.0, lambda_k=0.01).item() == 1.0


def test_convergence_measure():
    # M = L(x) + |gamma L(x) - L(G(z))| = 0.2 + |0.7 * 0.2 - 0.3| = 0.36
    assert convergence(t(0.2), t(0.3), 0.7).item() == pytest.approx(0.36)
    assert convergence(t(0.2), t(0.1), 0.5).item() == pytest.approx(0.2)  # at equilibrium M = L(x)


def control(**kw):
    return LrControl(TrainConfig(**{"lr": 1e-4, "lr_min": 2e-5, **kw}))


def test_m_stall_halves_when_windowed_mean_stalls_and_keeps_floor():
    lr = control(lr_control="m_stall", m_stall_window=2)
    decisions = [lr.observe(i + 1, t(m)) for i, m in enumerate([1.0, 1.0, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 1, 1, 1, 1])]
    # windows: 1.0 | 0.8 falls | 0.9 rises -> halve | 0.9 equal -> halve | 1.0 -> floor 2e-5 (x0.2)
    assert decisions == [False, False, False, False, False, True, False, True, False, True, False, False]
    assert lr.lr == pytest.approx(2e-5)


def test_m_stall_eps_needs_a_real_fall():
    lr = control(lr_control="m_stall", m_stall_window=1, m_stall_eps=0.1)
    lr.observe(1, t(1.0))
    assert lr.observe(2, t(0.95))  # fell by 5 % < 10 %: stalled
    assert not lr.observe(3, t(0.5))


def test_decay_is_095_every_2000_steps():
    lr = control(lr_control="decay", lr_min=0.0)
    changed = [s for s in range(1, 6001) if lr.observe(s, t(1.0))]
    assert changed == [2000, 4000, 6000]
    assert lr.lr == pytest.approx(1e-4 * 0.95**3)


def test_step_halves_every_n_with_floor():
    lr = control(lr_control="step", lr_decay_every=10)
    for s in range(1, 41):
        lr.observe(s, t(1.0))
    assert lr.lr == pytest.approx(2e-5)  # 1e-4 -> 5e-5 -> 2.5e-5 -> floor


def test_none_never_changes():
    lr = control(lr_control="none")
    assert not any(lr.observe(s, t(float(s))) for s in range(1, 5000))
    assert lr.lr == 1e-4


def test_apply_changes_lr_in_place_and_keeps_adam_moments():
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([param], lr=1e-4)
    param.grad = torch.ones(3)
    opt.step()
    moments = opt.state[param]["exp_avg"].clone()
    lr = control(lr_control="step", lr_decay_every=1)
    lr.observe(1, t(1.0))
    lr.apply(opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert torch.equal(opt.state[param]["exp_avg"], moments)


def test_state_roundtrip():
    lr = control(lr_control="m_stall", m_stall_window=3)
    for s, m in enumerate([1.0, 0.9, 0.8, 1.2]):
        lr.observe(s + 1, t(m))
    copy = control(lr_control="m_stall", m_stall_window=3)
    copy.load_state_dict(lr.state_dict(), torch.device("cpu"))
    assert [lr.observe(5, t(1.0)), lr.observe(6, t(1.0))] == [copy.observe(5, t(1.0)), copy.observe(6, t(1.0))]
    assert lr.lr == copy.lr
