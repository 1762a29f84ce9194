"""The standard suite: the quick suite's protocol across timm families, on the suite's own backbones."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks import backbones
from benchmarks.catalog import STANDARD_FAMILIES, SUITES
from benchmarks.config import ConfigError, suite_from_toml
from benchmarks.sources import backbone_inputs
from lrgroups import recipes


def test_standard_is_three_toy_architectures_and_one_imagenet_network() -> None:
    """The tuning stage: three suite-pretrained families from two source seeds each plus the
    ImageNet EfficientNet-Lite0 top (ULMFiT / L2-SP on MNIST digits, LP-FT / WiSE-FT); every
    experiment keeps the quick suite's budget and strategies; every claim is the quick suite's
    hypothesis (same comparison, metric and minimum effect) under a family tag; layer decay only on
    the ViT. The confirmatory stage: every seed with its own source model, seeds disjoint from the
    quick suite's (no experiment analysed in two suites)."""
    tuning, standard, quick = SUITES["standard_tuning"], SUITES["standard"], SUITES["quick"]
    assert {backbones.family(e.backbone) for e in tuning.experiments} == {"ResNet", "ConvNeXt", "ViT", "EfficientNet"}
    assert {e.backbone for e in tuning.experiments if e.source.kind == "imagenet"} == {"lite0_top"}
    quick_q2 = quick.experiment("q2_ulmfit")
    for experiment in tuning.experiments:
        assert experiment.budget == quick_q2.budget and experiment.lr_factors is None
        if experiment.source.kind == "pretrain":
            assert len(experiment.source_seeds) == 2 and experiment.source.min_accuracy == 0.8
        if experiment.name.startswith("s2_"):
            extra = {s.name for s in experiment.strategies} - {s.name for s in quick_q2.strategies}
            assert extra == ({"layer_decay_0.75"} if experiment.backbone == "vit_tiny" else set())
    by_name = {h.name: h for h in quick.hypotheses}
    for h in tuning.hypotheses:
        claim, tag = h.name.split("-")
        assert tag in {t for _, t, _, _ in STANDARD_FAMILIES} | {"lite0"}
        if claim in by_name:
            same = by_name[claim]
            assert (h.better, h.worse, h.metric, h.min_effect) == (same.better, same.worse, same.metric,
                                                                    same.min_effect)
    assert [h.name for h in tuning.hypotheses if h.name.startswith("H4")] == ["H4-vit"]
    assert not any(h.metric == "retention_at_match" for h in tuning.hypotheses if h.experiment == "s2_lite0")
    quick_sources = {e.source_seed(s) for e in quick.experiments if e.source.trained for s in e.seeds}
    for experiment in standard.experiments:
        if experiment.source.trained:
            assert experiment.independent_sources and experiment.unit == "seed (own source model)"
            assert not {experiment.source_seed(s) for s in experiment.seeds} & quick_sources


def test_standard_replication_uses_disjoint_seeds_and_other_source_models() -> None:
    standard, replication = SUITES["standard"], SUITES["standard_replication"]
    for experiment, other in zip(standard.experiments, replication.experiments, strict=True):
        assert not set(experiment.seeds) & set(other.seeds)
        if experiment.source.trained:
            assert not ({experiment.source_seed(s) for s in experiment.seeds}
                        & {other.source_seed(s) for s in other.seeds})


@pytest.mark.parametrize("name", sorted(backbones.SUITE_ARCHITECTURES))
def test_each_suite_architecture_is_a_small_staged_timm_model(name: str) -> None:
    """Each suite-pretrained architecture eats 1-channel images of its size, is small, and has the
    depth structure the recipes act on: layer decay gives it several distinct lrs, and surgical
    fine-tuning's first and last blocks are different parameters."""
    architecture = backbones.SUITE_ARCHITECTURES[name]
    torch.manual_seed(0)
    model = architecture.create(num_classes=5).eval()
    experiment = dataclasses.replace(SUITES["standard_tuning"].experiments[0], backbone=name,
                                     image_size=architecture.image_size)
    x = backbone_inputs(experiment, torch.rand(3, 1, 28, 28))
    assert x.shape == (3, 1, architecture.image_size, architecture.image_size)
    with torch.no_grad():
        assert model(x).shape == (3, 5)
    assert sum(p.numel() for p in model.parameters()) < 300_000
    tuned = recipes.RECIPES["layer_decay"](gamma=0.5).build(model, torch.optim.AdamW, lr=1e-3, total_steps=10)
    assert len({group["lr"] for group in tuned.optimizer.param_groups if group["params"]}) >= 4
    trainable = {}
    for block in ("first", "last"):
        fresh = architecture.create(num_classes=5)
        recipes.RECIPES["surgical"](block=block, train_head=False).build(fresh, torch.optim.AdamW, lr=1e-3,
                                                                          total_steps=10)
        trainable[block] = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable["first"] and trainable["last"] and not trainable["first"] & trainable["last"]


