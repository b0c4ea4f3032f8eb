"""Checkpoints: run folders and timm models with local ImageNet weights (datl.neural.checkpoint)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from datl.core.errors import UserError
from datl.neural.checkpoint import ModelConfig, load_foreign_weights, load_model, save_run
from datl.neural.modeling import create_model

from helpers import mobilenet_weights


def test_timm_mobilenet_with_torchvision_weights_computes_what_torchvision_computes():
    w = mobilenet_weights()
    lm = load_model("timm:mobilenetv2_100", weights=w)
    assert lm.config.num_classes == 1000 and lm.config.image_size == [224, 224]
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(w, weights_only=True))
    tv.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(lm.logits(x), tv(x), atol=1e-5)
        feats = lm.features(x)
    assert feats.shape == (2, 1280)


def test_weights_of_another_architecture_are_refused():
    model = create_model("resnet18", 10, 3)
    with pytest.raises(UserError, match="does not fit architecture"):
        load_foreign_weights(model, mobilenet_weights(), keep_head=False)


def test_run_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    m = create_model("test_resnet", 5, 1).eval()
    save_run(
        tmp_path,
        m,
        ModelConfig(
            arch="test_resnet",
            classes=list("abcde"),
            image_size=[28, 28],
            in_chans=1,
            mean=[0.5],
            std=[0.5],
            num_features=m.num_features,
        ),
    )
    lm = load_model(str(tmp_path))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(lm.logits(x), m(x))
        assert lm.features(x).shape == (3, m.num_features)
    assert lm.config.classes == list("abcde")
