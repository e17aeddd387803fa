"""Issue 21, section 4: huge-but-finite parents, paths the system refuses, REPAIR on one sample.

Each is tried through the real CLI in a process of its own: exit 2, one `error:` line, nothing
else on stderr (no traceback, no torch warning), nothing on stdout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from otcore.checkpoints import save_checkpoint
from otcore.config import DataSpec, FusionSpec, SpecError
from otcore.models import build_model
from otcore.train import init_model
from tests.faults.conftest import REPO, assert_one_line_error

DIGITS = ["--dataset", "digits", "--arch", "mlpnet"]
LONG = "a" * 5300  # one component over NAME_MAX (255) and a path over PATH_MAX (4096)


def cli(*args: str, cache: Path | str) -> subprocess.CompletedProcess:
    """`python -m otcore ARGS` as conftest's, stderr kept as a terminal shows it: a progress bar drawn before an
    error is erased by its own carriage returns, so each line is what follows its last '\\r'."""
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-m", "otcore", *args], cwd=REPO, capture_output=True, env=env,
                          timeout=300)
    err = done.stderr.decode()
    assert "Traceback" not in err and "Warning" not in err, err  # nothing but the line, even where erased
    shown = "\n".join(line.rsplit("\r", 1)[-1] for line in err.split("\n"))
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), shown)


def _parents(folder: Path, scale: float, first_only: bool) -> list[str]:
    """Two digits mlpnets as checkpoint files; the second's weights (or its first layer's) times `scale`."""
    paths = []
    for seed in (0, 1):
        state = init_model(build_model("mlpnet", (1, 8, 8), 10), seed).state_dict()
        if seed == 1:
            names = list(state)[:1] if first_only else list(state)
            state = {k: v * scale if k in names else v for k, v in state.items()}
        path = folder / f"parent{seed}_{scale:g}_{first_only}.pt"
        save_checkpoint(state, path, format="state_dict")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("alignment, scale, first_only", [("cca", 1e15, False), ("cca", 1e38, True),
                                                          ("cca", 1e20, False), ("zipit", 1e15, False),
                                                          ("ot", 1e15, False)])
def test_parents_with_huge_finite_weights_are_refused_in_one_line(alignment, scale, first_only, tmp_path):
    paths = _parents(tmp_path, scale, first_only)
    done = cli("fuse", *DIGITS, "--parents", *paths, "--alignment", alignment, "--mode", "acts", "--json",
               cache=tmp_path / "cache")
    assert_one_line_error(done, "check the parents' weights")


def test_cca_refuses_non_finite_intermediates_and_still_merges_large_ones() -> None:
    from otcore.fusion import MergeMethodError, cca_map

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(60, 8, generator=g, dtype=torch.float64).clamp_min(0)
    for bad, what in ((feats * 1e160, "covariances"), (feats.clone().fill_(float("inf")), "features")):
        with pytest.raises(MergeMethodError, match=f"CCA Merge: the {what} are not finite"):
            cca_map(feats, bad)
    forward, inverse = cca_map(feats * 1e6, feats[:, torch.randperm(8, generator=g)] * 1e6)  # large is fine
    assert torch.allclose(forward @ inverse, torch.eye(8, dtype=torch.float64), atol=1e-6)


def test_a_parent_whose_logits_overflow_is_refused_by_both_merge_methods() -> None:
    from otcore.fusion import MergeMethodError, fuse

    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    nets = [init_model(build_model("vgg_tiny_nobias", (1, 8, 8), 10), seed).eval() for seed in (0, 1)]
    with torch.no_grad():
        list(nets[1].parameters())[-1].fill_(3e38)  # the output layer only: hidden features stay finite
    for alignment in ("cca", "zipit"):
        with pytest.raises(MergeMethodError, match="not finite"):
            fuse(nets, FusionSpec(alignment=alignment), act_inputs=x)


def _loop(tmp_path: Path) -> str:
    loop = tmp_path / "loop"
    os.symlink(loop, loop)  # a link to itself: every stat says ELOOP
    return str(loop / "x")


PATH_CASES = {
    "data-root": (lambda t: ["train", "--dataset", "mnist", "--data-root", LONG], "could not read mnist"),
    "data-root-nested": (lambda t: ["train", "--dataset", "cifar10", "--data-root", f"{t}/{LONG}/x"], "data root"),
    "data-root-loop": (lambda t: ["train", "--dataset", "mnist", "--data-root", _loop(t)], "symbolic links"),
    "cache-dir": (lambda t: ["train", *DIGITS, "--cache-dir", LONG], "--cache-dir"),
    "list-cache-dir": (lambda t: ["list", "--cache-dir", f"{t}/{LONG}"], "--cache-dir"),
    "parents": (lambda t: ["fuse", *DIGITS, "--parents", LONG, LONG], "--parents: parent 1"),
    "hessian-parents": (lambda t: ["hessian", *DIGITS, "--parents", str(t), LONG], "--parents: parent 2"),
    "report-out": (lambda t: ["report", *DIGITS, "--out", LONG], "--out"),
    "report-out-nested": (lambda t: ["report", *DIGITS, "--out", f"{t}/{LONG}/r.html"], "--out"),
    "report-out-loop": (lambda t: ["report", *DIGITS, "--out", _loop(t)], "symbolic links"),
}


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_a_path_the_system_refuses_is_one_line_before_any_work(case, tmp_path):
    build, fragment = PATH_CASES[case]
    cache = tmp_path / "cache"
    done = cli(*build(tmp_path), "--json", cache=cache)
    assert_one_line_error(done, fragment)
    assert len(done.stderr) < 600  # the path is shown by its ends and its length, not 5,300 characters
    assert not cache.exists() or not any(cache.iterdir())


def test_the_cache_folder_from_the_environment_is_checked_too(tmp_path):
    done = cli("list", cache=LONG)
    assert_one_line_error(done, "the cache folder ($OTCORE_CACHE_DIR)", "too long")


def test_the_data_root_field_gets_the_same_message_as_the_flag():
    with pytest.raises(SpecError, match=r"could not read mnist from the data root a{100}\.\.\.a{100} \(5,300 "
                                        "characters\\): a name in it is too long"):
        DataSpec("mnist", LONG)


@pytest.mark.parametrize("alignment", ["ot", "cca", "zipit"])
def test_repair_on_one_sample_is_refused_without_a_warning(alignment, tmp_path):
    done = cli("fuse", *DIGITS, "--act-samples", "1", "--renormalize", "--alignment", alignment, "--json",
               cache=tmp_path)
    assert_one_line_error(done, "needs at least 2 samples (--act-samples); got 1")
    assert "Warning" not in done.stderr


def test_the_library_refuses_repair_on_one_sample_before_any_statistic():
    from otcore.fusion import FusionError, fuse
    from otcore.fusion.repair import repair

    nets = [init_model(build_model("mlpnet", (1, 8, 8), 10), seed).eval() for seed in (0, 1)]
    one = torch.randn(1, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torch warning would fail here
        for alignment in ("cca", "zipit"):
            options = FusionSpec(alignment=alignment, renormalize=True, act_samples=2).options(2)
            with pytest.raises(FusionError, match="at least 2 samples; got 1"):
                fuse(nets, options, act_inputs=one)
        with pytest.raises(FusionError, match="at least 2 samples; got 1"):
            repair(nets[0], nets, [{}, {}], [0.5, 0.5], one)
        fused = fuse(nets, FusionSpec(renormalize=True, act_samples=2), act_inputs=torch.randn(2, 1, 8, 8)).model
    assert all(torch.isfinite(p).all() for p in fused.parameters())