def test_family_names_the_timm_family_and_refuses_unknown_backbones() -> None:
    assert backbones.family("timm:resnet18") == "resnet"
    assert backbones.family("timm:vit_tiny_patch16_224") == "vision_transformer"
    with pytest.raises(KeyError, match="unknown backbone 'nope'"):
        backbones.family("nope")


SOURCE_MISMATCH = """
name = "mismatch"
[[experiments]]
name = "e"
backbone = "{backbone}"
source = {{kind = "{kind}", dataset = "animal", classes = [0, 1], train_pool = [200, 240], test_pool = [0, 20], steps = 2}}
budget = {{steps = 2, batch_size = 4, eval_every = 1, warmup_steps = 1}}
seeds = [0, 1]
[[experiments.targets]]
name = "t"
dataset = "animal"
classes = [2, 3]
shots = 2
val_shots = 2
train_pool = [200, 240]
test_pool = [0, 20]
[[experiments.strategies]]
kind = "pixel"
"""


@pytest.mark.parametrize(("backbone", "kind"), [("lite0_full", "pretrain"), ("resnet_tiny", "adapt"),
                                                ("vit_tiny", "imagenet")])
def test_a_source_that_does_not_fit_the_backbone_is_a_config_error(backbone: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"a {kind} source does not fit backbone '{backbone}'"):
        suite_from_toml(SOURCE_MISMATCH.format(backbone=backbone, kind=kind))


def test_suite_backbones_load_from_a_config() -> None:
    suite = suite_from_toml(SOURCE_MISMATCH.format(backbone="convnext_tiny", kind="pretrain"))
    assert suite.experiments[0].backbone == "convnext_tiny"


def test_the_committed_standard_run_is_the_preregistered_confirmatory_stage() -> None:
    """results/standard ran every strategy at the lr of benchmarks/preregistration/standard.json, on
    the seeds it sizes, each with its own source model, with nothing failed or left undone; its page's
    tables are the generated ones (tests/test_docs.py checks they are current)."""
    import json
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    environment = json.loads((root / "results" / "standard" / "environment.json").read_text())
    assert environment["suite"] == "standard" and environment["failed"] == 0 and environment["not_done"] == 0
    registration = json.loads((root / "benchmarks" / "preregistration" / "standard.json").read_text())
    runs = pd.read_csv(root / "results" / "standard" / "runs.csv")
    base = runs[(runs.budget_factor == 1) & (runs.kind != "derived")]
    lrs = {(r["experiment"], r["target"], r["strategy"]): r["lr"] for r in registration["lrs"]}
    assert {(r.experiment, r.target, r.strategy): r.lr for r in base.itertuples()} == lrs
    assert base.groupby("experiment").seed.nunique().to_dict() == registration["seeds"]
    trained = base[base.experiment.isin([e.name for e in SUITES["standard"].experiments if e.source.trained])]
    assert len(trained) and (trained.seed == trained.source_seed).all()  # every seed its own source model
    page = (root / "docs" / "benchmarks" / "standard.md").read_text()
    assert "<!-- verdicts-standard:start -->" in page and "<!-- across-standard:start -->" in page


def test_the_standard_page_says_what_the_lite0_mnist_gate_measured() -> None:
    """docs/benchmarks/standard.md: on MNIST digits the ImageNet Lite0 top beats raw pixels by only
    about 4 pp, and that gate is undecided."""
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    page = " ".join((root / "docs" / "benchmarks" / "standard.md").read_text().split())
    assert "On MNIST digits the ImageNet Lite0 top beats raw pixels by only about 4 pp" in page
    gate = pd.read_csv(root / "results" / "standard" / "gates.csv").set_index("experiment").loc["s2_lite0"]
    assert gate.best_baseline == "pixel" and 0.035 <= gate.margin < 0.045 and gate.transfer == "undecided"


def test_the_committed_standard_replication_is_independent_of_the_reference() -> None:
    """results/standard-replication shares no seed and no source model with results/standard and ran
    on the Ray executor; its report is what `replicate` writes (the page's block is checked current by
    tests/test_docs.py)."""
    import json
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    runs = {name: pd.read_csv(root / "results" / name / "runs.csv") for name in ("standard", "standard-replication")}
    assert not set(runs["standard"].seed) & set(runs["standard-replication"].seed)
    trained = [e.name for e in SUITES["standard"].experiments if e.source.trained]
    sources = {name: set(frame[frame.experiment.isin(trained)].source_seed) for name, frame in runs.items()}
    assert sources["standard"] and not sources["standard"] & sources["standard-replication"]
    environment = json.loads((root / "results" / "standard-replication" / "environment.json").read_text())
    assert environment["executor"] == "ray" and environment["failed"] == 0 and environment["not_done"] == 0
    assert "Confirmatory verdicts compatible" in (root / "results" / "standard-replication" / "replication.md").read_text()
