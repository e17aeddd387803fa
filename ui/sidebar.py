"""The sidebar workspace every page draws: dataset, architecture, parents; and the parents it loads."""
from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import streamlit as st

from otcore.config import DEVICE_CHOICES, WEB_ARCH_FAMILIES, DataSpec, ModelSpec, SpecError, TrainSpec, parse_classes
from otcore.external_models import library_models
from otcore.data import list_datasets
from otcore.models import list_models
from ui import page, runs
from ui.errors import show_error
from ui.state import (
    K_ARCH,
    K_ARCH_SEARCH,
    K_CLASSES,
    K_COUNT,
    K_DATASET,
    K_DEVICE,
    K_EPOCHS,
    K_FAMILY,
    K_FRACTION,
    K_LIBRARY_ARCH,
    K_LOAD,
    K_PARTITION,
    K_PARTITION_SEED,
    K_PERSONAL,
    K_ROOT,
    K_SEED,
    K_UPLOADS,
    PARENTS,
    WORKSPACE_DEFAULTS,
    ParentSet,
    Workspace,
    init_state,
)

FAMILY_LABELS = {"zoo": "zoo", "torchvision": "torchvision", "timm": "timm"}
MAX_LISTED = 200  # timm has over a thousand names: a search narrows them, the list shows at most this many
PARTITION_LABELS = {"iid": "iid: every parent sees the whole split", "labels": "labels: a class subset each",
                    "personalized": "personalized: one class + a share", "small_big": "small / big: a share each"}
DIGITS_ARCH_PREFIXES = ("mlpnet", "vgg_tiny", "resnet_tiny", "vit_tiny")  # the models sized for 8x8 inputs
INPUT_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


@st.cache_data(show_spinner=False)
def architectures_for(dataset: str) -> list[str]:
    """Architectures offered for a dataset: on digits the small ones, elsewhere those whose pools fit."""
    names = list_models()
    if dataset == "digits":
        return [n for n in names if n.startswith(DIGITS_ARCH_PREFIXES)]
    shape = INPUT_SHAPES.get(dataset)
    if shape is None:
        return names
    import torch

    from otcore.models import build_model

    fits = []
    for name in names:
        try:
            with torch.device("meta"):  # shapes only, no memory: VGG refuses inputs its pools cannot halve
                build_model(name, shape, 10)
        except ValueError:
            continue
        except RuntimeError:
            pass  # a builder that computes with tensors cannot run on 'meta'; only ValueError means "too small"
        fits.append(name)
    return fits


def workspace() -> Workspace | None:
    """Draw the sidebar workspace, handle its 'Train / load parents' button, return its specs."""
    init_state(WORKSPACE_DEFAULTS)
    bar = st.sidebar
    page.page_links(bar)
    bar.subheader("Workspace", anchor=False)
    left, right = bar.columns([3, 2])
    dataset = left.selectbox("Dataset", list_datasets(), key=K_DATASET,
                             help="digits is embedded (8x8, 1,797 images); the others are read from a local folder")
    device = right.selectbox("Device", DEVICE_CHOICES, key=K_DEVICE,
                             help="auto: CUDA when torch sees a GPU, else the CPU")
    root = ""
    if dataset != "digits":
        root = bar.text_input("Data root", key=K_ROOT, placeholder="folder in torchvision's layout",
                              help="e.g. DIR with DIR/MNIST/raw/... or DIR/cifar-10-batches-py/...")
    arch = _architecture(bar, dataset)
    count_col, seed_col, epochs_col = bar.columns(3)
    count = count_col.number_input("Parents", min_value=2, max_value=4, step=1, key=K_COUNT)
    first_seed = seed_col.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=K_SEED,
                                       help="the first parent's seed; parent i+1 is trained from seed + i")
    epochs = epochs_col.number_input("Epochs", min_value=1, max_value=1000, step=1, key=K_EPOCHS)
    partition = _partition_widgets(bar)
    with bar.expander("Or load checkpoint files"):
        uploads = st.file_uploader("Checkpoints, one per parent", accept_multiple_files=True, key=K_UPLOADS,
                                   help="the paper's format, a state_dict or safetensors, for the architecture above")
    pressed = bar.button("Load parents" if uploads else "Train / load parents", type="primary", key=K_LOAD,
                         width="stretch", icon=":material/model_training:",
                         help="trained parents come from the cache when these settings were trained before")
    try:
        if partition["partition"] != "iid" and int(count) != 2:
            raise SpecError(f"the '{partition['partition']}' partition splits the data between 2 parents; "
                            f"set Parents to 2")
        if "partition_classes" in partition:
            partition["partition_classes"] = parse_classes(partition["partition_classes"])
        ws = Workspace(DataSpec(dataset, root or None), ModelSpec(arch), device,
                       tuple(int(first_seed) + i for i in range(int(count))),
                       TrainSpec(epochs=int(epochs), **partition))
    except SpecError as err:
        show_error(err, "Workspace", bar)
        return None
    if pressed:
        _get_parents(ws, uploads or [], bar)
    _parents_status(ws, bar)
    return ws


