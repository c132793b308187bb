"""model.compile (issue 20): a compiled model computes what the eager one does (within bf16 rounding),
``auto`` compiles only when the run repays the compile time, and the choice survives a resume."""

import os
import time

import pytest
import torch

from conftest import tiny_run_overrides
from longtail.engine.config import ConfigError, build_config
from longtail.engine.rundir import checkpoint as ckpt
from longtail.engine.runtime import compilation
from longtail.engine.training.trainer import Trainer
from longtail.models import create_model


def test_compile_pays_is_the_saved_time_against_the_cost():
    # 0.1 s per step at a 1.06x speedup saves 0.1 * (1 - 1/1.06) = 5.660 ms per step, so 261 s of
    # compiling is repaid after 261 / 0.005660 = 46,110 steps.
    assert not compilation.compile_pays(46_000, 0.1, 261.0)
    assert compilation.compile_pays(46_200, 0.1, 261.0)
    assert compilation.compile_pays(1_000, 1.0, 10.0, speedup=2.0)  # saves 500 s
    assert not compilation.compile_pays(10, 1.0, 10.0, speedup=2.0)  # saves 5 s


def test_compile_cost_grows_with_the_model_and_never_falls_below_resnet32():
    resnet32 = create_model(name="resnet32", num_classes=10, in_channels=3)
    resnet56 = create_model(name="resnet56", num_classes=10, in_channels=3)
    small = create_model(name="small_cnn", num_classes=10, in_channels=1)
    assert compilation.compile_cost_seconds(resnet32) == compilation.COMPILE_SECONDS
    assert compilation.compile_cost_seconds(small) == compilation.COMPILE_SECONDS
    assert compilation.compile_cost_seconds(resnet56) > 1.5 * compilation.COMPILE_SECONDS


def test_compile_setting_accepts_yaml_booleans_and_refuses_other_words():
    assert build_config(overrides=["model.compile=true"])[0].model.compile == "true"
    assert build_config(overrides=["model.compile=false"])[0].model.compile == "false"
    assert build_config()[0].model.compile == "auto"
    with pytest.raises(ConfigError, match="model.compile"):
        build_config(overrides=["model.compile=sometimes"])


def test_shared_cache_is_the_users_choice_else_a_per_user_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compilation.use_shared_cache() == tmp_path / "mine"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.use_shared_cache() == tmp_path / "xdg" / "longtail" / "inductor"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "longtail" / "inductor")


def test_a_short_auto_run_stays_eager_and_the_checkpoint_keeps_the_decision(tmp_path, tiny_idx_root):
    config, label = build_config(overrides=tiny_run_overrides(tiny_idx_root, tmp_path / "runs", epochs=2))
    trainer = Trainer(config, label)
    try:
        trainer.fit()
        assert trainer.state.compiled is False and trainer.train_model is trainer.model
        state = ckpt.load_run_checkpoint(ckpt.run_checkpoint(trainer.run_dir))
        assert state["compiled"] is False
    finally:
        trainer.close()


# Compiling even this small CNN took 205 s on the shared 2-core machine (load ~14): too slow for the
# suite that runs on every change. Opt in with LONGTAIL_TEST_COMPILE=1 (a developer's check, or a GPU CI job).
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LONGTAIL_TEST_COMPILE") != "1",
                    reason="torch.compile takes minutes on a 2-core CPU; set LONGTAIL_TEST_COMPILE=1")
def test_compiled_and_eager_agree_within_bf16_rounding():
    """A fixed batch through a small CNN, eager and torch.compile'd, both under bf16 autocast. "Within
    bf16 rounding" is measured, not assumed: an eager float32 step is the reference, and the compiled
    result may differ from the eager bf16 one by at most twice the eager bf16 error (each is a bf16
    evaluation of the same function, so by the triangle inequality |c - e| <= |c - f| + |e - f|)."""
    torch.manual_seed(0)
    model = create_model(name="small_cnn", num_classes=10, in_channels=1, width=8)
    images, targets = torch.randn(16, 1, 28, 28), torch.arange(16) % 10

    def step(module, bf16=True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = module(images).float()
        torch.nn.functional.cross_entropy(logits, targets).backward()
        return logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    exact_logits, exact_grads = step(model, bf16=False)
    eager_logits, eager_grads = step(model)
    started = time.perf_counter()
    compiled_logits, compiled_grads = step(torch.compile(model))
    print(f"compile + first step: {time.perf_counter() - started:.1f} s")
    for compiled, eager, exact in ((compiled_logits, eager_logits, exact_logits),
                                   (compiled_grads, eager_grads, exact_grads)):
        bf16_error = (eager - exact).norm()
        assert 0 < bf16_error < 0.25 * exact.norm()  # bf16 really was used (gradients: ~11 % off float32 here)
        assert (compiled - eager).norm() <= 2 * bf16_error + 1e-6 * exact.norm()
