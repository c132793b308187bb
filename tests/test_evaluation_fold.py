"""The trainer scores a batch-norm-folded copy of the model (issue 20): the same metrics as the
unfolded model, and the folded copy never reaches a checkpoint."""

import torch
from torch import nn

from conftest import tiny_run_overrides
from longtail.engine.config import build_config
from longtail.engine.rundir import checkpoint as ckpt
from longtail.engine.training.scoring import evaluate_loader
from longtail.engine.training.trainer import Trainer


def _trained(tmp_path, root, precision):
    config, label = build_config(overrides=tiny_run_overrides(root, tmp_path / "runs", epochs=1)
                                 + [f"train.precision={precision}"])
    trainer = Trainer(config, label)
    trainer.fit()
    return trainer


def test_folded_evaluation_gives_the_unfolded_model_metrics(tmp_path, tiny_idx_root):
    trainer = _trained(tmp_path, tiny_idx_root, "fp32")
    try:
        model = trainer.model
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the fold has work to do
        scored = trainer._evaluation_model()
        assert scored is not model and not any(isinstance(m, nn.BatchNorm2d) for m in scored.modules())
        loader = trainer.data.eval_loaders["test"]
        # The reference: torch's own eval-mode batch norm, the model as trained, no fold.
        reference = evaluate_loader(model, loader, trainer.class_counts, trainer.device, "fp32").compute()
        folded = trainer.evaluate("test")
        assert folded["per_class_accuracy"] == reference["per_class_accuracy"]
        assert folded["accuracy"] == reference["accuracy"]
        # The checkpoint written by fit() holds the trained model with its batch norms, not the copy.
        saved = ckpt.load_run_checkpoint(ckpt.run_checkpoint(trainer.run_dir))["model"]
        assert saved.keys() == model.state_dict().keys()
        assert any(key.endswith("running_mean") for key in saved)
    finally:
        trainer.close()


def test_folded_logits_within_bf16_rounding(tmp_path, tiny_idx_root):
    trainer = _trained(tmp_path, tiny_idx_root, "bf16")
    try:
        model = trainer.model.eval()
        scored = trainer._evaluation_model()
        images, _ = next(iter(trainer.data.eval_loaders["test"]))
        with torch.no_grad():
            reference = model.float()(images.float())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = scored(images).float()
        # bf16 keeps 8 significant bits; a few per cent of the logit scale over the network's depth
        assert (got - reference).abs().max() <= 0.05 * reference.abs().max()
    finally:
        trainer.close()