def _architecture(bar: Any, dataset: str) -> str:
    """The family (the zoo, torchvision, timm) and a searchable name in it; `file:` is never offered (it runs code)."""
    family = bar.radio("Architecture family", list(FAMILY_LABELS), key=K_FAMILY, format_func=FAMILY_LABELS.get,
                       horizontal=True,
                       help="the zoo: the paper's networks; torchvision and timm: any of their "
                            "classifiers, built for this dataset's classes (images adapted to the stem)")
    if family in WEB_ARCH_FAMILIES:
        return _library_architecture(bar, family)
    archs = architectures_for(dataset)
    if st.session_state[K_ARCH] not in archs:
        st.session_state[K_ARCH] = "mlpnet" if "mlpnet" in archs else archs[0]
    return bar.selectbox("Architecture", archs, key=K_ARCH)


def _library_architecture(bar: Any, family: str) -> str:
    """A torchvision (every classification builder, searchable) or timm model (filtered by a search text)."""
    names = list(library_models(family))
    if family == "timm":
        search = bar.text_input("Search timm's models", key=K_ARCH_SEARCH, placeholder="e.g. resnet, convnext",
                                help=f"{len(names):,} models; the list below shows the first {MAX_LISTED} whose "
                                     "name contains this text")
        matches = [n for n in names if search.strip().lower() in n.lower()]
        if len(matches) > MAX_LISTED:
            bar.caption(f"{len(matches):,} match; the first {MAX_LISTED} are listed: refine the search")
        names = matches[:MAX_LISTED]
        if not names:
            bar.warning(f"No timm model's name contains '{search}'.", icon=":material/search_off:")
            return f"timm:{search}"  # refused by ModelSpec with one message
    key = K_LIBRARY_ARCH[family]
    if st.session_state.get(key) not in names:
        st.session_state[key] = WORKSPACE_DEFAULTS[key] if WORKSPACE_DEFAULTS[key] in names else names[0]
    return f"{family}:{bar.selectbox('Architecture', names, key=key)}"


def _partition_widgets(bar: Any) -> dict[str, Any]:
    """The 'Data each parent sees' expander: TrainSpec's partition fields (the reference's --partition-type)."""
    with bar.expander("Data each parent sees", expanded=st.session_state[K_PARTITION] != "iid"):
        kind = st.selectbox("Partition", list(PARTITION_LABELS), key=K_PARTITION, format_func=PARTITION_LABELS.get,
                            help="train each parent on a part of the train split, so that fusion can combine skills "
                                 "no single parent has (two parents; parent 1 gets part 1)")
        out: dict[str, Any] = {"partition": kind}
        if kind == "labels":
            text = st.text_input("Parent 1's classes", key=K_CLASSES, placeholder="even classes: 0,2,4,...",
                                 help="comma-separated; parent 2 sees every other class")
            out["partition_classes"] = text  # parsed where the workspace's specs are built
        if kind == "personalized":
            out["personal_class"] = int(st.number_input("Personal class", min_value=0, max_value=99, step=1,
                                                         key=K_PERSONAL, help="only parent 1 sees this class"))
        if kind in ("personalized", "small_big"):
            label = "Share of the other classes for parent 1" if kind == "personalized" else "Parent 1's share"
            out["partition_fraction"] = float(st.slider(label, 0.01, 0.99, step=0.01, key=K_FRACTION))
            out["partition_seed"] = int(st.number_input("Partition seed", min_value=0, max_value=2**31 - 1, step=1,
                                                        key=K_PARTITION_SEED))
    return out


def _get_parents(ws: Workspace, uploads: Sequence[Any], container: Any) -> None:
    try:
        parent_set = runs.loaded_parents(ws, uploads, container) if uploads else runs.trained_parents(ws, container)
    except Exception as err:  # noqa: BLE001 - every failure is shown, none is raised into the page
        show_error(err, "Could not get the parents", container)
        return
    st.session_state[PARENTS] = parent_set


def _parents_status(ws: Workspace, container: Any) -> None:
    parent_set = st.session_state.get(PARENTS)
    if parent_set is None:
        container.caption("No parents yet: press the button to train them (cached after the first time).")
    elif not parent_set.fits(ws):
        container.warning(f"The loaded parents are {parent_set.model.arch} on {parent_set.data.name}; "
                          "press the button to get parents for this workspace.", icon=":material/sync_problem:")
    else:
        accuracies = ", ".join(f"{p.metrics['test']['accuracy']:.2f} %" for p in parent_set.parents)
        container.caption(f":material/check_circle: {parent_set.describe()}; test accuracy {accuracies}")


def current_parents(ws: Workspace | None, minimum: int = 1) -> ParentSet | None:
    """The session's parents if they fit the workspace and are at least `minimum`, else None."""
    parent_set = st.session_state.get(PARENTS)
    if ws is None or parent_set is None or not parent_set.fits(ws) or len(parent_set.parents) < minimum:
        return None
    return parent_set


def require_parents(ws: Workspace | None, minimum: int = 1) -> ParentSet:
    """The session's parents, or an explanation and a stop of the page."""
    parent_set = current_parents(ws, minimum)
    if parent_set is not None:
        return parent_set
    loaded = st.session_state.get(PARENTS)
    if ws is not None and loaded is not None and loaded.fits(ws):
        st.warning(f"This page needs at least {minimum} parents; {len(loaded.parents)} are loaded. Load more "
                   "checkpoint files, or train parents, in the sidebar.", icon=":material/group_add:")
    else:
        st.info("**No parents yet.** Choose the dataset, architecture and number of parents in the sidebar, then "
                "press **Train / load parents** (or load checkpoint files there). Parents trained before come "
                "from the cache at once.", icon=":material/arrow_back:")
    st.stop()

