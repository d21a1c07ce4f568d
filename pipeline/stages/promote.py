"""DVC stage ``promote``: move the registry's ``champion`` alias to the new model pair, or not.

Reads ``<metrics_dir>/evaluate.json`` (the judged ``hits-classifier`` and
``occlusion-estimator`` versions and their test-split figures) and the registry's current
champions; applies the rule of ``pipeline/core/promotion.py`` with the thresholds of
params.yaml ``promote``. Promoted: alias ``champion`` moves to both new versions. Rejected:
they get alias ``challenger``. Either way both versions are tagged with the decision, the
reason, the compared figures and the run; the decision is logged as the MLflow run
``promote`` and written to ``<metrics_dir>/promote.json``.

``python -m pipeline.stages.promote --force [--note TEXT]`` promotes over a rejection and records
who overruled the rule, and why.
"""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path

from pipeline.core.params import PathsParams
from pipeline.core.promotion import FIDELITY_FIGURES, PROMOTED, PromotionRule, decide
from pipeline.glue import tracking
from pipeline.glue.files import file_sha256, load_params, run_stage, write_json

CHAMPION, CHALLENGER = "champion", "challenger"
ROLES = {"classifier": "train_classifier", "estimator": "train_estimator"}
FIGURE_TAG = "eval.{}"
DATA_TAG = "eval.test_data_sha256"
TAG_LIMIT = 4000  # model-version tag values are capped by the store; reasons can be long


def candidate_from(evaluate: dict, source: str) -> tuple[dict, dict]:
    """(versions, figures) of the pair judged in an evaluate.json: versions
    {"classifier": {"name", "version"}, "estimator": {...}}, figures keyed by ``FIGURES``."""
    judged = evaluate.get("judged", {})
    versions = {}
    for role, stage in ROLES.items():
        entry = judged.get(stage) or {}
        if not entry.get("name") or entry.get("version") is None:
            raise ValueError(f"{source}: no judged {role} version (rerun dvc repro evaluate)")
        versions[role] = {"name": entry["name"], "version": str(entry["version"])}
    headline = evaluate.get("fidelity", {}).get("headline", {})
    figures = {figure: headline.get(figure) for figure in FIDELITY_FIGURES}
    figures["accuracy"] = evaluate.get("classifier", {}).get("accuracy")
    return versions, figures


def champions(client, versions: dict) -> dict | None:
    """{"classifier": version, "estimator": version} holding ``champion`` (None where a
    model has none); None when neither has one."""
    from mlflow.exceptions import MlflowException

    found = {}
    for role, entry in versions.items():
        try:
            found[role] = str(client.get_model_version_by_alias(entry["name"], CHAMPION).version)
        except MlflowException:
            found[role] = None
    return found if any(found.values()) else None


