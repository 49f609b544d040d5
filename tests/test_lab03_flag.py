"""Lab 3's data set is chosen in one place: metadata.dlmi.data.flag (what the grader loads and
scores) — the setup cell's FLAG must name the same flag, and the lab's thresholds must cover it."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab03-cnn-classifier"


def _notebook(folder: str) -> dict:
    return json.loads((ROOT / folder / LAB / f"{LAB}.ipynb").read_text())


def _cell(nb: dict, grade_id: str) -> str:
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)
    return "".join(cell["source"])


def test_setup_flag_is_the_graded_flag():
    for folder in ("solutions", "labs"):
        nb = _notebook(folder)
        flags = re.findall(r'^FLAG = "(\w+)"', _cell(nb, "setup"), flags=re.M)
        graded = nb["metadata"]["dlmi"]["data"]["flag"]
        assert flags == [graded], (f"{folder}/{LAB}: the setup cell sets FLAG = {flags}, metadata.dlmi.data.flag is "
                                   f"{graded!r}: change both together")


def test_synthetic_thresholds_cover_the_graded_flag():
    nb = _notebook("solutions")
    table = re.search(r'"synthetic": (\{.*?\}\}),', _cell(nb, "test_model"), flags=re.S).group(1)
    assert f'"{nb["metadata"]["dlmi"]["data"]["flag"]}"' in table, "measure the stand-in thresholds for the lab's flag"
