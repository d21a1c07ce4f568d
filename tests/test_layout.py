"""The floors of the package hold: no stage imports another stage, and the library
(``pipeline.core``) imports neither the glue, nor the stages, nor MLflow or DVC. Read with
``ast`` (the same walker as the DVC dependency check), never by importing."""

from __future__ import annotations

import pytest
from test_dvc_deps import ROOT, imported_names, module_name

STAGES = sorted((ROOT / "pipeline" / "stages").glob("[!_]*.py"))
LIBRARY = sorted((ROOT / "pipeline" / "core").rglob("*.py"))
# What the library must not know of: files and services are the glue's business.
NOT_IN_LIBRARY = ("pipeline.glue", "pipeline.stages", "pipeline.cli", "pipeline.bench",
                  "pipeline.report", "pipeline.services", "mlflow", "dvc", "yaml",
                  "psycopg2")


def _names(path):
    return imported_names(path, module_name(ROOT, path))


def _offending(names, prefixes):
    return sorted(n for n in names if any(n == p or n.startswith(f"{p}.") for p in prefixes))


@pytest.mark.parametrize("stage", STAGES, ids=lambda path: path.stem)
def test_no_stage_imports_another(stage):
    others = [f"pipeline.stages.{path.stem}" for path in STAGES if path != stage]
    assert not _offending(_names(stage), others)


@pytest.mark.parametrize("module", LIBRARY, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_library_knows_nothing_of_files_glue_or_services(module):
    assert not _offending(_names(module), NOT_IN_LIBRARY)


def test_the_checks_see_the_modules():
    assert {path.stem for path in STAGES} >= {"prepare", "train_classifier", "occlusion_maps",
                                             "train_estimator", "evaluate", "promote", "tune"}
    assert len(LIBRARY) > 20
    # a stage that imports another would be caught: the walker reads function-level imports
    assert "pipeline.glue.artifacts" in _names(ROOT / "pipeline" / "stages" / "prepare.py")
