"""Streamlit-side helpers every page shares: the sidebar workspace, memoised pipeline calls,
progress bars, error display and downloads.

Pages read top to bottom as widgets -> one call here or in `otcore` -> figures; everything
Streamlit-specific that more than one page needs lives here, everything else in `otcore`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import streamlit as st

from otcore.threads import DASHBOARD_WORKERS, apply_policy

apply_policy(workers=DASHBOARD_WORKERS)  # once per server process, before any tensor work of any session

from otcore import figures, pipeline  # noqa: E402 - after the thread policy
from otcore.checkpoints import CheckpointError, checkpoint_bytes
from otcore.config import (DEVICE_CHOICES, SCHEDULES, DataSpec, FusionSpec, ModelSpec, RetrainSpec, SpecError,
                           TrainSpec, parse_classes, spec_hash)
from otcore.data import DataError, list_datasets
from otcore.device import resolve_device
from otcore.models import list_models

log = logging.getLogger(__name__)

APP_NAME = "OT Fusion Studio"
PARENTS = "parents"  # session key of the loaded ParentSet, shared by every page

# Widget keys of the sidebar workspace, named after the spec fields they fill.
K_DATASET, K_ROOT, K_ARCH, K_DEVICE = "ws.dataset", "ws.root", "ws.arch", "ws.device"
K_COUNT, K_SEED, K_EPOCHS = "ws.n_parents", "ws.first_seed", "ws.epochs"
K_UPLOADS, K_LOAD = "ws.uploads", "ws.load"
K_PARTITION, K_CLASSES, K_PERSONAL = "ws.partition", "ws.partition_classes", "ws.personal_class"
K_FRACTION, K_PARTITION_SEED = "ws.partition_fraction", "ws.partition_seed"
WORKSPACE_DEFAULTS: dict[str, Any] = {K_DATASET: "digits", K_ROOT: "", K_ARCH: "mlpnet", K_DEVICE: "auto",
                                      K_COUNT: 2, K_SEED: 0, K_EPOCHS: TrainSpec().epochs,
                                      K_PARTITION: "iid", K_CLASSES: "", K_PERSONAL: TrainSpec().personal_class,
                                      K_FRACTION: TrainSpec().partition_fraction, K_PARTITION_SEED: 0}
PARTITION_LABELS = {"iid": "iid: every parent sees the whole split", "labels": "labels: a class subset each",
                    "personalized": "personalized: one class + a share", "small_big": "small / big: a share each"}
PAGE_ICONS = {"Parents": ":material/group:", "Fusion": ":material/merge:", "Pruning": ":material/content_cut:",
              "Hessian": ":material/ssid_chart:", "Landscape": ":material/landscape:"}
DIGITS_ARCH_PREFIXES = ("mlpnet", "vgg_tiny", "resnet_tiny")  # the models sized for 8x8 inputs
INPUT_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


# ---------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Workspace:
    """What the sidebar says: the specs every page computes with."""

    data: DataSpec
    model: ModelSpec
    device: str  # 'auto', 'cpu' or 'cuda'
    seeds: tuple[int, ...]  # one trained parent per seed
    train: TrainSpec  # training of the parents (and of fine-tuning, with its own epochs)


@dataclass
class ParentSet:
    """The parents of the session: shared objects from the memo, never mutated."""

    parents: list  # list[otcore.pipeline.Parent]
    data: DataSpec
    model: ModelSpec
    device: str
    origin: str  # 'trained' or 'uploaded'
    train: TrainSpec
    seeds: tuple[int, ...] = ()

    def fits(self, ws: Workspace) -> bool:
        """Whether these parents belong to the workspace's dataset and architecture."""
        return self.data == ws.data and self.model == ws.model

    @property
    def device_label(self) -> str:
        """The device choice and, for 'auto', what it resolved to."""
        return device_label(self.device)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.parents)

    def describe(self) -> str:
        """One line: how many, where from, on what."""
        split = "" if self.train.partition == "iid" else f", '{self.train.partition}' partition"
        where = (f"trained, seeds {', '.join(map(str, self.seeds))}, {self.train.epochs} epochs{split}"
                 if self.origin == "trained" else "loaded from " + ", ".join(p.source for p in self.parents))
        return f"{len(self.parents)} parents of {self.model.arch} on {self.data.name} ({where})"


