"""LARS against its formula and against SGD; warmup, decay and linear scaling as pure functions;
the trainer applying them step by step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from recscale.cli import main
from recscale.optim.lars import LARS, lars_param_groups, trust_ratio
from recscale.optim.schedules import decay_factor, learning_rate, scaled_lr, warmup_factor


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def test_lars_update_equals_the_formula():
    w0 = torch.tensor([[3.0, -4.0], [0.0, 0.0]], dtype=torch.float64)  # ||w|| = 5
    w = nn.Parameter(w0.clone())
    lr, momentum, decay, eta = 0.5, 0.9, 0.01, 0.02
    opt = LARS([w], lr=lr, momentum=momentum, weight_decay=decay, eta=eta)
    g1 = torch.tensor([[1.0, 2.0], [2.0, 0.0]], dtype=torch.float64)  # ||g|| = 3
    w.grad = g1.clone()
    opt.step()
    ratio1 = eta * 5.0 / (3.0 + decay * 5.0)
    v1 = lr * ratio1 * (g1 + decay * w0)
    assert torch.allclose(w.detach(), w0 - v1, atol=1e-12)

    w1 = w0 - v1
    g2 = torch.tensor([[0.5, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    w.grad = g2.clone()
    opt.step()
    n_w, n_g = float(w1.norm()), float(g2.norm())
    ratio2 = eta * n_w / (n_g + decay * n_w)
    v2 = momentum * v1 + lr * ratio2 * (g2 + decay * w1)
    assert torch.allclose(w.detach(), w1 - v2, atol=1e-12)


def test_lars_with_trust_ratio_one_is_sgd_with_momentum():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    b = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    lars = LARS([{"params": list(a.parameters()), "adapt": False}], lr=0.1, momentum=0.9, weight_decay=1e-3)
    sgd = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step in range(5):
        _grads(a.parameters(), step)
        _grads(b.parameters(), step)
        lars.step()
        sgd.step()
    for pa, pb, p0 in zip(a.parameters(), b.parameters(), start):
        assert torch.allclose(pa, pb, atol=1e-12)
        assert not torch.allclose(pa, p0)  # both really moved


def test_lars_excludes_biases_and_vectors_from_the_trust_ratio_and_decay():
    layer = nn.Linear(3, 2).double()
    groups = lars_param_groups(layer, weight_decay=0.1)
    assert [g["adapt"] for g in groups] == [True, False]
    assert groups[0]["params"] == [layer.weight] and groups[1]["params"] == [layer.bias]
    assert groups[1]["weight_decay"] == 0.0
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    opt = LARS(groups, lr=0.5, momentum=0.0, weight_decay=0.1, eta=0.01)
    _grads(layer.parameters(), 3)
    opt.step()
    # bias: plain SGD step, no ratio, no decay
    assert torch.allclose(layer.bias.detach(), b0 - 0.5 * layer.bias.grad, atol=1e-12)
    ratio = trust_ratio(w0.norm(), layer.weight.grad.norm(), 0.01, 0.1)
    expected = w0 - 0.5 * ratio * (layer.weight.grad + 0.1 * w0)
    assert float(ratio) < 0.1 and torch.allclose(layer.weight.detach(), expected, atol=1e-12)


def test_trust_ratio_is_one_for_zero_norms_and_refuses_sparse_gradients():
    zero = torch.tensor(0.0)
    assert float(trust_ratio(zero, torch.tensor(2.0), 0.001, 0.0)) == 1.0
    assert float(trust_ratio(torch.tensor(2.0), zero, 0.001, 0.0)) == 1.0
    table = nn.Embedding(5, 2, sparse=True)
    table(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="dense gradients"):
        LARS(table.parameters(), lr=0.1).step()


def test_exponential_warmup_starts_at_one_percent_and_grows_geometrically():
    steps = 10
    factors = [warmup_factor(s, steps, "exponential") for s in range(steps + 2)]
    assert factors[0] == pytest.approx(0.01)
    ratios = [factors[s + 1] / factors[s] for s in range(steps - 1)]
    assert all(r == pytest.approx(0.01 ** (-1 / steps)) for r in ratios)
    assert factors[steps] == 1.0 and factors[steps + 1] == 1.0
    assert all(f < 1 for f in factors[:steps])


def test_linear_warmup_and_decays():
    assert [warmup_factor(s, 4, "linear") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0, "linear") == 1.0 and warmup_factor(3, 10, "none") == 1.0
    assert decay_factor(5, 4, 104, "constant") == 1.0
    assert decay_factor(54, 4, 104, "linear") == pytest.approx(0.5)
    assert decay_factor(54, 4, 104, "cosine") == pytest.approx(0.5)
    assert decay_factor(104, 4, 104, "cosine") == pytest.approx(0.0)
    assert decay_factor(2, 4, 104, "linear") == 1.0  # still warming up
    # a pure function of the step: same answer in any order
    forward = [learning_rate(s, 0.1, 5, 50, "exponential", "cosine") for s in range(50)]
    backward = [learning_rate(s, 0.1, 5, 50, "exponential", "cosine") for s in reversed(range(50))]
    assert forward == backward[::-1] and max(forward) == pytest.approx(0.1)


def test_linear_scaling_rule():
    assert scaled_lr(0.002, 65536, 4096, "linear") == pytest.approx(0.032)
    assert scaled_lr(0.002, 65536, 4096, "none") == 0.002


def test_trainer_follows_the_schedule_and_lars_trains(prepared, tmp_path, capsys):
    data = prepared("ncf")
    out = tmp_path / "run"
    code = main(["train", "--data", str(data.root), "--model", "neumf", "--out", str(out), "--device", "cpu",
                 "--epochs", "2", "--batch-size", "8192", "--optimizer", "lars", "--lr", "2",
                 "--lr-scaling", "linear", "--base-batch-size", "4096", "--warmup", "exponential",
                 "--warmup-epochs", "1", "--lr-decay", "cosine", "-p", "factors=8", "-p", "layers=[32,16,8]"])
    capsys.readouterr()
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = math.ceil(len(data.columns("train", "user")[0]) * 5 / 8192)
    assert records[0]["lr"] == pytest.approx(learning_rate(steps - 1, 4.0, steps, 2 * steps, "exponential", "cosine"))
    assert records[0]["lr"] < 4.0
    assert records[1]["lr"] == pytest.approx(learning_rate(2 * steps - 1, 4.0, steps, 2 * steps, "exponential", "cosine"))
    assert records[1]["lr"] < 0.01  # cosine: almost 0 at the last step
    assert records[-1]["hr@10"] > 0.3  # well above random (0.1) after two epochs
    assert 'embedding_gradients = "dense"' in (out / "config.toml").read_text()


@pytest.mark.parametrize("argv, fragment", [
    (["--lr-scaling", "linear"], "--lr-scaling: linear needs --base-batch-size >= 1"),
    (["--warmup", "linear"], "--warmup: linear needs --warmup-epochs > 0"),
    (["--optimizer", "lars", "-p", "embedding_gradients=sparse"], "--optimizer lars: needs dense embedding"),
])
def test_bad_schedule_flags_are_one_line_errors(prepared, tmp_path, capsys, argv, fragment):
    code = main(["train", "--data", str(prepared("ncf").root), "--model", "neumf", "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--epochs", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
