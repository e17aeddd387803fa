"""Bad settings are refused where specs are built, with the same message in the CLI and the library."""
from __future__ import annotations

import pytest

from otcore.config import FusionSpec, HessianSpec, PruneSpec, SpecError, TrainSpec
from tests.faults.conftest import assert_one_line_error, cli

CASES = [
    (["prune", "--fraction", "1.0"], lambda: PruneSpec(fraction=1.0)),
    (["prune", "--fraction", "-0.2"], lambda: PruneSpec(fraction=-0.2)),
    (["fuse", "--solver", "sinkhorn", "--reg", "0"], lambda: FusionSpec(solver="sinkhorn", reg=0)),
    (["fuse", "--mode", "acts", "--act-samples", "0"], lambda: FusionSpec(mode="activations", act_samples=0)),
    (["fuse", "--ensemble-step", "1.5"], lambda: FusionSpec(ensemble_step=1.5)),
    (["hessian", "--lambda-min", "0.3", "--lambda-max", "0.3"], lambda: HessianSpec(lambda_min=0.3, lambda_max=0.3)),
    (["hessian", "--lanczos-iters", "1"], lambda: HessianSpec(lanczos_iters=1)),
    (["train", "--epochs", "-1"], lambda: TrainSpec(epochs=-1)),
    (["train", "--lr", "0"], lambda: TrainSpec(lr=0)),
]


@pytest.mark.parametrize("argv, build", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_the_cli_and_the_specs_say_the_same_thing(argv, build, tmp_path):
    with pytest.raises(SpecError) as err:
        build()
    done = cli(*argv, "--json", cache=tmp_path)
    assert_one_line_error(done, str(err.value))
    assert not any(tmp_path.iterdir())  # refused before any work: nothing cached


def test_parents_that_cannot_be_fused_are_named():
    from otcore.fusion.fuse import fuse
    from otcore.models import build_model

    mlp = build_model("mlpnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="different number of classes"):
        fuse([mlp, build_model("mlpnet", (1, 8, 8), 100)], FusionSpec())
    with pytest.raises(ValueError, match="same architecture family"):
        fuse([mlp, build_model("resnet_tiny_nobias_nobn", (1, 8, 8), 10)], FusionSpec())
    with pytest.raises(SpecError, match="3 per-parent weights given for 2 parents"):
        FusionSpec(weights=(1, 1, 1)).parent_weights(2)
