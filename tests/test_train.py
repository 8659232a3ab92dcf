"""``probunet train``: recipes, checkpoints with exact resume, curves, and two-process training."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from napari_probunet import cli
from napari_probunet.errors import UserError
from napari_probunet.model.modelfile import file_sha256, load_model, read_metadata
from napari_probunet.training.schedules import beta_at, lr_at
from napari_probunet.training.settings import TrainConfig, load_recipe
from napari_probunet.training.train import train

RECIPE = """
[model]
channels = [4, 8]
convs_per_block = 1
latent_dim = 2
fcomb_channels = 8
input_size = 32

[train]
data = "synthetic:lesions?n=20&seed=1&size=32"
val_data = "synthetic:lesions?n=3&seed=2&size=32"
steps = 6
batch_size = 2
lr = 1e-3
warmup_steps = 2
amp = "none"
channels_last = false
log_every = 2
val_every = 3
checkpoint_every = 3
threads = 1
"""


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return path


def _weights(path):
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def test_train_writes_models_logs_and_curves(recipe, tmp_path):
    model_cfg, cfg = load_recipe(recipe)
    summary = train(model_cfg, cfg, tmp_path / "run", progress=False,
                    export_to=str(tmp_path / "exported.safetensors"))
    run = tmp_path / "run"
    for name in ("checkpoint.safetensors", "best.safetensors", "last.safetensors", "log.csv",
                 "curves.png", "config.json"):
        assert (run / name).exists(), name
    assert summary["steps"] == 6 and 0 <= summary["best_val_ged16"] <= 2
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,lr,seconds,loss,ce,kl") and "val_ged16" in log[0]
    model = load_model(tmp_path / "exported.safetensors")
    assert model.config.channels == (4, 8)
    assert model.metadata["provenance"]["steps"] in (3, 6)
    assert "val_ged16" in model.metadata["provenance"]["validation"]


def test_resume_is_exact(recipe, tmp_path):
    model_cfg, cfg = load_recipe(recipe)
    train(model_cfg, cfg, tmp_path / "straight", progress=False)
    first = train(model_cfg, cfg, tmp_path / "resumed", progress=False, stop_at=4)  # interrupted
    assert first["steps"] == 4
    summary = train(model_cfg, cfg, tmp_path / "resumed", progress=False)
    assert summary["steps"] == 6
    a = _weights(tmp_path / "straight" / "last.safetensors")
    b = _weights(tmp_path / "resumed" / "last.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_resume_with_changed_settings_says_what_changed(recipe, tmp_path, capsys):
    model_cfg, cfg = load_recipe(recipe)
    train(model_cfg, cfg, tmp_path / "run", progress=False, stop_at=2)
    capsys.readouterr()
    longer = replace(cfg, steps=8, beta_hold_steps=5)
    summary = train(model_cfg, longer, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert summary["steps"] == 8
    assert "resuming from step 2" in err
    assert f"beta_hold_steps: {cfg.beta_hold_steps!r} -> 5" in err
    assert f"steps: {cfg.steps!r} -> 8" in err
    assert "lr:" not in err  # unchanged settings are not listed
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train_config"]
    assert recorded["beta_hold_steps"] == 5  # the new leg's settings are the recorded ones


@pytest.mark.parametrize("name", ["steps", "batch_size", "log_every", "val_every", "checkpoint_every"])
def test_counts_below_one_are_refused_with_the_setting_named(recipe, tmp_path, name):
    model_cfg, cfg = load_recipe(recipe)
    with pytest.raises(UserError, match=f"{name} must be at least 1 \\(got 0\\)"):
        train(model_cfg, replace(cfg, **{name: 0}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_resuming_with_another_architecture_is_refused_with_a_way_out(recipe, tmp_path):
    model_cfg, cfg = load_recipe(recipe)
    train(model_cfg, replace(cfg, steps=2), tmp_path / "run", progress=False)
    wider = replace(model_cfg, channels=tuple(2 * c for c in model_cfg.channels))
    with pytest.raises(UserError, match="another architecture.*size mismatch.*--no-resume"):
        train(wider, replace(cfg, steps=3), tmp_path / "run", progress=False)
    summary = train(wider, replace(cfg, steps=3), tmp_path / "run", progress=False, resume=False)
    assert summary["steps"] == 3


SHIPPED_RECIPES = sorted((Path(__file__).resolve().parents[1] / "napari_probunet" / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED_RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_load_and_train_two_steps(path, tmp_path):
    """Every committed recipe parses, its schedule fits in its steps, and it trains (2 steps)."""
    model_cfg, cfg = load_recipe(path)
    assert cfg.beta_hold_steps + cfg.beta_warmup_steps < cfg.steps
    assert all(0 < m < 1 for m in cfg.lr_milestones)
    if not cfg.data.startswith("synthetic:"):
        data_dir = Path(cfg.data.split("#")[0])
        if not data_dir.is_absolute():
            data_dir = Path(__file__).resolve().parents[1] / data_dir
        if not data_dir.exists():
            pytest.skip(f"{data_dir} not present")
        cfg = replace(cfg, data=str(data_dir) + cfg.data[len(cfg.data.split("#")[0]):], val_data="")
    short = replace(cfg, steps=2, val_data="", log_every=1, checkpoint_every=2, threads=1)
    summary = train(model_cfg, short, tmp_path / path.stem, progress=False)
    assert summary["steps"] == 2
    assert load_model(tmp_path / path.stem / "last.safetensors").config.num_classes == model_cfg.num_classes


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, steps=100, warmup_steps=10, lr_milestones=[0.5, 0.8], lr_gamma=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(20, cfg) == 1.0
    assert lr_at(60, cfg) == pytest.approx(0.1)
    assert lr_at(90, cfg) == pytest.approx(0.01)


def test_kl_warmup_schedule():
    cfg = TrainConfig(beta_warmup_steps=100, beta_start=0.2)
    assert beta_at(0, cfg, 1.0) == pytest.approx(0.2)
    assert beta_at(50, cfg, 1.0) == pytest.approx(0.6)
    assert beta_at(50, cfg, 2.0) == pytest.approx(1.2)
    assert beta_at(100, cfg, 1.0) == 1.0 and beta_at(5000, cfg, 1.0) == 1.0
    assert beta_at(0, TrainConfig(), 1.0) == 1.0  # off by default: the original's fixed beta
    held = TrainConfig(beta_hold_steps=10, beta_warmup_steps=10, beta_start=0.0)
    assert [beta_at(s, held, 1.0) for s in (0, 9, 10, 15, 20)] == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert beta_at(3, TrainConfig(beta_hold_steps=5, beta_start=0.1), 1.0) == pytest.approx(0.1)
    assert beta_at(5, TrainConfig(beta_hold_steps=5, beta_start=0.1), 1.0) == 1.0


def test_kl_warmup_is_logged_and_checked(recipe, tmp_path):
    model_cfg, cfg = load_recipe(recipe)
    cfg.beta_warmup_steps, cfg.beta_start = 4, 0.0
    train(model_cfg, cfg, tmp_path / "warm", progress=False)
    with open(tmp_path / "warm" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    betas = [float(r["beta"]) for r in rows]
    assert betas == sorted(betas) and betas[0] < 1.0 and betas[-1] == 1.0
    cfg.beta_start = 1.5
    with pytest.raises(UserError, match="beta_start"):
        train(model_cfg, cfg, tmp_path / "bad", progress=False)


def test_posterior_init_std_starts_q_informative(recipe, tmp_path):
    model_cfg, cfg = load_recipe(recipe)
    cfg.steps, cfg.lr = 1, 1e-12  # one negligible step: the weights stay as initialised
    means = []
    for std in (0.0, 0.5):
        cfg.posterior_init_std = std
        train(model_cfg, cfg, tmp_path / f"init{std}", progress=False)
        model = load_model(tmp_path / f"init{std}" / "last.safetensors")
        x = torch.rand(4, 1, 32, 32)
        y = torch.randint(0, 2, (4, 32, 32))
        with torch.no_grad():
            mu, _ = model.posterior_params(x, y)
        means.append(float(mu.abs().mean()))
    assert means[0] < 1e-2 < means[1]  # default: q starts near N(0, I); larger init: informative


def test_bad_recipes_are_explained(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstesp = 3\n")
    with pytest.raises(UserError, match="unknown \\[train\\] keys"):
        load_recipe(bad)
    bad.write_text("[modle]\n")
    with pytest.raises(UserError, match="unknown tables"):
        load_recipe(bad)
    bad.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_recipe(bad)
    assert cli.main(["train", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path)]) == 2


def test_cli_flags_override_the_recipe(recipe, tmp_path, capsys):
    code = cli.main(["train", "--config", str(recipe), "--out", str(tmp_path / "cli"), "--steps", "2",
                     "--val-every", "2", "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2


def test_two_processes_end_with_identical_weights(recipe, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: the launcher binds its rendezvous store to a free port itself and keeps it
    # (picking a free port here and handing it over would race with other programs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "napari_probunet.cli",
           "train", "--config", str(recipe), "--out", str(tmp_path / "ddp"), "--steps", "4",
           "--device", "cpu", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["steps"] == 4
    checksums = summary["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert (tmp_path / "ddp" / "checkpoint.safetensors").exists()


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, recipe, tmp_path, capsys):
    """amp = "auto": bf16 on a CPU with native bf16, float32 on one without (AVX2 only, where
    emulated bf16 trains ten times slower); the log says which and why."""
    from napari_probunet import device
    from napari_probunet.training.precision import amp_context

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    assert device.auto_precision("cpu")[0] == "none"
    assert amp_context("auto", "cpu")[1] == "none"
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    assert device.auto_precision("cpu")[0] == "bf16"
    assert amp_context("auto", "cpu")[1] == "bf16"
    assert amp_context("none", "cpu")[1] == "none"  # an explicit choice stands
    with pytest.raises(UserError, match="unknown amp"):
        amp_context("fp8", "cpu")
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    model_cfg, cfg = load_recipe(recipe)
    train(model_cfg, replace(cfg, amp="auto", steps=1, val_data=""), tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "precision: float32 on cpu (amp = 'auto': the CPU has no native bfloat16" in err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["amp"] == "none"


def test_cpu_bf16_probe_answers_on_this_machine():
    from napari_probunet.device import cpu_bf16_native

    assert cpu_bf16_native() in (True, False)


def test_a_deterministic_unet_trains_without_kl_and_samples_one_map(recipe, tmp_path):
    model_cfg, cfg = load_recipe(recipe)
    model_cfg = replace(model_cfg, deterministic=True)
    train(model_cfg, replace(cfg, val_data=""), tmp_path / "unet", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "unet" / "log.csv")))
    assert all(float(r["kl"]) == 0.0 for r in rows)
    model = load_model(tmp_path / "unet" / "last.safetensors")
    assert model.config.deterministic and model.prior is None and model.posterior is None
    assert not any(k.startswith(("prior.", "posterior.")) for k in model.state_dict())
    from napari_probunet.data.synthetic import SyntheticDataset
    from napari_probunet.session import Session

    session = Session(model, "cpu")
    session.set_image(SyntheticDataset("lesions", 1, seed=0, size=32)[0].image)
    labels = session.sample(8, seed=1).labels
    assert all((labels[i] == labels[0]).all() for i in range(8))


def test_training_records_the_models_domain(recipe, tmp_path):
    model_cfg, cfg = load_recipe(recipe)
    model_cfg.domain = {"modality": "synthetic", "description": "synthetic lesions"}
    train(model_cfg, replace(cfg, steps=1, val_data=""), tmp_path / "run", progress=False)
    domain = load_model(tmp_path / "run" / "last.safetensors").config.domain
    assert domain["modality"] == "synthetic" and domain["description"] == "synthetic lesions"
    assert domain["reference"] and domain["threshold"] > 0
    assert domain["training_data"] == cfg.data


def test_a_new_run_can_start_from_a_model_files_weights(recipe, tmp_path, capsys):
    """--init-from: a committed model file carries a run's progress to a new machine."""
    model_cfg, cfg = load_recipe(recipe)
    train(model_cfg, cfg, tmp_path / "first", progress=False)
    donor = _weights(tmp_path / "first" / "last.safetensors")
    quiet = replace(cfg, steps=1, lr=1e-12, warmup_steps=1, val_data="", weight_decay=0.0,
                    init_from=str(tmp_path / "first" / "last.safetensors"))
    train(model_cfg, quiet, tmp_path / "second", progress=False)
    assert "initialised from" in capsys.readouterr().err
    after = _weights(tmp_path / "second" / "last.safetensors")
    for k in donor:
        torch.testing.assert_close(after[k], donor[k], rtol=0, atol=1e-6, msg=k)
    donor_file = tmp_path / "first" / "last.safetensors"
    donor_sha = file_sha256(donor_file)
    recorded = read_metadata(tmp_path / "second" / "last.safetensors")["provenance"]["initialised_from"]
    assert recorded["sha256"] == donor_sha and recorded["steps"] == cfg.steps
    other = replace(model_cfg, channels=(4, 8, 16))
    with pytest.raises(UserError, match="architecture differs"):
        train(other, quiet, tmp_path / "third", progress=False)
    # a later leg resumes from its checkpoint and still names the starting point, even when
    # the donor file has since been replaced
    donor_file.unlink()
    train(model_cfg, replace(quiet, steps=2), tmp_path / "second", progress=False)
    leg2 = read_metadata(tmp_path / "second" / "last.safetensors")["provenance"]
    assert leg2["steps"] == 2 and leg2["initialised_from"]["sha256"] == donor_sha


def test_curves_use_a_log_axis_only_where_the_values_span_decades():
    from napari_probunet.training.runlog import axis_scale

    assert axis_scale("kl", [1.7, 2.5, 9.8]) == "linear"  # a resumed leg: no decade to label
    assert axis_scale("ce", [14000.0, 80.0, 60.0]) == "log"  # the first steps of a run
    assert axis_scale("kl", [0.0, 0.002, 40.0]) == "symlog"  # a collapsed posterior's zeros
    assert axis_scale("val_ged16", [0.9, 0.03]) == "linear"
