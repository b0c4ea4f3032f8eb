"""finetune --adapt: the losses' mathematics, and the CLI's bad-input contract."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from datl.finetune.adapt.confusion import DomainConfusion, SoftLabelLoss, confusion_loss, soft_label_loss, soft_labels
from datl.finetune.adapt.dann import DomainAdversarialLoss
from datl.finetune.adapt.jmmd import JAN, SOFTMAX_BANDWIDTH, JointMMD
from datl.finetune.adapt.mmd import DAN, MultiKernelMMD, gaussian_kernels, mmd2_unbiased
from datl.finetune.adapt.net import TwoDomainStep, grl_lambda, reverse_gradient, scale_gradient
from datl.neural.engine.optim import annealed
from datl.neural.modeling import AdaptNet, create_model

from helpers import assert_user_error, cli


@pytest.mark.parametrize("est, n, tol", [("unbiased", 200, 0.02), ("linear", 2000, 0.07)])
def test_mmd_near_zero_for_one_distribution_and_clearly_above_for_shifted_ones(est, n, tol):
    # tol = 3 standard deviations of the estimate under one distribution, measured over
    # 50 seeds: unbiased (quadratic) at n=200 ~0.005; linear-time at n=2000 ~0.023
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
    shifted = torch.randn(n, 16, generator=g) + 0.5
    mmd = MultiKernelMMD(estimator=est)
    same, diff = float(mmd(a, b)), float(mmd(a, shifted))
    assert abs(same) < tol, (est, same)
    assert diff > 0.2 and diff > 3 * tol, (est, same, diff)


def brute_force_mmd2(s: torch.Tensor, t: torch.Tensor, kernel) -> float:
    n, m = len(s), len(t)
    kss = sum(kernel(s[i], s[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    ktt = sum(kernel(t[i], t[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kst = sum(kernel(s[i], t[j]) for i in range(n) for j in range(m)) / (n * m)
    return float(kss + ktt - 2 * kst)


def test_unbiased_estimator_matches_brute_force_and_its_expectation_is_the_population_mmd():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    base = torch.tensor(2.0, dtype=torch.float64)
    mults = (0.5, 1.0, 2.0)
    kernel = lambda a, b: sum(math.exp(-float(((a - b) ** 2).sum()) / (m * 2.0)) for m in mults)  # noqa: E731
    k = gaussian_kernels(s, t, mults, base=base)
    assert float(mmd2_unbiased(k, 7)) == pytest.approx(brute_force_mmd2(s, t, kernel), rel=1e-10)
    # expectation: the mean over many small batches from ONE distribution is 0 (unbiased);
    # the biased V-statistic (diagonal kept) would sit clearly above 0.
    vals, biased = [], []
    for _ in range(400):
        x, y = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
        kk = gaussian_kernels(x, y, mults, base=base)
        vals.append(float(mmd2_unbiased(kk, 8)))
        biased.append(float(kk[:8, :8].mean() + kk[8:, 8:].mean() - 2 * kk[:8, 8:].mean()))
    se = torch.tensor(vals).std().item() / math.sqrt(len(vals))
    assert abs(sum(vals) / len(vals)) < 3 * se  # within 3 standard errors of 0
    assert sum(biased) / len(biased) > 10 * se


def test_jmmd_product_kernel_separates_joint_shift_that_marginals_hide():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(300, 4, generator=g)
    onehot = torch.eye(2)[torch.randint(0, 2, (300,), generator=g)]
    # source: class 0 features at -1, class 1 at +1; target: the same marginals, labels swapped
    fs = f + (onehot[:, 1:] * 2 - 1)
    ft_same = torch.randn(300, 4, generator=g) + (onehot[:, 1:] * 2 - 1)
    ft_swap = torch.randn(300, 4, generator=g) - (onehot[:, 1:] * 2 - 1)
    j = JointMMD()
    same, swap = float(j([fs, onehot], [ft_same, onehot])), float(j([fs, onehot], [ft_swap, onehot]))
    assert swap > 5 * abs(same) and swap > 0.05


def test_reversal_layer_multiplies_gradients_by_minus_lambda():
    x = torch.randn(5, 3, requires_grad=True)
    (reverse_gradient(x, 0.3) * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.3 * torch.arange(3.0).expand(5, 3))


def test_lambda_and_the_annealing_follow_total_steps():
    assert grl_lambda(0.0) == 0.0
    assert grl_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_lambda(1.0) == pytest.approx(0.9999092, abs=1e-6)
    f = annealed(100)
    assert f(0) == 1.0 and f(50) == pytest.approx(6**-0.75) and f(100) == pytest.approx(11**-0.75)


def test_dann_reverses_at_coefficient_one_its_lambda_comes_from_the_step():
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(4, hidden=8).eval()  # no dropout: one deterministic function
    fs, ft = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    loss(fs, ft, progress=0.3).backward()
    g_rev = fs.grad.clone()
    fs.grad = None
    d = torch.cat([torch.zeros(6), torch.ones(6)]).long()
    torch.nn.functional.cross_entropy(loss.discriminator(torch.cat([fs, ft])), d).backward()
    assert torch.allclose(g_rev, -fs.grad, atol=1e-6)  # whatever the progress: no lambda inside the method


def test_confusion_loss_is_minimal_at_the_uniform_domain_prediction():
    uniform = torch.zeros(4, 2)
    assert float(confusion_loss(uniform)) == pytest.approx(math.log(2))
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        assert float(confusion_loss(torch.randn(4, 2, generator=g) * 2)) > math.log(2)
    z = torch.tensor([[0.3, -0.2]], requires_grad=True)  # gradient descent on it goes to uniform
    opt = torch.optim.SGD([z], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        confusion_loss(z).backward()
        opt.step()
    assert abs(float((z[0, 0] - z[0, 1]).detach())) < 1e-3


def test_confusion_trains_discriminator_and_features_apart():
    torch.manual_seed(0)
    m = DomainConfusion(4, hidden=8).eval()
    fs, ft = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    m(fs, ft).backward()
    from datl.finetune.adapt.confusion import confusion_loss as conf

    fs2, ft2 = fs.detach().clone().requires_grad_(), ft.detach().clone().requires_grad_()
    conf(m.discriminator(torch.cat([fs2, ft2]))).backward()
    assert torch.allclose(fs.grad, fs2.grad, atol=1e-6)  # features learn from the confusion loss only


def test_soft_labels_are_per_class_means_of_softmax_at_t():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 0])
    table = soft_labels(logits, labels, 3, temperature=2.0)
    expect0 = (logits[[0, 2, 3]] / 2).softmax(1).mean(0)
    assert torch.allclose(table[0], expect0)
    assert torch.allclose(table[1], (logits[1] / 2).softmax(0))
    assert torch.allclose(table[2], torch.full((3,), 1 / 3))  # no image of class 2: uniform


def test_soft_label_table_is_a_moving_average_that_a_class_first_batch_sets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    ya, yb = torch.tensor([0, 0, 1, 1, 0, 1]), torch.tensor([0, 2, 2, 0, 2, 0])
    m = SoftLabelLoss(3, temperature=2.0, momentum=0.9)
    m.update(a, ya)
    ta, tb = soft_labels(a, ya, 3, 2.0), soft_labels(b, yb, 3, 2.0)
    assert torch.allclose(m.table[:2], ta[:2]) and torch.allclose(m.table[2], torch.full((3,), 1 / 3))
    m.update(b, yb)
    assert torch.allclose(m.table[0], 0.9 * ta[0] + 0.1 * tb[0], atol=1e-6)  # seen twice: the average
    assert torch.allclose(m.table[1], ta[1])  # absent from b: unchanged
    assert torch.allclose(m.table[2], tb[2])  # first seen in b: set by it


def test_soft_label_loss_is_minimal_where_the_tempered_softmax_equals_the_soft_label():
    table = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    labels = torch.tensor([0, 1])
    at_min = (2.0 * table.log()).requires_grad_()  # softmax(z / 2) == table rows
    soft_label_loss(at_min, labels, table, 2.0).backward()
    assert float(at_min.grad.abs().max()) < 1e-6
    g = torch.Generator().manual_seed(1)
    best = float(soft_label_loss(at_min.detach(), labels, table, 2.0))
    for _ in range(50):
        assert float(soft_label_loss(at_min.detach() + torch.randn(2, 3, generator=g), labels, table, 2.0)) > best


def test_two_domain_step_is_ce_plus_transfer_plus_soft_loss_with_the_transfer_gradient_ramped():
    torch.manual_seed(0)
    net = AdaptNet(create_model("test_resnet", 3, 1), 3, 16).eval()  # eval: BatchNorm independent of batch makeup
    x, xt, xl = torch.randn(4, 1, 32, 32), torch.randn(5, 1, 32, 32), torch.randn(2, 1, 32, 32)
    y, yl = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2])
    soft = SoftLabelLoss(3, temperature=2.0)
    step = TwoDomainStep(
        DAN(), iter([xt]), 0.5, "cpu", ramp=True, labeled_target=iter([(xl, yl)]), soft=soft, soft_weight=0.3
    )
    loss = step(net, x, y, 0.25)
    loss.backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    f = net.features(torch.cat([x, xt, xl]))
    z = net.head(f)
    w = 0.5 * grl_lambda(0.25)
    expect = (
        F.cross_entropy(torch.cat([z[:4], z[9:]]), torch.cat([y, yl]))
        + w * DAN()(f[:4], f[4:9], z[:4], z[4:9], 0.25)
        + 0.3 * soft_label_loss(z[9:], yl, soft_labels(z[:4].detach(), y, 3, 2.0), 2.0)
    )
    expect.backward()
    for g, p in zip(got, net.parameters()):  # the network gets trade-off x lambda_p x the transfer gradient
        assert torch.allclose(g, p.grad, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(
        float(expect.detach() - w * step.last["transfer"] + step.last["transfer"]), rel=1e-5
    )  # the value holds the unweighted transfer loss
    assert step.weight(0.0) == 0.0 and step.weight(1.0) == pytest.approx(0.5, rel=1e-4)
    assert step.last["transfer_weight"] == pytest.approx(0.5 * grl_lambda(0.25)) and set(step.last) == {
        "ce",
        "transfer",
        "transfer_weight",
        "soft",
    }


def test_jan_a_maps_ascend_while_features_descend():
    torch.manual_seed(0)
    jan = JAN(4, 3, adversarial=True)
    fs, ft = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4) + 1
    zs, zt = torch.randn(8, 3), torch.randn(8, 3)
    jan(fs, ft, zs, zt, 0.5).backward()
    plain = JointMMD()
    w = jan.maps[0].weight.detach().clone().requires_grad_()
    layers_s = [fs.detach() @ w.T + jan.maps[0].bias.detach(), zs.softmax(1) @ jan.maps[1].weight.detach().T]
    layers_t = [ft @ w.T + jan.maps[0].bias.detach(), zt.softmax(1) @ jan.maps[1].weight.detach().T]
    plain(layers_s, layers_t).backward()
    assert torch.allclose(jan.maps[0].weight.grad, -w.grad, atol=1e-5)


@pytest.mark.slow
def test_bad_input(tmp_path, demo_small):
    d = demo_small
    base = [
        "finetune",
        "--model",
        "test_resnet",
        "--train",
        str(d / "target_train.parquet"),
        "--test",
        str(d / "target_test.parquet"),
        "--out",
        str(tmp_path / "ft"),
        "--steps",
        "1",
    ]
    assert_user_error(cli(*base, "--adapt", "dann"), "--adapt", "needs --unlabeled")
    assert_user_error(
        cli(*base, "--adapt", "coral", "--unlabeled", str(d / "target_unlabeled.parquet")),
        "--adapt",
        "unknown method 'coral'",
    )
    assert_user_error(
        cli(*base, "--adapt", "mmd", "--unlabeled", str(d / "source.parquet")), "source.parquet", "other classes"
    )
    assert_user_error(cli(*base, "--soft-labels"), "--soft-labels", "needs --train-target")
    assert_user_error(cli(*base, "--train-target", str(d / "source.parquet")), "source.parquet", "other classes")
    assert_user_error(
        cli(*base, "--train-target", str(d / "target_unlabeled.parquet")), "target_unlabeled.parquet", "no labels"
    )
    assert_user_error(
        cli(*base, "--adapt", "mmd", "--unlabeled", str(d / "target_unlabeled.parquet"), "--soft-temperature", "0"),
        "--soft-temperature",
        "outside (0, inf)",
    )
    assert_user_error(
        cli(*base, "--adapt", "mmd", "--unlabeled", str(d / "target_unlabeled.parquet"), "--mmd-kernels", "best"),
        "--mmd-kernels",
        "unknown kernel weighting 'best'",
    )
    assert_user_error(cli(*base, "--lr-schedule", "step"), "--lr-schedule", "unknown schedule 'step'")
    assert_user_error(
        cli(*base, "--train-target", str(d / "target_train.parquet"), "--soft-labels-from", str(d)),
        "--soft-labels-from",
        "--soft-labels",
    )
    assert not (tmp_path / "ft").exists()
    junk = [tmp_path / f"junk{i}.png" for i in range(3)]
    for j in junk:
        j.write_bytes(b"not an image")
    from helpers import tiny_manifest

    unreadable = tiny_manifest(tmp_path / "junk.parquet", [str(j) for j in junk], None)
    assert_user_error(
        cli(*base, "--adapt", "mmd", "--unlabeled", str(unreadable), "--workers", "0", "-q"),
        "junk.parquet",
        "no readable image",
    )
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize(
    "method, extra",
    [
        ("confusion", []),
        ("dann", []),
        ("mmd", ["--mmd-kernels", "equal"]),
        ("jmmd", ["--mmd-estimator", "linear"]),
        ("jan-a", []),
    ],
)
@pytest.mark.slow
def test_every_method_trains_end_to_end_on_real_images(tmp_path, demo_small, method, extra):
    d = demo_small
    out = tmp_path / "ft"
    res = cli(
        "finetune",
        "--model",
        "test_resnet",
        "--train",
        str(d / "target_train.parquet"),
        "--test",
        str(d / "target_test.parquet"),
        "--unlabeled",
        str(d / "target_unlabeled.parquet"),
        "--adapt",
        method,
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--out",
        str(out),
        "-q",
        "--device",
        "cpu",
        *extra,
    )
    assert res.returncode == 0, res.stderr
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["adapt"] == method and 0.0 <= metrics["test_accuracy"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r["lr"]) for r in records)
    assert all(math.isfinite(r["ce"]) and math.isfinite(r["transfer"]) for r in records)  # the terms are logged


@pytest.mark.slow
def test_semi_supervised_run_with_soft_labels_reloads_to_the_same_predictions(tmp_path, demo_small):
    """--train-target + --soft-labels + confusion with the ramp trains; the saved AdaptNet
    (bottleneck in config.json) is rebuilt by load_model and predicts what finetune wrote."""
    import json

    import pyarrow.parquet as pq

    from datl.finetune.evaluate import predict
    from datl.manifests import Manifest
    from datl.neural.checkpoint import load_model

    d = demo_small
    out = tmp_path / "ft"
    res = cli(
        "finetune",
        "--model",
        "test_resnet",
        "--train",
        str(d / "target_train.parquet"),
        "--test",
        str(d / "target_test.parquet"),
        "--unlabeled",
        str(d / "target_unlabeled.parquet"),
        "--adapt",
        "confusion",
        "--train-target",
        str(d / "target_train.parquet"),
        "--soft-labels",
        "--trade-off-ramp",
        "--bottleneck",
        "32",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--out",
        str(out),
        "-q",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert params["soft_labels"] and params["train_target"] and params["trade_off_ramp"]
    lm = load_model(str(out))
    assert isinstance(lm.model, AdaptNet) and lm.config.bottleneck == 32 and lm.config.num_features == 32
    assert lm.features(torch.zeros(2, lm.config.in_chans, *lm.config.image_size)).shape == (2, 32)
    preds = predict(lm.model, lm.config, Manifest(d / "target_test.parquet"), torch.device("cpu"), batch_size=64)
    written = pq.read_table(out / "predictions.parquet").to_pandas().set_index("id")["pred"]
    assert len(preds.ids) == len(written) and all(written[i] == p for i, p in zip(preds.ids, preds.preds))
    # an --adapt run is a checkpoint like any other: curate estimate runs it, finetune continues it
    res = cli(
        "curate",
        "estimate",
        "--model",
        str(out),
        "--target",
        str(d / "target_unlabeled.parquet"),
        "--out",
        str(tmp_path / "prior.parquet"),
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert pq.read_table(tmp_path / "prior.parquet").column("p_target").to_numpy().sum() == pytest.approx(1.0)
    res = cli(
        "finetune",
        "-c",
        str(out),
        "--train",
        str(d / "target_train.parquet"),
        "--test",
        str(d / "target_test.parquet"),
        "--unlabeled",
        str(d / "target_unlabeled.parquet"),
        "--adapt",
        "mmd",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "again"),
        "-q",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert load_model(str(tmp_path / "again")).config.bottleneck == 32  # the checkpoint's bottleneck, kept


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dann", "jan-a"])
def test_adapt_under_torchrun_keeps_the_ranks_in_step(tmp_path, demo_small, method):
    """2 gloo processes: each rank draws its own shard of every manifest; the network and
    the method's own parameters (discriminator, JAN-A maps) are averaged across ranks, which
    fit() verifies at the end (it raises if the ranks' parameters differ)."""
    import os
    import subprocess
    import sys

    from helpers import BIN

    d = demo_small
    out = tmp_path / "ddp"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(BIN / "finetune"),
            "--model",
            "test_resnet",
            "--train",
            str(d / "target_train.parquet"),
            "--test",
            str(d / "target_test.parquet"),
            "--unlabeled",
            str(d / "target_unlabeled.parquet"),
            "--adapt",
            method,
            "--train-target",
            str(d / "target_train.parquet"),
            "--soft-labels",
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--out",
            str(out),
            "-q",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    assert json.loads((out / "metrics.json").read_text())["params"]["adapt"] == method


def test_dan_kernel_weights_solve_the_quadratic_program():
    """beta minimises beta^T A beta over {d^T beta = 1, beta >= 0}: no random feasible point
    does better; with independent kernels it is d_u / A_uu, normalised."""
    from datl.finetune.adapt.mmd import optimal_kernel_weights

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = 5
        r = torch.randn(m, m, generator=g, dtype=torch.float64)
        q = r @ r.T / m
        d = torch.randn(m, generator=g, dtype=torch.float64).abs() * (torch.rand(m, generator=g) > 0.3)
        if not (d > 0).any():
            continue
        beta = optimal_kernel_weights(d, q, eps=1e-3).double()
        assert beta.min() >= 0 and float(beta.sum()) == pytest.approx(1.0)
        a = q + 1e-3 * torch.eye(m, dtype=torch.float64)
        scaled = beta / float(d @ beta)  # back on the constraint d^T beta = 1
        best = float(scaled @ a @ scaled)
        cand = torch.rand(2000, m, generator=g, dtype=torch.float64) * (torch.rand(2000, m, generator=g) > 0.4)
        cand = cand[(cand @ d) > 1e-9]
        cand = cand / (cand @ d).unsqueeze(1)
        assert float(((cand @ a) * cand).sum(1).min()) >= best - 1e-9
    # independent kernels (diagonal Q): beta_u proportional to d_u / Q_uu, none for d_u <= 0
    d, q = torch.tensor([0.4, 0.0, -0.1, 0.2]), torch.diag(torch.tensor([1.0, 1.0, 1.0, 4.0]))
    expect = torch.tensor([0.4 / (1 + 1e-3), 0.0, 0.0, 0.2 / (4 + 1e-3)])
    assert torch.allclose(optimal_kernel_weights(d, q), expect / expect.sum(), atol=1e-6)
    assert torch.allclose(optimal_kernel_weights(-torch.ones(3), torch.eye(3)), torch.full((3,), 1 / 3))


def test_learned_kernel_weights_favour_the_kernels_that_see_the_shift():
    """A shift in scale only shows at some bandwidths: DAN's beta moves weight to them, and
    the learned MK-MMD separates the distributions at least as well relative to its spread."""
    torch.manual_seed(0)
    mmd = MultiKernelMMD(estimator="linear", kernels="learned", momentum=0.9)
    for _ in range(60):
        mmd(torch.randn(128, 4), torch.randn(128, 4) * 1.5)
    assert float(mmd.beta.sum()) == pytest.approx(1.0)
    assert not torch.allclose(mmd.beta, torch.full((5,), 0.2), atol=0.05)
    from datl.finetune.adapt.mmd import gaussian_kernel_stack, linear_h

    n = 1000  # fresh samples: the test power mean/sd of the linear-time terms, learned vs equal weights
    h = torch.cat(
        [linear_h(gaussian_kernel_stack(torch.randn(n, 4), torch.randn(n, 4) * 1.5), n).double() for _ in range(20)]
    )

    def power(beta):
        v = h @ beta.double()
        return float(v.mean() / v.std())

    assert power(mmd.beta) > 1.05 * power(torch.full((5,), 0.2))


@pytest.mark.slow
def test_resumed_adapt_run_equals_the_uninterrupted_one(tmp_path, demo_small):
    """--stop-after-steps then --resume: the discriminator, the soft-label table and the
    unlabeled / labeled-target batches continue where they stopped, so the weights and
    the losses equal those of a run that never stopped."""
    import json

    from safetensors.torch import load_file

    d = demo_small
    args = [
        "--model",
        "test_resnet",
        "--train",
        str(d / "target_train.parquet"),
        "--test",
        str(d / "target_test.parquet"),
        "--unlabeled",
        str(d / "target_unlabeled.parquet"),
        "--adapt",
        "dann",
        "--train-target",
        str(d / "target_train.parquet"),
        "--soft-labels",
        "--bottleneck",
        "16",
        "--steps",
        "8",
        "--log-every",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "-q",
        "--device",
        "cpu",
    ]
    assert cli("finetune", *args, "--out", str(tmp_path / "a")).returncode == 0
    res = cli("finetune", *args, "--out", str(tmp_path / "b"), "--stop-after-steps", "5")
    assert res.returncode == 0, res.stderr
    res = cli("finetune", *args, "--out", str(tmp_path / "b"), "--resume")
    assert res.returncode == 0, res.stderr

    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert len(losses(tmp_path / "b")) == 8
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-4)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_the_registry_builds_every_method_from_a_config_and_none_brings_its_own_schedule():
    """--adapt's choices are the registry's names; each method builds itself from the run's
    config and returns a scalar; the schedule and ramp are the run's (FinetuneConfig)."""
    from datl.finetune import adapt
    from datl.finetune.adapt.registry import discover
    from datl.finetune.config import FinetuneConfig

    assert adapt.names() == ("none", "confusion", "dann", "jmmd", "jan-a", "mmd")  # file order
    assert sorted(adapt.declared()) == sorted(discover())  # the text scan names exactly what registers
    cfg = FinetuneConfig(train="t", out="o", test="x", mmd_estimator="linear", mmd_kernels="equal")
    g = torch.Generator().manual_seed(0)
    fs, ft, zs, zt = (torch.randn(8, d, generator=g) for d in (16, 16, 3, 3))
    for name in adapt.names()[1:]:
        kind = adapt.get(name)
        method = kind.build(16, 3, cfg)
        loss = method(fs, ft, zs, zt, 0.5)
        assert loss.ndim == 0 and torch.isfinite(loss), name
        assert not hasattr(kind, "lr_schedule"), name  # the recipe is the run's, the same for every method
    assert adapt.get("none") is None
    assert adapt.get("jan-a").build(16, 3, cfg).maps is not None and adapt.get("jmmd").build(16, 3, cfg).maps is None
    assert adapt.get("mmd").build(16, 3, cfg).mmd.estimator == "linear"


