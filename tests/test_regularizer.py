"""The regularization branch (model/regularizer.py) and its hook in the fine-tune stage."""

import json

import pytest
import torch
import torch.nn.functional as F

from model.config import TrainConfig, preset
from model.regularizer import CPCBranch, ReconBranch, info_nce, make_branch
from model.unet import UNet


def naive_info_nce(pred, target, temperature):
    """Loop reference: -log softmax over all targets of the positive, averaged over predictions."""
    total = 0.0
    n = pred.shape[0]
    for i in range(n):
        p = pred[i] / pred[i].norm()
        scores = [float(p @ (target[j] / target[j].norm())) / temperature for j in range(n)]
        m = max(scores)
        lse = m + torch.log(torch.tensor(sum(torch.exp(torch.tensor(s - m)).item() for s in scores))).item()
        total += lse - scores[i]
    return total / n


def naive_cpc(branch: CPCBranch, bottleneck):
    """CPC loss by explicit loops over offsets and positions."""
    z, c = branch.latents(bottleneck)
    b, d, h, w = z.shape
    losses = []
    for k in range(1, branch.steps_ahead + 1):
        if k >= h:
            break
        preds, targets = [], []
        for bi in range(b):
            for i in range(h - k):
                for j in range(w):
                    preds.append(branch.predict[k - 1](c[bi : bi + 1, :, i : i + 1, j : j + 1]).reshape(d))
                    targets.append(z[bi, :, i + k, j])
        losses.append(naive_info_nce(torch.stack(preds), torch.stack(targets), branch.temperature))
    return sum(losses) / len(losses)


def test_info_nce_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    for t in (0.1, 0.5, 1.0):
        assert float(info_nce(pred, target, t)) == pytest.approx(naive_info_nce(pred, target, t), rel=1e-4, abs=1e-5)


def test_info_nce_low_for_matching_pairs_high_for_shuffled():
    z = F.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    assert float(info_nce(z, z, 0.1)) < float(info_nce(z, z.roll(1, 0), 0.1))


def test_cpc_loss_matches_loop_reference_on_tiny_input():
    torch.manual_seed(0)
    branch = CPCBranch(6, dim=4, steps_ahead=2, temperature=0.2)
    bottleneck = torch.randn(2, 6, 4, 3)
    with torch.no_grad():
        assert float(branch(bottleneck)) == pytest.approx(float(naive_cpc(branch, bottleneck)), rel=1e-4)


def test_cpc_context_is_causal_over_rows():
    torch.manual_seed(0)
    branch = CPCBranch(4, dim=4, steps_ahead=1)
    z = torch.randn(1, 4, 6, 5, requires_grad=True)
    c = branch.context(z)
    c[:, :, 2].sum().backward()
    assert z.grad[:, :, 3:].abs().sum() == 0  # row 2 of the context never sees rows 3..5
    assert z.grad[:, :, :3].abs().sum() > 0


def test_shapes():
    unet = UNet(1, 3, widths=(8, 16, 32))
    x = torch.randn(3, 1, 32, 32)
    _, feats = unet(x, return_features=True)
    assert feats["bottleneck"].shape == (3, 64, 4, 4)
    cpc = CPCBranch(64, dim=16, steps_ahead=2)
    z, c = cpc.latents(feats["bottleneck"])
    assert z.shape == c.shape == (3, 16, 4, 4)
    assert cpc(feats["bottleneck"]).shape == ()
    recon = ReconBranch(64, depth=3, dim=16)
    assert recon.net(feats["bottleneck"]).shape == (3, 1, 32, 32)
    assert recon(feats["bottleneck"], x).shape == ()
    assert make_branch("none", 64, 3) is None


@pytest.mark.parametrize("name", ["cpc", "recon"])
def test_branch_loss_alone_sends_gradient_into_the_encoder(name):
    torch.manual_seed(0)
    unet = UNet(1, 3, widths=(8, 16, 32))
    branch = make_branch(name, unet.bottleneck_channels, unet.depth, dim=16)
    x = torch.randn(4, 1, 32, 32)
    _, bottleneck = unet.encode(x)
    loss = branch(bottleneck, x)
    loss.backward()
    for block in unet.encoder:
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in unet.seg_head.parameters())


def test_cpc_targets_are_not_detached():
    """Gradient through the targets alone (predictor frozen at its output) still reaches the latent map."""
    torch.manual_seed(0)
    branch = CPCBranch(6, dim=4, steps_ahead=1)
    bottleneck = torch.randn(2, 6, 4, 4, requires_grad=True)
    branch(bottleneck).backward()
    # the last row is only ever a target (no prediction is made from it): it still gets gradient
    assert bottleneck.grad[:, :, -1].abs().sum() > 0


def test_config_rejects_unknown_branch_and_bad_weight():
    with pytest.raises(ValueError, match="branch must be one of"):
        TrainConfig(branch="vae")
    with pytest.raises(ValueError, match="branch_weight"):
        TrainConfig(branch="cpc", branch_weight=-1.0)
    assert TrainConfig().branch == "none"
    assert TrainConfig.from_dict({"branch": "recon"}).branch == "recon"


def test_quick_run_with_cpc_branch_writes_a_model(tmp_path):
    from model.train import train
    from tests.test_model_train import sparse_dataset

    images, labels = sparse_dataset(tmp_path / "data", painted=2)
    out = tmp_path / "model"
    cfg = preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(out),
        device="cpu",
        global_stage=False,
        local_stage=False,
        branch="cpc",
        branch_weight=0.5,
        branch_unlabeled_batch=4,
        threads=1,
    )
    metrics = train(cfg)
    assert (out / "model.pt").is_file()
    assert json.loads((out / "config.json").read_text())["branch"] == "cpc"
    assert metrics["stages"]["finetune"]["final_loss"] > 0
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["branch"] is not None  # the branch's state is in the checkpoint (resumes keep it)
