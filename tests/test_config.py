"""Tests of otcore.config: the torch-free vocabularies match the registries, keys match the pipeline's."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import REPO
from otcore.config import (ARCHITECTURES, DATASETS, DEVICE_CHOICES, DataSpec, ModelSpec, SpecError, TrainSpec)
from otcore.keys import parent_key


def test_vocabularies_equal_the_registries_in_order():
    from otcore.data import list_datasets
    from otcore.device import DEVICE_CHOICES as device_choices
    from otcore.models import list_models

    assert list_datasets() == list(DATASETS)
    assert list_models() == list(ARCHITECTURES)
    assert device_choices is DEVICE_CHOICES


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(SpecError, match="unknown dataset 'svhn'; choose one of digits, mnist"):
        DataSpec("svhn")
    with pytest.raises(SpecError, match="unknown architecture 'gpt'; choose one of mlpnet, "):
        ModelSpec("gpt")


def test_specs_and_keys_never_import_torch():
    code = ("import sys\n"
            "from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, TrainSpec\n"
            "from otcore.keys import fusion_key, hessian_key, parent_key, prune_key\n"
            "data, model = DataSpec('cifar10'), ModelSpec('vgg11_nobias')\n"
            "parents = [parent_key(data, model, TrainSpec(seed=3))]\n"
            "hessian_key(data, HessianSpec(), prune_key(data, model, PruneSpec(), FusionSpec(), None, parents))\n"
            "fusion_key(data, model, FusionSpec(), None, parents)\n"
            "print([m for m in ('torch', 'numpy') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_hessian_step_has_its_own_format_and_the_other_keys_stay():
    from otcore.config import HessianSpec, spec_hash
    from otcore.keys import HESSIAN_FORMAT, hessian_key, keyed_model

    data, spec = DataSpec(), HessianSpec()
    key = hessian_key(data, spec, "network-key")
    assert key != spec_hash("hessian", data, spec, "network-key")  # the format before issue 24's Lanczos
    assert key.settings[-1] == {"hessian_format": HESSIAN_FORMAT} and HESSIAN_FORMAT >= 2
    # a parent's key is still spec_hash over its specs alone: the cached parents stay found
    assert parent_key(data, ModelSpec(), TrainSpec()) == spec_hash("parent", data, keyed_model(data, ModelSpec()),
                                                                   TrainSpec())


def test_parent_key_is_the_key_train_parents_stores_under(digits_parents):
    assert [p.key for p in digits_parents] == [parent_key(DataSpec(), ModelSpec(), TrainSpec(seed=s)) for s in (0, 1)]
