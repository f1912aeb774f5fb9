import torch

from trainlab import models
from trainlab.config import model_table
from trainlab.models.cnn import CNN

INFO = {"task": "classification", "input_shape": [1, 8, 8], "num_classes": 10, "class_names": list("0123456789")}


def test_mlp_and_cnn_output_shapes():
    x = torch.randn(5, 1, 8, 8)
    for kind in ("mlp", "cnn"):
        for norm in ("batch", "layer", "none"):
            m = models.build(model_table(kind=kind, norm=norm, dropout=0.1), INFO)
            assert m(x).shape == (5, 10)
    reg = models.build(model_table(kind="mlp"), {**INFO, "task": "regression", "input_shape": [7]})
    assert reg(torch.randn(3, 7)).shape == (3, 1)


def test_residual_blocks_start_as_identity_and_downsample():
    m = CNN(1, 10, [8, 16], blocks=2)
    assert all(float(b.norm2.weight.detach().abs().sum()) == 0 for b in m.stages)
    h = m.stages(m.stem(torch.randn(2, 1, 8, 8)))
    assert h.shape == (2, 16, 4, 4)  # one stride-2 stage


def test_cnn_on_tabular_data_is_a_user_error():
    import pytest

    from trainlab.errors import UserError

    with pytest.raises(UserError, match="needs images"):
        models.build(model_table(kind="cnn"), {**INFO, "input_shape": [30]})


def test_initial_predictions_are_near_uniform():
    torch.manual_seed(0)
    m = models.build(model_table(kind="mlp", hidden=[64]), INFO).eval()
    with torch.no_grad():
        p = m(torch.randn(64, 1, 8, 8)).softmax(-1)
    assert float(p.max()) < 0.3
