"""The Parents page's "will my architecture work?": `python -m otcore check --json`, run in a subprocess.

Never in the server process: tracing (torch.fx) patches nn.Module.__call__ process-wide while it runs, and
every session shares this process. The result depends only on the architecture and the dataset's shape
and classes (and the installed libraries), so it is memoised per server by those.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from otcore.config import DATASET_SHAPES, DataSpec, ModelSpec, arch_family
from otcore.errors import ModelError
from otcore.methods import ALIGNMENT_LABELS

REPO = Path(__file__).resolve().parent.parent
CHECKED = "parents.checked"  # session key: the (architecture, dataset) pairs this session asked to check
CHECK_TIMEOUT_S = 900  # resnet50-sized networks take minutes on a loaded 2-core CPU; beyond this the check gives up


@st.cache_data(show_spinner=False, max_entries=64)
def _check(arch: str, dataset: str, root: str | None, shape: tuple, source: str) -> dict:
    """The check's JSON (exit 0 or 3), or {'refused': message} for a model it cannot take (exit 2)."""
    command = [sys.executable, "-m", "otcore", "check", "--arch", arch, "--dataset", dataset, "--json"]
    if root:
        command += ["--data-root", root]
    try:
        done = subprocess.run(command, cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"refused": f"the check of {arch} took over {CHECK_TIMEOUT_S // 60} minutes and was stopped"}
    if done.returncode in (0, 3):
        return json.loads(done.stdout)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    if done.returncode == 2 and errors:
        return {"refused": errors[-1][len("error: "):]}
    raise RuntimeError(f"otcore check {arch} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def architecture_check(data: DataSpec, model: ModelSpec) -> dict:
    """The check of the workspace's architecture on its dataset (memoised; ModelError when the model is refused)."""
    shape = DATASET_SHAPES.get(data.name)
    result = _check(model.arch, data.name, data.root, shape, model.source)
    if "refused" in result:
        raise ModelError(f"{model.arch} cannot be checked: {result['refused']}")
    return result


def summary(result: dict) -> str:
    """One line: parameters, groups and their widths, shared groups, weights the permuted copy moved."""
    widths = result["widths"]
    width_text = f"widths {min(widths)}-{max(widths)}" if widths else "no free group"
    return (f"{result['parameters']:,} parameters · {result['groups']} channel groups ({width_text}) · "
            f"{len(result['shared'])} shared by several layers · {100 * result['moved_fraction']:.1f} % of the "
            "weights moved by the permuted copy")


def alignment_table(result: dict) -> pd.DataFrame:
    """Each alignment: the largest |logit difference| between the network and its fusion with its permuted copy
    (as text: '—' where the alignment does not apply)."""
    rows = []
    for a in result["alignments"]:
        refused = a["refused"] is not None
        rows.append({"alignment": f"{ALIGNMENT_LABELS.get(a['alignment'], a['alignment'])} ({a['mode']})",
                     "max |logit diff|": "—" if refused else f"{a['max_difference']:.2e}",
                     "relative": "—" if refused else f"{a['relative']:.1e}",
                     "result": "refused" if a["refused"] else "pass" if a["passed"] else "FAIL",
                     "note": a["refused"] or ""})
    return pd.DataFrame(rows)


def show(data: DataSpec, model: ModelSpec) -> None:
    """The check of the workspace's architecture: one line and a table in a section (open for torchvision and
    timm networks), or one message for a model the check refuses. It runs when asked (a large network takes
    minutes, and a script run waits for it); once asked in this session, it is shown for that architecture."""
    asked = st.session_state.setdefault(CHECKED, set())  # this session's own set: (arch, dataset) it asked for
    if (model.arch, data.name) not in asked:
        slot = st.empty()  # the button goes once pressed: the result takes its place
        left, right = slot.container().columns([1, 3], vertical_alignment="center")
        if not left.button("Check this architecture", key="parents.check", icon=":material/fact_check:",
                           width="stretch"):
            right.caption(f"Will {model.arch} fuse? Reads its channel groups and fuses it with a permuted copy of "
                          "itself by every alignment (`python -m otcore check`: seconds for the zoo, minutes for a "
                          "resnet50).")
            return
        slot.empty()
        asked.add((model.arch, data.name))
    try:
        with st.spinner(f"checking {model.arch} (once per architecture and dataset; large networks take minutes)"):
            result = architecture_check(data, model)
    except ModelError as err:
        st.error(str(err), icon=":material/block:")
        return
    verdict = "passed" if result["passed"] else "FAILED"
    with st.expander(f"Will {model.arch} fuse? Its channel groups and the alignment check: {verdict}",
                     expanded=arch_family(model.arch) != "zoo", icon=":material/fact_check:"):
        st.caption("Fusing a network with a copy of itself whose channel groups were randomly permuted must give "
                   "the network back; each alignment is checked on that (`python -m otcore check`, run in its own "
                   "process), within 1e-4 of the logits' largest magnitude.")
        st.markdown(summary(result))
        if result["shared"]:
            st.caption("Groups several layers write (residual streams, gated channels): " +
                       ", ".join(f"{name} ({n} writers)" for name, n in result["shared"].items()))
        st.dataframe(alignment_table(result), hide_index=True, key="parents.check.table")
