"""`python -m otcore check --arch ARCH`: an architecture's groups and each alignment on its permuted copy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _check(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "otcore", "check", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("arch,groups,shared,applied", [
    ("mlpnet", 3, 0, 5),  # every alignment, CCA Merge and ZipIt! included
    ("resnet_tiny_nobias_nobn", 7, 3, 3),  # the residual stream: CCA Merge and ZipIt! refused with their reason
    ("torchvision:squeezenet1_1", 25, 0, 5),  # biases and fire modules' concatenations, 1-channel digits adapted
])
def test_check_reports_the_groups_and_every_alignment_gives_back_the_logits(arch, groups, shared, applied):
    done = _check("--arch", arch, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and report["groups"] == groups == len(report["widths"]) and len(report["shared"]) == shared
    assert report["moved_fraction"] > 0.9
    ran = [a for a in report["alignments"] if a["refused"] is None]
    assert len(ran) == applied and all(a["passed"] and a["relative"] <= 1e-4 for a in ran)
    assert {(a["alignment"], a["mode"]) for a in ran} >= {("ot", "weights"), ("ot", "activations"),
                                                          ("weight_matching", "weights")}
    assert all(a["refused"] for a in report["alignments"] if a not in ran)


def test_a_users_own_module_is_checked_from_its_file(tmp_path):
    source = tmp_path / "my_net.py"
    source.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class GatedNet(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.conv = nn.Conv2d(1, 12, 3, padding=1)
                self.norm = nn.BatchNorm2d(12)
                self.gate = nn.Linear(12, 12)
                self.head = nn.Linear(12, num_classes)

            def forward(self, x):
                h = torch.relu(self.norm(self.conv(x)))
                pooled = h.mean((2, 3))
                return self.head(pooled * torch.sigmoid(self.gate(pooled)))
    """))
    done = _check("--arch", f"file:{source}:GatedNet", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and report["groups"] == 1 and report["widths"] == [12]  # the gate joins its channels


def test_a_model_the_tracer_cannot_follow_is_one_error_line_and_exit_2(tmp_path):
    source = tmp_path / "attention.py"
    source.write_text(textwrap.dedent("""
        from torch import nn

        class Attn(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.embed = nn.Linear(1, 64)
                self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
                self.head = nn.Linear(64, num_classes)

            def forward(self, x):
                tokens = self.embed(x.flatten(2).transpose(1, 2))
                return self.head(self.attn(tokens, 2 * tokens, 2 * tokens)[0].mean(1))  # cross-attention
    """))
    for arch in (f"file:{source}:Attn", "torchvision:no_such_net", "mlp_no_such"):
        done = _check("--arch", arch)
        assert done.returncode == 2, (arch, done.stderr)
        assert done.stderr.count("error:") == 1 and done.stdout == ""
    assert "'attn'" in _check("--arch", f"file:{source}:Attn").stderr