def recorded_figures(client, versions: dict, held: dict) -> tuple[dict, str | None]:
    """The champion pair's figures as its versions' ``eval.*`` tags recorded them, and the
    fingerprint of the test data they were measured on."""
    tags = {role: client.get_model_version(versions[role]["name"], held[role]).tags
            if held[role] else {} for role in versions}
    figures = {figure: _number(tags["estimator"].get(FIGURE_TAG.format(figure)))
               for figure in FIDELITY_FIGURES}
    figures["accuracy"] = _number(tags["classifier"].get(FIGURE_TAG.format("accuracy")))
    return figures, tags["estimator"].get(DATA_TAG)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages.promote",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true",
                        help="promote even when the rule rejects the pair (recorded as forced)")
    parser.add_argument("--note", default="", help="why the rule is overruled (with --force)")
    args = parser.parse_args(argv)

    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    rule = PromotionRule.from_dict(params.get("promote", {}))
    evaluate_file = Path(paths.metrics_dir) / "evaluate.json"
    if not evaluate_file.is_file():
        raise FileNotFoundError(f"{evaluate_file}: not found (run the evaluate stage first)")
    try:
        evaluate = json.loads(evaluate_file.read_text())
    except ValueError as err:
        raise ValueError(f"{evaluate_file}: not valid JSON ({err})") from None
    versions, figures = candidate_from(evaluate, str(evaluate_file))
    test_data = file_sha256(Path(paths.prepared_dir) / "test.npz")

    tracking.configure()
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.glue.completion import check_complete

    client = mlflow.MlflowClient()
    for entry in versions.values():  # a version whose stage never finished is not judged
        try:
            found = client.get_model_version(entry["name"], entry["version"])
        except MlflowException:
            raise ValueError(f"{evaluate_file}: {entry['name']} version {entry['version']} "
                             "is not in the registry (rerun dvc repro)") from None
        check_complete(client, found, str(evaluate_file))
    held = champions(client, versions)
    already = held is not None and all(held[role] == versions[role]["version"]
                                       for role in versions)
    champion_figures, champion_data = (recorded_figures(client, versions, held)
                                       if held and not already else (None, None))
    decision = decide(figures, champion_figures, rule, force=args.force)
    if already:
        # Re-running after a forced promotion must not demote the pair it forced in.
        decision = type(decision)(PROMOTED, "already the champion pair; nothing moved",
                                  False, [])
    comparable = champion_data is None or champion_data == test_data
    result = {
        "decision": decision.decision,
        "reason": decision.reason,
        "forced": decision.forced,
        "checks": decision.to_dict()["checks"],
        "rule": rule.__dict__,
        "candidate": {"versions": versions, "figures": figures, "test_data_sha256": test_data},
        "champion": None if not held or already else {
            "versions": {role: {"name": versions[role]["name"], "version": held[role]}
                         for role in versions},
            "figures": champion_figures, "test_data_sha256": champion_data,
            "same_test_data": comparable},
        # Reported beside the decision, not checked by it (docs/promotion-and-serving.md):
        # bad maps are a handful per test split, too few for a margin rule to be stable.
        "doubt_not_gated": {key: evaluate.get("selective", {}).get(key) for key in (
            "exact_share", "bad_share_estimate", "bad_share_delivered",
            "spearman_doubt_error", "p0_1_r_delivered")} if "selective" in evaluate else None,
    }
    if not comparable:
        print("promote: warning: the champion's figures were measured on other test data")

    with tracking.start_run("promote", params={"promote": rule.__dict__, "force": args.force},
                            tags={"decision": decision.decision, "forced": str(decision.forced),
                                  **{f"{role}_version": v["version"]
                                     for role, v in versions.items()}}) as run:
        # the candidate's figures under the names evaluate and the training stages use
        mlflow.log_metrics({("test_accuracy" if k == "accuracy" else k): v
                            for k, v in figures.items() if v is not None})
        if champion_figures:
            mlflow.log_metrics({f"champion_{k}": v for k, v in champion_figures.items()
                                if v is not None})
        mlflow.set_tag("reason", decision.reason[:TAG_LIMIT])
        if not already:
            _apply(client, versions, decision, run.info.run_id, held, figures, test_data,
                   forced_note=args.note if decision.forced else None)
            _describe(client, versions, decision, evaluate.get("run", {}))
        result["aliases"] = {v["name"]: {alias: _alias(client, v["name"], alias)
                                         for alias in (CHAMPION, CHALLENGER)}
                             for v in versions.values()}
        mlflow.log_dict(result, "promote.json")
    write_json(Path(paths.metrics_dir) / "promote.json", result)
    pair = ", ".join(f"{v['name']} v{v['version']}" for v in versions.values())
    print(f"promote: {decision.decision}{' (forced)' if decision.forced else ''}: {pair}: "
          f"{decision.reason}")


def _apply(client, versions, decision, run_id, held, figures, test_data, forced_note):
    alias = CHAMPION if decision.decision == PROMOTED else CHALLENGER
    compared = ("none" if not held else ", ".join(
        f"{versions[role]['name']} v{held[role]}" for role in versions if held[role]))
    tags = {"promotion.decision": decision.decision,
            "promotion.reason": decision.reason[:TAG_LIMIT],
            "promotion.forced": str(decision.forced).lower(),
            "promotion.run_id": run_id,
            "promotion.compared_with": compared,
            DATA_TAG: test_data,
            **{FIGURE_TAG.format(k): "" if v is None else f"{v:.6f}" for k, v in figures.items()}}
    if decision.forced:
        tags["promotion.forced_by"] = getpass.getuser()
        tags["promotion.force_note"] = (forced_note or "")[:TAG_LIMIT]
    pair = {"classifier": "paired_estimator_version", "estimator": "paired_classifier_version"}
    other = {"classifier": "estimator", "estimator": "classifier"}
    for role, entry in versions.items():
        name, version = entry["name"], entry["version"]
        for key, value in {**tags, pair[role]: versions[other[role]]["version"]}.items():
            client.set_model_version_tag(name, version, key, value)
        if alias == CHAMPION and _alias(client, name, CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
        client.set_registered_model_alias(name, alias, version)


# Where a model version's description begins the promotion's paragraph: promote replaces
# it (a rerun), and keeps what the training stage wrote before it.
DECISION_MARK = "\n\n**Promotion:**"


def _describe(client, versions: dict, decision, evaluated: dict) -> None:
    """Append the decision, its reason and a link to the evaluate run that measured the
    figures to each version's description (replacing an earlier decision's paragraph)."""
    link = ""
    if evaluated.get("run_id"):
        # a link inside the MLflow UI (its pages live under the URL's fragment)
        link = (f" Figures: [the evaluate run](#/experiments/{evaluated.get('experiment_id')}"
                f"/runs/{evaluated['run_id']}).")
    reason = decision.reason.rstrip(".")
    paragraph = (f"{DECISION_MARK} {decision.decision}"
                 f"{' (forced)' if decision.forced else ''}: {reason}.{link}")
    for entry in versions.values():
        name, version = entry["name"], entry["version"]
        before = client.get_model_version(name, version).description or ""
        client.update_model_version(name, version,
                                    before.split(DECISION_MARK)[0] + paragraph)


def _alias(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


if __name__ == "__main__":
    run_stage(main)
