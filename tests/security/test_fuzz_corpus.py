"""The fuzz target (``fuzz/fuzz_headers.py``) over its seed corpus, without atheris.

CI thereby runs the target on every push: each seed through ``extract_token``
and ``Verifier.verify``, where only ``Denied`` (or a verified token) may come out.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "fuzz" / "fuzz_headers.py"


def test_the_fuzz_target_replays_its_seed_corpus() -> None:
    spec = importlib.util.spec_from_file_location("fuzz_headers", TARGET)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.corpus_files([module.CORPUS])
    assert len(files) >= 10
    assert module.replay([module.CORPUS]) == len(files)
    module.VERIFIER.close()
