"""The ELPV solar-cell data set as a labeled cloud set, an unlabeled edge set and a held-out test set.

ELPV (Buerhop-Lutz et al. 2018; Deitsch et al. 2019): 2,624 real 300 x 300 8-bit grey
electroluminescence images of solar cells, each with a defect probability in {0, 1/3, 2/3, 1} and
the cell type (mono/poly). Licence CC BY-NC-SA 4.0: it is installed from PyPI (`elpv-dataset`,
`pip install --no-deps`) on the user's machine and never committed or redistributed with lnpt.

`prepare_elpv` writes a seeded split stratified by (defect probability, cell type):
    <out>/cloud/<class>/cellNNNN.png   labeled, for the teacher (classes: defect_0.00 .. defect_1.00)
    <out>/edge/cellNNNN.png            unlabeled, for the device (no labels anywhere below edge/)
    <out>/edge_labels.csv              the edge set's labels, only for the supervised comparison
    <out>/test/<class>/cellNNNN.png    held out, for evaluation only
    <out>/split.json                   seed, fractions and counts per class and split
Files are hard links into the installed package where the file system allows (copies otherwise).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from lnpt.shared.files import atomic_write
from lnpt.shared.images import DataError

PACKAGE = "elpv-dataset"
VERSION = "1.0.0.post1"
LICENCE = "CC BY-NC-SA 4.0 (https://github.com/zae-bayern/elpv-dataset): not redistributed by lnpt"
CLASSES = ("defect_0.00", "defect_0.33", "defect_0.67", "defect_1.00")
DEFAULT_FRACTIONS = (0.4, 0.4, 0.2)  # cloud (labeled), edge (unlabeled), test (held out)
SPLITS = ("cloud", "edge", "test")


def elpv_labels_file(install: bool = True) -> Path:
    """`labels.csv` of the installed `elpv-dataset` package, installing it with pip when missing."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None and install:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"{PACKAGE}=={VERSION}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"could not install {PACKAGE} ({' '.join(command)}): {done.stderr.strip()[-500:]}")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"ELPV is not installed: run `pip install --no-deps {PACKAGE}` (or `lnpt data prepare elpv`)")
    labels = Path(list(spec.submodule_search_locations)[0]) / "data" / "labels.csv"
    if not labels.is_file():
        raise DataError(f"{labels} is missing: reinstall with `pip install --force-reinstall --no-deps {PACKAGE}`")
    return labels


def read_labels(labels: Path) -> list[tuple[str, int, str]]:
    """(relative image path, class index, cell type) per row of ELPV's whitespace-separated labels.csv."""
    rows = []
    for line in labels.read_text().splitlines():
        if not line.strip():
            continue
        path, probability, kind = line.split()
        rows.append((path, int(round(float(probability) * 3)), kind))
    return rows


def stratified_split(strata: np.ndarray, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Split id per row (0 = the first fraction: cloud, 1 edge, 2 test): each stratum is shuffled with `seed` and cut by `fractions`."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(strata), dtype=np.int64)
    bounds = np.cumsum(fractions)[:-1]
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        cuts = np.round(bounds * len(members)).astype(int)
        for part, chunk in enumerate(np.split(members, cuts)):
            split[chunk] = part
    return split


def prepare_elpv(out: str | os.PathLike, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                 limit: int = 0, install: bool = True) -> dict:
    """Write the split (see the module docstring) to `out`; returns what `split.json` records.

    `limit` keeps a seeded, stratified subset of that many images first (for quick tests). An
    existing split with the same settings is reused; one with other settings is refused.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"ELPV split fractions (cloud, edge, test) must be three positive numbers summing to 1, got {fractions}")
    out = Path(out)
    settings = {"seed": seed, "fractions": list(fractions), "limit": limit, "source": f"{PACKAGE}=={VERSION}"}
    manifest = out / "split.json"
    if manifest.is_file():
        existing = json.loads(manifest.read_text())
        if {k: existing.get(k) for k in settings} == settings:
            return existing
        raise DataError(f"{out} holds an ELPV split with other settings ({ {k: existing.get(k) for k in settings} }); "
                        "remove it or choose another --out")
    labels_file = elpv_labels_file(install)
    rows = read_labels(labels_file)
    strata = np.array([label * 2 + (kind == "poly") for _, label, kind in rows])
    if limit and limit < len(rows):
        share = limit / len(rows)
        keep = np.flatnonzero(stratified_split(strata, (share, 1 - share), seed) == 0)
        rows, strata = [rows[i] for i in keep], strata[keep]
    split = stratified_split(strata, fractions, seed)
    source = labels_file.parent
    counts = {name: {c: 0 for c in CLASSES} for name in SPLITS}
    edge_rows = []
    for (path, label, kind), part in zip(rows, split):
        name, file = SPLITS[part], Path(path).name
        target = out / name / file if name == "edge" else out / name / CLASSES[label] / file
        place(source / path, target)
        counts[name][CLASSES[label]] += 1
        if name == "edge":
            edge_rows.append((f"edge/{file}", CLASSES[label], kind))
    write_csv(out / "edge_labels.csv", ("path", "label", "type"), edge_rows)
    record = {**settings, "licence": LICENCE, "classes": list(CLASSES), "images": len(rows),
              "counts": counts, "layout": {"cloud": "cloud/<class>/", "edge": "edge/ (unlabeled)",
                                           "edge_labels": "edge_labels.csv (supervised comparison only)",
                                           "test": "test/<class>/"}}
    text = json.dumps(record, indent=2)
    atomic_write(manifest, lambda f: f.write(text.encode()))
    return record


def place(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (a copy across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    def write(f) -> None:
        text = [",".join(header)] + [",".join(map(str, row)) for row in rows]
        f.write(("\n".join(text) + "\n").encode())

    atomic_write(path, write)