def _adversarial_grads(method, trade_off: float, ramp: bool, progress: float):
    """Gradients of one TwoDomainStep on (the network, the method's own parameters)."""
    torch.manual_seed(0)
    net = AdaptNet(create_model("test_resnet", 3, 1), 3, 16).eval()
    x, xt, y = torch.randn(6, 1, 32, 32), torch.randn(6, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    method.eval()  # no dropout: one deterministic function
    step = TwoDomainStep(method, iter([xt]), trade_off, "cpu", ramp=ramp)
    method.zero_grad()
    step(net, x, y, progress).backward()
    return (
        [p.grad.clone() for p in net.bottleneck.parameters()],
        [p.grad.clone() for p in method.parameters() if p.grad is not None],
    )


@pytest.mark.parametrize("name", ["dann", "confusion", "jan-a"])
def test_the_adversary_trains_at_full_strength_whatever_the_trade_off_and_ramp(name):
    """The discriminator's (JAN-A maps') gradient is the same at trade-off 1 without the ramp and at
    trade-off 0.3 early in the ramp; the network's is scaled by trade-off x lambda_p; so DANN's
    features get lambda_p once, never squared."""
    from datl.finetune import adapt
    from datl.finetune.config import FinetuneConfig

    cfg = FinetuneConfig(train="t", out="o", test="x")

    def grads(trade_off, ramp, progress):
        torch.manual_seed(1)
        method = adapt.get(name).build(16, 3, cfg)
        return _adversarial_grads(method, trade_off, ramp, progress)

    net_full, adv_full = grads(1.0, False, 0.1)
    net_ramp, adv_ramp = grads(0.3, True, 0.1)
    assert adv_full and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(adv_full, adv_ramp))
    # the network: cross-entropy (same in both) + w x transfer; the difference isolates w
    net_zero, _ = grads(0.0, False, 0.1)
    w = 0.3 * grl_lambda(0.1)
    for full, ramped, zero in zip(net_full, net_ramp, net_zero):
        assert torch.allclose(ramped - zero, w * (full - zero), atol=1e-5)


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, 0.25 * torch.arange(3.0).expand(4, 3))