def device_label(choice: str) -> str:
    """'auto (cpu)', 'cpu', 'cuda': the device choice and what it means on this server."""
    if choice != "auto":
        return choice
    return f"auto ({resolve_device('auto').type})"


def init_state(defaults: dict[str, Any]) -> None:
    """Give widget keys their defaults, and keep values set on another page.

    Streamlit drops a widget's value when a page without that widget runs; writing the value
    back before the widget is drawn keeps it (the pattern of Streamlit's multipage docs).
    """
    for key, default in defaults.items():
        st.session_state[key] = st.session_state.get(key, default)


# Streamlit pads the top of a page by 6rem; 3rem keeps the results of a page above the fold on a laptop.
_PAGE_CSS = """<style>
[data-testid="stMainBlockContainer"] { padding: 3rem 2.5rem 4rem; }
[data-testid="stSidebarUserContent"] { padding-top: 0.5rem; }
</style>"""


def page_setup(title: str) -> None:
    """Page config shared by every page: wide layout, tab title, compact top margin."""
    st.set_page_config(page_title=f"{title} · {APP_NAME}" if title != APP_NAME else APP_NAME, layout="wide",
                       initial_sidebar_state="expanded")
    st.html(_PAGE_CSS)


# ---------------------------------------------------------------------------- memo


class _Slot:
    """One memoised value and the lock its first computation holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.filled = False
        self.value: Any = None


@st.cache_resource(max_entries=64, show_spinner=False)
def _slot(kind: str, key: str) -> _Slot:
    return _Slot()


def memo(kind: str, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, fresh): the process-wide value of (kind, key), computed once with `compute`.

    `st.cache_resource` owns the slots (lifetime, max entries, the menu's "Clear cache"), but
    `compute` runs outside the cached function: Streamlit records the elements drawn inside a
    cached function to replay them, and a progress bar drawn outside cannot be replayed. What
    comes back is shared by every session: read it, never mutate it.
    """
    slot = _slot(kind, key)
    with slot.lock:  # a second session asking for the same key waits for the first
        if not slot.filled:
            slot.value, slot.filled = compute(), True
            return slot.value, True
    return slot.value, False


# ---------------------------------------------------------------------------- progress, errors, downloads


