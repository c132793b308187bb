"""fold_batchnorm: the folded copy computes the eval-mode model's function; the model is untouched."""

import torch
from torch import nn

from longtail.models import create_model
from longtail.models.fold import fold_batchnorm


def _resnet_with_statistics(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name="resnet32", num_classes=5, in_channels=3).to(dtype)
    with torch.no_grad():  # non-trivial statistics and affine parameters, so the fold has work to do
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def test_folded_resnet_equals_eval_model_in_float64():
    model = _resnet_with_statistics()
    folded, described = fold_batchnorm(model)
    assert described == "folded 31 of 31 batch norms into their convolutions"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model.eval()(x)  # torch's own batch norm in eval mode: the definition
        assert torch.allclose(folded(x), expected, rtol=1e-10, atol=1e-10)


def test_model_is_not_changed():
    model = _resnet_with_statistics().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_autocast_agrees_within_bf16_rounding():
    model = _resnet_with_statistics(torch.float32).to(memory_format=torch.channels_last)
    folded, _ = fold_batchnorm(model)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = folded(x).float()
    # bf16 keeps 8 significant bits; 31 layers of rounding stay within a few per cent of the logit scale
    assert (got - reference).abs().max() <= 0.05 * reference.abs().max()


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # torch.fx cannot trace a branch on a tensor's value
            return self.bn(self.conv(x))
        return self.bn(self.conv(-x))


def test_untraceable_model_comes_back_unfolded_and_says_why():
    model = _DataDependent()
    folded, described = fold_batchnorm(model)
    assert described.startswith("not folded: torch.fx could not trace the model")
    assert not folded.training and any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(folded(x), model.eval()(x))


def test_model_without_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    folded, described = fold_batchnorm(model)
    assert described == "no batch norm to fold" and folded is not model