def test_jmmd_softmax_layer_has_jans_fixed_bandwidth_brute_force():
    """JMMD^2 (unbiased) with the feature layer's five bandwidths from the batch and the softmax
    layer's one Gaussian exp(-d^2 / 1.68), against a double loop over pairs."""
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(5, 3, generator=g), torch.randn(6, 3, generator=g) + 0.5
    ps, pt = torch.randn(5, 4, generator=g).softmax(1), torch.randn(6, 4, generator=g).softmax(1)
    got = float(JointMMD()([fs, ps], [ft, pt]))
    f, p = torch.cat([fs, ft]).double(), torch.cat([ps, pt]).double()
    n = len(f)
    d2f = [[float(((f[i] - f[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    base = sum(d2f[i][j] for i in range(n) for j in range(n)) / (n * n - n)

    def k(i, j):
        kf = sum(math.exp(-d2f[i][j] / (m * base)) for m in (0.25, 0.5, 1.0, 2.0, 4.0))
        return kf * math.exp(-float(((p[i] - p[j]) ** 2).sum()) / SOFTMAX_BANDWIDTH)

    S, T = range(5), range(5, 11)
    expect = (
        sum(k(i, j) for i in S for j in S if i != j) / 20
        + sum(k(i, j) for i in T for j in T if i != j) / 30
        - 2 * sum(k(i, j) for i in S for j in T) / 30
    )
    assert got == pytest.approx(expect, rel=1e-4)
    # the softmax bandwidth does not follow the batch: scaling the softmax gaps changes the kernel
    assert SOFTMAX_BANDWIDTH == 1.68


@pytest.mark.slow
def test_soft_labels_from_a_trained_model_are_its_class_means_and_stay_fixed(tmp_path, demo_small):
    """--soft-labels-from RUN_DIR: the table is the teacher's per-class mean softmax(z / T) over
    --train, computed once; training does not move it."""
    import pyarrow.parquet as pq

    from datl.manifests import Manifest
    from datl.neural.checkpoint import ModelConfig, load_model, save_run
    from datl.neural.engine import dist
    from datl.neural.engine.inference import run_model

    d = demo_small
    src = Manifest(d / "source.parquet")
    torch.manual_seed(0)  # a teacher of the source's classes, with a peaked softmax so classes differ clearly
    teacher = create_model("test_resnet", len(src.classes), 1)
    with torch.no_grad():
        teacher.get_classifier().weight.mul_(50)
    random_model = tmp_path / "teacher"
    save_run(
        random_model,
        teacher,
        ModelConfig(
            arch="test_resnet",
            classes=src.classes,
            image_size=[28, 28],
            in_chans=1,
            mean=[0.5],
            std=[0.5],
            num_features=teacher.num_features,
        ),
    )
    out = tmp_path / "ft"
    res = cli(
        "finetune",
        "--model",
        "test_resnet",
        "--train",
        str(d / "source.parquet"),
        "--test",
        str(d / "source_calibration.parquet"),
        "--train-target",
        str(d / "source_calibration.parquet"),
        "--soft-labels",
        "--soft-labels-from",
        str(random_model),
        "--soft-temperature",
        "3",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--out",
        str(out),
        "-q",
        "--device",
        "cpu",
        "--save-every",
        "1",
        "--stop-after-steps",
        "2",
    )
    assert res.returncode == 0, res.stderr
    state = torch.load(out / "state.pt", weights_only=False)
    table = next(v for k, v in _flatten(state) if k.endswith("soft.table"))
    lm = load_model(str(random_model))
    rows, logits, _ = run_model(lm, src, dist.Dist(0, 1, 0, torch.device("cpu")), "logits", 256, 0, False)
    labels = torch.as_tensor(pq.read_table(d / "source.parquet", columns=["label"]).column(0).to_numpy()[rows])
    expect = soft_labels(torch.as_tensor(logits), labels.long(), len(src.classes), 3.0)
    assert torch.allclose(table, expect, atol=1e-5)


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, obj