class ProgressBar:
    """Adapter from the pipeline's `progress(what, fraction)` callbacks to one `st.progress` bar."""

    def __init__(self, label: str, container: Any = None, min_interval_s: float = 0.1) -> None:
        self._bar = (container or st).progress(0.0, text=label)
        self._min_interval = min_interval_s
        self._last = 0.0

    def __call__(self, what: str, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self._min_interval:
            return  # the pipeline reports every batch; the browser needs ten updates a second at most
        self._last = now
        self._bar.progress(min(max(float(fraction), 0.0), 1.0), text=what)

    def close(self) -> None:
        """Remove the bar."""
        self._bar.empty()


def _hint(err: BaseException) -> str:
    if isinstance(err, SpecError):
        return "Change that setting; the message says which values are allowed."
    if isinstance(err, CheckpointError):
        return ("Load a file written by `torch.save` (the paper's format or a plain state_dict) or a "
                ".safetensors file, made for the architecture selected in the sidebar.")
    if isinstance(err, DataError):
        return "Check the dataset and its Data root in the sidebar (torchvision's folder layout)."
    if isinstance(err, ImportError):
        return "This option's backend is not available in this installation; choose another setting."
    if isinstance(err, ValueError):
        return "Change the settings above or the workspace in the sidebar and try again."
    return "This looks like a bug; the server log has the details. Try other settings or clear the cache (menu ⋮)."


def show_error(err: BaseException, what: str = "That did not work", container: Any = None) -> None:
    """One st.error with the message and a hint; the traceback goes to the server log, never the page."""
    if not isinstance(err, (ValueError, ImportError)):
        log.exception("%s", what, exc_info=err)
    message = str(err) or type(err).__name__
    (container or st).error(f"**{what}:** {message}\n\n{_hint(err)}", icon=":material/error:")


def report_button(build: Callable[[], str], file_name: str, key: str, label: str = "Report (HTML)") -> None:
    """A download button whose HTML report is built only when clicked."""
    st.download_button(label, data=lambda: build().encode("utf-8"), file_name=file_name, mime="text/html",
                       key=key, on_click="ignore", icon=":material/description:",
                       help="A self-contained HTML file: settings, tables and interactive charts; opens offline.")


def checkpoint_button(model: Any, file_name: str, key: str, label: str, meta: dict | None = None) -> None:
    """A download button for a network in the paper's checkpoint format, serialised only when clicked."""
    st.download_button(label, data=lambda: checkpoint_bytes(model.state_dict(), "paper", meta or {}),
                       file_name=file_name, mime="application/octet-stream", key=key, on_click="ignore",
                       icon=":material/download:",
                       help="torch.save of {'model_state_dict', 'test_accuracy', 'epoch'}, as the paper's code writes")


def show_table(frame: Any, height: int | str = "auto", row_height: int | None = None) -> None:
    """A dataframe with the house number formats: 2 decimals for %, 4 for losses and costs."""
    config: dict[Any, Any] = {}
    for i, column in enumerate(frame.columns):
        width = max(64, int(5.8 * len(str(column))) + 17)  # px: the header fits, the table stays narrow
        places = figures.column_decimals(str(column))
        if i == 0 and not pd.api.types.is_numeric_dtype(frame[column]):
            config[column] = st.column_config.TextColumn(width=130)  # method / parent names
        elif places == 0:
            config[column] = st.column_config.NumberColumn(format="localized", width=width)
        elif places is not None:
            config[column] = st.column_config.NumberColumn(format=f"%.{places}f", width=width)
    st.dataframe(frame, hide_index=True, column_config=config, height=height, row_height=row_height)


# ---------------------------------------------------------------------------- workspace


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
    if st.get_option("client.showSidebarNavigation") is False:
        _page_links(bar)
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
    archs = architectures_for(dataset)
    if st.session_state[K_ARCH] not in archs:
        st.session_state[K_ARCH] = "mlpnet" if "mlpnet" in archs else archs[0]
    arch = bar.selectbox("Architecture", archs, key=K_ARCH)
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


def _page_links(container: Any) -> None:
    """Our own page list, titled 'Home' rather than after app.py (when the config hides Streamlit's)."""
    root = Path(__file__).resolve().parent
    container.page_link(str(root / "app.py"), label="Home", icon=":material/home:")
    pages = sorted((root / "pages").glob("[0-9]*_*.py"), key=lambda p: (int(p.stem.split("_", 1)[0]), p.stem))
    for page in pages:
        title = page.stem.split("_", 1)[1].replace("_", " ")
        container.page_link(str(page), label=title, icon=PAGE_ICONS.get(title))
    container.divider()


def _get_parents(ws: Workspace, uploads: Sequence[Any], container: Any) -> None:
    try:
        parent_set = load_parents(ws, uploads, container) if uploads else train_parents(ws, container)
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


# ---------------------------------------------------------------------------- pipeline calls


def train_parents(ws: Workspace, container: Any = None) -> ParentSet:
    """The workspace's parents, one per seed: from memory, the disk cache, or trained with a progress bar."""
    key = spec_hash("ui-parents", ws.data, ws.model, ws.train, list(ws.seeds), ws.device)
    bar = ProgressBar(f"loading {ws.data.name}, then training {len(ws.seeds)} parents (or reading them from the "
                      "cache)", container)
    try:
        parents, _ = memo("parents", key, lambda: pipeline.train_parents(
            ws.data, ws.model, ws.train, list(ws.seeds), ws.device, bar))
    finally:
        bar.close()
    return ParentSet(list(parents), ws.data, ws.model, ws.device, "trained", ws.train, ws.seeds)


def load_parents(ws: Workspace, files: Sequence[Any], container: Any = None) -> ParentSet:
    """Parents from uploaded checkpoint files (validated, never executed), in upload order."""
    parents = []
    bar = ProgressBar(f"loading {len(files)} checkpoints", container)
    try:
        for i, upload in enumerate(files):
            bar(f"checking {upload.name}", i / len(files))
            content = upload.getvalue()
            name = f"parent {i + 1}"
            key = spec_hash("ui-upload", ws.data, ws.model, [hashlib.sha256(content).hexdigest(), name, ws.device])
            try:
                parent, _ = memo("upload", key, lambda: pipeline.load_parent(content, ws.data, ws.model, name,
                                                                              ws.device))
            except CheckpointError as err:
                raise CheckpointError(f"{upload.name}: {err}") from None
            parents.append(dataclasses.replace(parent, source=upload.name))  # a new record, same network
    finally:
        bar.close()
    return ParentSet(parents, ws.data, ws.model, ws.device, "uploaded", TrainSpec(), ())


@dataclass
class FusionRun:
    """A fusion comparison and how it was obtained; shared by every session asking the same."""

    comparison: Any  # otcore.pipeline.Comparison
    device: str  # where this server ran it
    source: str  # 'computed now' or 'from the disk cache'
    wall_s: float  # seconds the call took
    created: float = field(default_factory=time.time)


def fuse(ws: Workspace, parent_set: ParentSet, spec: FusionSpec) -> tuple[FusionRun, bool]:
    """(run, fresh): the comparison of every method for a fusion spec; fresh is False when from memory."""
    key = spec_hash("ui-fusion", parent_set.data, parent_set.model, spec, ws.train, list(parent_set.keys),
                    ws.device)

    def compute() -> FusionRun:
        bar = ProgressBar("fusing", None)
        start = time.perf_counter()
        try:
            comparison = pipeline.fuse_and_compare(parent_set.data, parent_set.model, parent_set.parents, spec,
                                                   ws.train, ws.device, bar)
        finally:
            bar.close()
        return FusionRun(comparison, str(resolve_device(ws.device)),
                         "from the disk cache" if comparison.cached else "computed now", time.perf_counter() - start)

    return memo("fusion", key, compute)


def parse_numbers(text: str, what: str) -> tuple[float, ...] | None:
    """'0.5, 0.3 0.2' -> (0.5, 0.3, 0.2); blank -> None; anything else is a SpecError."""
    parts = text.replace(",", " ").split()
    if not parts:
        return None
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise SpecError(f"{what} must be numbers separated by commas, e.g. 0.5, 0.5; got '{text}'") from None


# ---------------------------------------------------------------------------- pruning, Hessian, landscape

FUSION_REQUEST = "fusion.request"  # the Fusion page's last press of Fuse: (FusionSpec, parent keys)
PRUNE_REQUEST = "pruning.request"  # the Pruning page's last Prune: (PruneSpec, FusionSpec, parent keys, its origin)
STUDY = "analysis.study"  # which comparison the Hessian and Landscape pages analyse (one choice for both)
ANALYSED = "hessian.analysed"  # parent keys -> network key -> curvature_record, for every network analysed
# The Hessian settings both analysis pages share: quick on digits/mlpnet on a 2-core CPU (the whole test split).
HESSIAN_DEFAULTS: dict[str, Any] = {
    "hessian.split": "test", "hessian.batches": 1, "hessian.all_batches": False, "hessian.batch_size": 450,
    "hessian.top_k": 2,
    "hessian.power_iters": 100, "hessian.lanczos_iters": 60, "hessian.density_probes": 1,
    "hessian.trace_method": "auto", "hessian.trace_probes": 30, "landscape.lambda": (-0.5, 0.5), "landscape.points": 21}


def show_table_decimals(frame: Any, decimals: dict[str, int], height: int | str = "auto") -> None:
    """show_table for columns the house rules do not name: `decimals` gives their places (e.g. eigenvalues)."""
    config: dict[Any, Any] = {}
    for i, column in enumerate(frame.columns):
        width = max(64, int(5.8 * len(str(column))) + 17)
        places = decimals.get(str(column), figures.column_decimals(str(column)))
        if i == 0 and not pd.api.types.is_numeric_dtype(frame[column]):
            config[column] = st.column_config.TextColumn(width=130)
        elif places is not None:
            config[column] = st.column_config.NumberColumn(format=f"%.{places}f", width=width)
    st.dataframe(frame, hide_index=True, column_config=config, height=height)


def fusion_setting(parent_set: ParentSet) -> tuple[FusionSpec, str]:
    """The Fusion page's last setting for these parents, else the defaults; and which of the two it is."""
    request = st.session_state.get(FUSION_REQUEST)
    if request is not None and tuple(request[1]) == parent_set.keys:
        return request[0], "the Fusion page's setting"
    return FusionSpec(), "the default fusion options"


def prune(ws: Workspace, parent_set: ParentSet, prune_spec: Any, fusion_spec: FusionSpec) -> tuple[FusionRun, bool]:
    """(run, fresh): every method at one prune setting; fresh is False when from memory."""
    key = spec_hash("ui-prune", parent_set.data, parent_set.model, prune_spec, fusion_spec, ws.train,
                    list(parent_set.keys), ws.device)

    def compute() -> FusionRun:
        bar = ProgressBar(f"pruning {100 * prune_spec.fraction:.0f} % ({prune_spec.type}), fusing, scoring", None)
        start = time.perf_counter()
        try:
            comparison = pipeline.prune_and_compare(parent_set.data, parent_set.model, parent_set.parents,
                                                    prune_spec, fusion_spec, ws.train, ws.device, bar)
        finally:
            bar.close()
        return FusionRun(comparison, str(resolve_device(ws.device)),
                         "from the disk cache" if comparison.cached else "computed now", time.perf_counter() - start)

    return memo("prune", key, compute)


def prune_sweep(ws: Workspace, parent_set: ParentSet, prune_spec: Any, fusion_spec: FusionSpec,
                fractions: Sequence[float]) -> list:
    """prune_and_compare at each fraction (each point cached on disk), with a progress bar per point."""
    fractions = sorted(set(float(f) for f in fractions))
    key = spec_hash("ui-prune-sweep", parent_set.data, parent_set.model, prune_spec, fusion_spec, ws.train,
                    list(parent_set.keys), fractions, ws.device)

    def compute() -> list:
        bar = ProgressBar(f"sweep over {len(fractions)} prune fractions (cached points return at once)", None)
        try:
            return pipeline.prune_sweep(parent_set.data, parent_set.model, parent_set.parents, prune_spec,
                                        fusion_spec, fractions, ws.train, ws.device, bar)
        finally:
            bar.close()

    return memo("prune-sweep", key, compute)[0]


@dataclass(frozen=True)
class Study:
    """Which comparison the analysis pages look at: a fusion setting, and the prune setting if pruned."""

    fusion: FusionSpec
    prune: Any = None  # PruneSpec, or None for the Fusion page's comparison
    origin: str = ""  # where the fusion setting came from, in words

    @property
    def label(self) -> str:
        """'fusion' or 'pruned 50 % (unstructured, prune-fuse)': the study in a legend or hover."""
        if self.prune is None:
            return "fusion"
        return f"pruned {100 * self.prune.fraction:.0f} % ({self.prune.type}, {self.prune.order})"

    @property
    def fraction(self) -> float:
        return 0.0 if self.prune is None else float(self.prune.fraction)


def studies(parent_set: ParentSet) -> dict[str, Study]:
    """The comparisons on offer: the Fusion page's (or the default fusion), and the Pruning page's current one."""
    fusion, origin = fusion_setting(parent_set)
    out = {"fusion": Study(fusion, None, origin)}
    request = st.session_state.get(PRUNE_REQUEST)
    if request is not None and tuple(request[2]) == parent_set.keys:
        out["pruning"] = Study(request[1], request[0], "the Pruning page's setting")
    return out


def choose_study(ws: Workspace, parent_set: ParentSet, container: Any) -> tuple[Study, Any]:
    """A select box of the studies on offer, and the chosen study's comparison (memoised, computed if needed)."""
    options = studies(parent_set)
    if st.session_state.get(STUDY) not in options:
        st.session_state[STUDY] = "fusion"
    titles = {"fusion": "Fusion page", "pruning": f"Pruning page ({options['pruning'].label})" if "pruning" in options
              else "Pruning page"}
    choice = container.selectbox("Networks of", list(options), format_func=titles.get, key=STUDY,
                                 help="the comparison whose networks are analysed: the Fusion page's setting (its "
                                      "defaults until you fuse there), or the Pruning page's current fraction")
    study = options[choice]
    return study, study_comparison(ws, parent_set, study)


def study_comparison(ws: Workspace, parent_set: ParentSet, study: Study) -> Any:
    """The comparison of a study: the fusion, or the prune setting's (memoised, computed if needed)."""
    if study.prune is None:
        return fuse(ws, parent_set, study.fusion)[0].comparison
    return prune(ws, parent_set, study.prune, study.fusion)[0].comparison


def hessian_settings(label: str = "Hessian settings (SLQ): batches, Lanczos iterations, probes, top-k") -> None:
    """The Hessian settings both analysis pages share, in an expander (their keys keep values across pages)."""
    init_state({k: v for k, v in HESSIAN_DEFAULTS.items() if k.startswith("hessian.")})
    with st.expander(label):
        row = st.columns(4)
        row[0].selectbox("Split", ("test", "train"), key="hessian.split", help="the examples the loss is taken on")
        row[1].number_input("Batches", 1, 100, step=1, key="hessian.batches",
                            disabled=st.session_state["hessian.all_batches"],
                            help="the loss averages these batches; more than one gives the landscape's spread band")
        row[1].checkbox("All (whole split)", key="hessian.all_batches",
                        help="every batch of the split, streamed one at a time; the time estimate shows first")
        row[2].number_input("Batch size", 1, 100_000, step=50, key="hessian.batch_size",
                            help="examples per batch (450: the whole digits test split)")
        row[3].number_input("Top-k eigenvalues", 1, 20, step=1, key="hessian.top_k",
                            help="power iteration with deflation; the 2D surface needs 2")
        row = st.columns(5)
        row[0].number_input("Power iterations", 1, 1000, step=10, key="hessian.power_iters",
                            help="at most, per eigenvalue (stops at relative tolerance 1e-4)")
        row[1].number_input("Lanczos iterations", 2, 1000, step=10, key="hessian.lanczos_iters",
                            help="steps of stochastic Lanczos quadrature: the density's resolution")
        row[2].number_input("Density probes", 1, 100, step=1, key="hessian.density_probes",
                            help="random probe vectors averaged by the spectral density")
        row[3].selectbox("Trace", ("auto", "hutchinson"), key="hessian.trace_method",
                         format_func={"auto": "exact", "hutchinson": "Hutchinson"}.get,
                         help="exact: the sum of the exact Hessian diagonal (every network of the zoo is piecewise "
                              "linear in each weight, which makes it computable); Hutchinson: PyHessian's estimate")
        row[4].number_input("Trace probes", 1, 1000, step=10, key="hessian.trace_probes",
                            disabled=st.session_state["hessian.trace_method"] != "hutchinson",
                            help="Rademacher probes of Hutchinson's trace estimator")


def hessian_spec() -> Any:
    """The HessianSpec of the shared settings and of the Landscape page's λ range (raises SpecError)."""
    from otcore.config import HessianSpec

    s = {**HESSIAN_DEFAULTS, **{k: st.session_state[k] for k in HESSIAN_DEFAULTS if k in st.session_state}}
    low, high = s["landscape.lambda"]
    batches = "all" if s["hessian.all_batches"] else int(s["hessian.batches"])
    return HessianSpec(split=s["hessian.split"], batches=batches,
                       batch_size=int(s["hessian.batch_size"]), top_k=int(s["hessian.top_k"]),
                       power_iters=int(s["hessian.power_iters"]), lanczos_iters=int(s["hessian.lanczos_iters"]),
                       density_probes=int(s["hessian.density_probes"]), trace_method=s["hessian.trace_method"],
                       trace_probes=int(s["hessian.trace_probes"]),
                       lambda_min=float(low), lambda_max=float(high), lambda_points=int(s["landscape.points"]))


def single_networks(comparison: Any) -> list[str]:
    """Methods of a comparison that are one network (the prediction ensemble has no single Hessian)."""
    return [r.method for r in comparison.rows if r.model is not None]


def curvatures(ws: Workspace, parent_set: ParentSet, study: Study, rows: Sequence[Any], spec: Any) -> list:
    """The Hessian analysis of each row's network (memoised, cached on disk), recorded for the sharpness scatter."""
    from otcore import analysis

    key = spec_hash("ui-hessian", parent_set.data, spec, [r.key for r in rows], ws.device)

    def compute() -> list:
        bar = ProgressBar(f"Hessian of {len(rows)} networks: top eigenvalues, trace, spectral density", None)
        try:
            return analysis.curvatures(parent_set.data, list(rows), spec, ws.device, bar)
        finally:
            bar.close()

    result, _ = memo("hessian", key, compute)
    records = st.session_state.setdefault(ANALYSED, {}).setdefault(parent_set.keys, {})
    for c in result:
        records[c.key] = figures.curvature_record(c, study.label, study.fraction)
    return result


def analysed(parent_set: ParentSet) -> list[dict]:
    """Every network of these parents' studies analysed in this session (figures.curvature_record each)."""
    return list(st.session_state.get(ANALYSED, {}).get(parent_set.keys, {}).values())


def interpolation(ws: Workspace, parent_set: ParentSet, path: Sequence[Any], spec: Any, points: int) -> dict:
    """Loss along the straight path through the networks and its barrier (memoised, cached on disk)."""
    from otcore import analysis

    key = spec_hash("ui-interpolation", parent_set.data, spec, [r.key for r in path], points, ws.device)
    return memo("interpolation", key, lambda: analysis.interpolation(parent_set.data, list(path), spec, points,
                                                                     ws.device))[0]


def surface(ws: Workspace, parent_set: ParentSet, row: Any, spec: Any, directions: str, span: float,
            points: int) -> dict:
    """Loss on a plane through one network (memoised, cached on disk), with a spinner while it computes."""
    from otcore import analysis

    key = spec_hash("ui-surface", parent_set.data, spec, row.key, directions, span, points, ws.device)

    def compute() -> dict:
        with st.spinner(f"loss on a {points} × {points} grid around {row.method}"):
            return analysis.surface(parent_set.data, row, spec, directions, span, points, ws.device)

    return memo("surface", key, compute)[0]


def keep_choice(key: str, options: Sequence[Any], default: Any) -> None:
    """Before a select widget over `options` is drawn: its remembered value, less what is no longer on offer.

    A list default is for a multiselect (first visit: the default's names on offer); otherwise a value
    not on offer becomes the default, or the first option.
    """
    if isinstance(default, list):
        value = st.session_state.get(key)
        st.session_state[key] = [m for m in (default if value is None else value) if m in options]
    elif st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]


def retraining_widgets(prefix: str, what: str) -> tuple[float, str, bool]:
    """The retraining recipe's widgets (keys '<prefix>.retrain_lr', '.retrain_schedule', '.retrain_vanilla').

    One recipe for every retraining of a page, not the parents' from-scratch lr; `what` names
    what it retrains, for the help texts.
    """
    d = RetrainSpec()
    init_state({f"{prefix}.retrain_lr": d.lr, f"{prefix}.retrain_schedule": d.schedule,
                f"{prefix}.retrain_vanilla": d.retrain_vanilla})
    a, b, c = st.columns(3)
    lr = a.number_input("Retraining lr", min_value=0.0, step=0.001, format="%.4f", key=f"{prefix}.retrain_lr",
                        help=f"SGD learning rate of {what}; lower than training from scratch, as the net is trained")
    schedule = b.selectbox("Retraining schedule", SCHEDULES, key=f"{prefix}.retrain_schedule",
                           help="step: lr halved after every epoch; cosine: decays to 0 over the retraining; constant")
    vanilla = c.checkbox("Retrain the vanilla average too", key=f"{prefix}.retrain_vanilla",
                         help="same recipe and epochs, so retrained OT fusion is compared with a retrained baseline")
    return float(lr), schedule, vanilla

