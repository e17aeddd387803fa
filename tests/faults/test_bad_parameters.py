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


# Non-finite or absurd values (issue 14, item 8): each refused with one line before any work.
OUT_OF_RANGE = [
    (["train", "--lr", "inf"], "learning rate must be in (0, 10], got inf"),
    (["train", "--lr", "nan"], "learning rate must be in (0, 10], got nan"),
    (["train", "--weight-decay", "inf"], "weight decay must be in [0, 1], got inf"),
    (["train", "--epochs", "100000"], "epochs must be in [0, 1000], got 100000"),
    (["train", "--batch-size", "10000000"], "batch size must be in [1, 100000]"),
    (["fuse", "--weights", "1e308", "1e308"], "per-parent weights must be at least two, each in [0, 1e+06]"),
    (["fuse", "--weights", "inf", "1"], "got inf, 1.0"),
    (["fuse", "--weights", "nan", "1"], "got nan, 1.0"),
    (["fuse", "--weights", "1", "1", "--anchor", "7"], "anchor 7 out of range for 2 parents"),
    (["fuse", "--anchor", "-3"], "anchor -3 out of range for 2 parents"),
    (["fuse", "--mode", "acts", "--act-samples", "100000000"], "activation samples must be in [1, 100000]"),
    (["fuse", "--solver", "sinkhorn", "--reg", "inf"], "Sinkhorn reg must be in (0, 100], got inf"),
    (["prune", "--fraction", "nan"], "prune fraction must be in [0, 1), got nan"),
    (["prune", "--fraction", "0.5", "--retrain-epochs", "1000000"], "retraining epochs must be in [0, 1000]"),
    (["hessian", "--lambda-min=-inf"], "lambdas must be in [-100.0, 100.0], got [-inf, 0.5]"),
    (["hessian", "--lambda-max", "1e6"], "lambdas must be in [-100.0, 100.0]"),
    (["hessian", "--top-k", "1000000"], "top-k must be in [1, 100], got 1000000"),
    (["hessian", "--lanczos-iters", "1000000000"], "Lanczos iterations must be in [2, 1000], got 1000000000"),
    (["hessian", "--lambda-points", "100000000"], "lambda points must be in [2, 1001], got 100000000"),
    (["hessian", "--tol", "inf"], "tolerance must be in (0, 1), got inf"),
    (["hessian", "--tol", "0"], "tolerance must be in (0, 1), got 0.0"),
    (["hessian", "--batch-size", "1000000"], "batch size must be in [1, 100000]"),
    (["sweep", "--cpus-per-task", "inf"], "CPUs per task must be in (0, 1024], got inf"),
    (["sweep", "--cpus-per-task", "nan"], "CPUs per task must be in (0, 1024], got nan"),
    (["sweep", "--grid", "train.lr=20"], "train.lr=20: learning rate must be in (0, 10]"),
    (["sweep", "--grid", "fusion.ensemble_step=0.5", "--fractions", "0,nan"], "prune.fraction"),
]


@pytest.mark.parametrize("argv, message", OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_out_of_range_values_exit_2_with_one_line_before_any_work(argv, message, tmp_path):
    done = cli(*argv, "--json", cache=tmp_path)
    assert_one_line_error(done, message)
    assert not any(tmp_path.iterdir())  # nothing trained, nothing cached


@pytest.mark.parametrize("out, message", [(".", "is a folder; give the HTML file to write"),
                                          ("missing/report.html", "does not exist")])
def test_report_out_is_checked_before_any_work(out, message, tmp_path):
    cache = tmp_path / "cache"
    done = cli("report", "--out", str(tmp_path / out), "--json", cache=cache)
    assert_one_line_error(done, message)
    assert not cache.exists() or not any(cache.iterdir())


def test_the_spec_ranges_accept_their_bounds_and_refuse_just_beyond():
    TrainSpec(epochs=1000, batch_size=100_000, lr=10.0, weight_decay=1.0)
    FusionSpec(act_samples=100_000, weights=(0.0, 1e6), reg=100.0)
    HessianSpec(top_k=100, lanczos_iters=1000, lambda_points=1001, lambda_min=-100.0, lambda_max=100.0, tol=0.5)
    for build in (lambda: TrainSpec(lr=10.001), lambda: TrainSpec(weight_decay=1.01), lambda: TrainSpec(epochs=1001),
                  lambda: FusionSpec(weights=(0.0, 0.0)), lambda: FusionSpec(weights=(float("nan"), 1.0)),
                  lambda: HessianSpec(top_k=101), lambda: HessianSpec(lambda_points=1002),
                  lambda: HessianSpec(lambda_max=100.5), lambda: HessianSpec(tol=1.0)):
        with pytest.raises(SpecError):
            build()


def test_the_json_printer_refuses_nan_and_names_the_field(monkeypatch, capsys):
    import json

    from otcore import cli as cli_module

    with pytest.raises(ValueError, match=r"non-finite number at result\['rows'\]\[1\]\['loss'\] \(nan\)"):
        cli_module.dumps({"rows": [{"loss": 1.0}, {"loss": float("nan")}]})
    assert json.loads(cli_module.dumps({"a": [1.5, None]})) == {"a": [1.5, None]}
    result = {"test_loss": float("inf"), "text": "diverged"}
    monkeypatch.setitem(cli_module.COMMANDS, "diverge",
                        (lambda p: p.add_argument("--json", action="store_true"), lambda args: dict(result)))
    assert cli_module.main(["diverge", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == ("error: the result holds a non-finite number at result['test_loss'] (inf), "
                                         "which JSON cannot carry (did the computation diverge?)")
    assert cli_module.main(["diverge"]) == 0  # the text form is for people, and says what happened
    assert capsys.readouterr().out == "diverged\n"


def test_parents_that_cannot_be_fused_are_named():
    from otcore.fusion import fuse
    from otcore.models import build_model

    mlp = build_model("mlpnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="different number of classes"):
        fuse([mlp, build_model("mlpnet", (1, 8, 8), 100)], FusionSpec())
    with pytest.raises(ValueError, match="same architecture family"):
        fuse([mlp, build_model("resnet_tiny_nobias_nobn", (1, 8, 8), 10)], FusionSpec())
    with pytest.raises(SpecError, match="3 per-parent weights given for 2 parents"):
        FusionSpec(weights=(1, 1, 1)).parent_weights(2)
