"""The walk over every torchvision classification model (and six timm ones): permuted copies and fusions.

For each model (otcore.external_models for 3x32x32 inputs and 10 classes, weights and statistics
perturbed so no initial symmetry hides a wrong group, eval mode): otcore.fusion.permuted_copy gives
the same logits within 1e-4 relative to their scale with at least half of the weight entries moved,
and fusing the model with that copy by every alignment of tests/test_group_align.ALIGNMENTS gives its
logits back within 1e-4 relative.

The lists were decided offline with bench/torchvision_walk.py (its table has the per-model times): a
model enters the walk when it builds with num_classes=10 and a forward of 8 images takes under 5 s on
the 2-core CPU. The full walk is marked `walk` (deselected by default: tens of minutes on 2 cores);
the models in FAST, one per structure, run in every suite.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from otcore.external_models import build_external
from otcore.fusion import permuted_copy, reset_batch_norm
from tests.test_graph import _noisy
from tests.test_group_align import ALIGNMENTS, _assert_every_alignment_gives_back_the_logits

SHAPE = (3, 32, 32)
TOLERANCE = 1e-4  # largest |logit difference| relative to the logits' largest magnitude
MOVED_AT_LEAST = 0.5  # share of the weight entries the permuted copy moves

# Every torchvision classification model, in torchvision's order: the walk's, or refused with the reason.
_TOO_BIG_INPUT = "needs 224x224 inputs (the adapter resizes 32 to 224): forward of 8 images over 5 s"
REFUSED = {
    "maxvit_t": "needs 224x224 inputs (window and grid partitions of 7 at every stage of /32): forward of 8 images "
                "11.8 s (1 thread, load 8)",
    "efficientnet_v2_l": "chaotic under the walk's noise in float32 (a permuted copy 0.44 off the logits' scale; in "
                         "float64 0.19 at the full noise, 1.0e-9 at torchvision's own init), and run in float64 at a "
                         "tenth of the noise the walk's process reached 24 GB resident after 204 s and the OOM killer "
                         "ended it (2026-12-06): more than this 24 GB machine has",
    "regnet_y_128gf": "644 M parameters: the walk's copies (model, permuted copy, fused, weight matching's float64 "
                      "reads) need about 20 GB, all of this shared machine's memory",
    "vit_b_16": _TOO_BIG_INPUT + " (vit_b_32, 4x fewer tokens, took 11.1 s); the tracer reads them (tests/test_vit.py)",
    "vit_b_32": _TOO_BIG_INPUT + " (11.1 s, 1 thread, load 8); the tracer reads them (tests/test_vit.py)",
    "vit_h_14": _TOO_BIG_INPUT + " (wider and longer than vit_b_32's 11.1 s); the tracer reads them (tests/test_vit.py)",
    "vit_l_16": _TOO_BIG_INPUT + " (wider and longer than vit_b_32's 11.1 s); the tracer reads them (tests/test_vit.py)",
    "vit_l_32": _TOO_BIG_INPUT + " (wider than vit_b_32's 11.1 s); the tracer reads them (tests/test_vit.py)",
}
TORCHVISION = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in REFUSED]
# LayerNorm with layer scales (convnext_atto), squeeze-excitation (efficientnet_b0, mobilenetv3_small_050).
TIMM = ["resnet10t", "convnext_atto", "efficientnet_b0", "regnetx_002", "mobilenetv3_small_050", "densenet121"]
# One per structure, run in every suite (concatenations; depthwise with SE gates; channel shuffle; BN ResNet;
# timm's SE and LayerNorm); the rest of the walk runs with `-m walk`.
# Concatenations with biases; channel shuffles; BN residual nets; depthwise convolutions with squeeze-excitation
# and hardswish; LayerNorm on channels-last tokens. (torchvision's mobilenet_v3_small and mnasnet0_5 took 213 s
# and 186 s at load 10-15 with CCA Merge and ZipIt!: they run with the walk; test_group_align and test_group_merge
# fuse mobilenet_v3_small in every suite.)
FAST = {"torchvision:squeezenet1_0", "torchvision:shufflenet_v2_x0_5", "timm:resnet10t", "timm:mobilenetv3_small_050",
        "timm:convnext_atto"}

# Checked in float64: with the walk's noisy weights their float32 logits move by more than 1e-4 of their scale when
# only the order of a sum changes (efficientnet_b1: 2.3e-4, efficientnet_v2_s: 0.44 for a permuted copy, against
# 4.3e-13 and 6.3e-10 in float64), so float32 cannot tell a wrong group from rounding there.
# The same for every deeper EfficientNet (a permuted copy in float32 against float64, 2026-12-06: b2 6.8e-4 / 4.7e-12,
# b3 1.4e-2 / 1.4e-11, b4 4.9e-2 / 2.7e-11, b5 0.83 / 2.1e-7, b6 0.47 / 1.3e-7, v2_m 0.70 / 1.3e-7).
FLOAT64 = {f"torchvision:efficientnet_{n}" for n in ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "v2_s", "v2_m", "v2_l")}
# And the 101- and 152-layer ResNets (float32 / float64: resnet101 2.6e-4 / 5.7e-13, resnet152 3.7e-4 / 7.4e-13,
# wide_resnet101_2 2.3e-4 / 7.4e-13, resnext101_32x8d 1.4e-4 / 3.0e-13, resnext101_64x4d 2.6e-4 / 3.6e-13).
FLOAT64 |= {f"torchvision:{n}" for n in ("resnet101", "resnet152", "wide_resnet101_2", "resnext101_32x8d",
                                        "resnext101_64x4d")}
# Deep enough that the walk's noise makes it chaotic even in float64: b7's permuted copy is 3.8e-3 off the logits'
# scale (v2_l's, refused above, 0.19, and 1.0e-9 at torchvision's own initialisation: chaos, not a wrong group).
# A tenth of the noise still tells every channel apart and leaves 3.5e-6 (v2_l: 5.0e-6).
QUIETER = {"torchvision:efficientnet_b7": 0.1}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _walk_params(names: list[str], family: str) -> list:
    return [pytest.param(f"{family}:{n}", id=n, marks=() if f"{family}:{n}" in FAST else (pytest.mark.walk,
                                                                                            pytest.mark.slow))
            for n in names]


def test_the_lists_cover_every_torchvision_classification_model():
    listed = TORCHVISION + list(REFUSED)  # TORCHVISION is read from torchvision: the refusals must name models
    assert sorted(listed) == sorted(torchvision.models.list_models(module=torchvision.models))
    assert len(set(listed)) == len(listed)


def _moved_share(model: torch.nn.Module, twin: torch.nn.Module) -> float:
    state, moved = model.state_dict(), twin.state_dict()
    floats = [k for k, t in state.items() if t.is_floating_point()]
    return sum(int((state[k] != moved[k]).sum()) for k in floats) / sum(state[k].numel() for k in floats)


@pytest.mark.parametrize("arch", _walk_params(TORCHVISION, "torchvision") + _walk_params(TIMM, "timm"))
def test_a_permuted_copy_and_every_fusion_with_it_keep_the_logits(arch):
    torch.manual_seed(0)  # torchvision's and timm's builders draw their initial weights from the global generator
    generator = torch.Generator().manual_seed(3)
    x, sample = torch.randn(8, *SHAPE, generator=generator), torch.randn(32, *SHAPE, generator=generator)
    # Batch-norm statistics of the sample: with random ones a deep BN network maps random inputs to features
    # equal up to rounding, and CCA Merge and ZipIt! (correlations) cannot tell its channels apart.
    model = reset_batch_norm(_noisy(build_external(arch, SHAPE, 10), 1, QUIETER.get(arch, 1.0)), sample)
    if arch in FLOAT64:  # float32 rounding, amplified by the noisy weights, exceeds the tolerance on its own
        model, x, sample = model.double(), x.double(), sample.double()
    twin = permuted_copy(model, 2, SHAPE)
    with torch.inference_mode():
        logits, twin_logits = model(x), twin(x)
    assert (twin_logits - logits).abs().max() <= TOLERANCE * logits.abs().max()
    assert _moved_share(model, twin) >= MOVED_AT_LEAST
    _assert_every_alignment_gives_back_the_logits(model, twin, x, TOLERANCE, ALIGNMENTS, sample=sample)
