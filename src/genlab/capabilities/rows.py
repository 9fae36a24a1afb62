"""Table rows: fill missing cells (`genlab impute`), score rows for anomaly (`genlab score`), draw synthetic rows
(`genlab sample --out rows.csv`), the same three over `/v1/tabular/*`, and `genlab evaluate`'s imputation, anomaly
and fidelity figures beside scikit-learn's (evaluation/tabular.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field

from genlab.capabilities import Capability, Done, Verb, check_has
from genlab.config.section import Section
from genlab.evaluation.figures import Figure
from genlab.quiet import quiet
from genlab.run import Run, as_run
from genlab.serving.guard import Refused
from genlab.serving.schemas import ModelRequest
from genlab.serving.served import Served
from genlab.serving.server import Server, authorize, limit, run_job, served_for


class TableModel(Protocol):
    columns: Any  # the training table's columns (data/columns.py): names, dtypes, categories

    def impute(self, frame: Any, seed: int = 0, where: str = "table") -> Any: ...
    def score(self, frame: Any, seed: int = 0, where: str = "table") -> Any: ...
    def sample(self, n: int, *, generator: Any = None, **options: Any) -> Any: ...


# --- verbs and their API functions --------------------------------------------------------------------------


class RowsFile(Section):
    """Arguments of the table verbs: a file of rows in, the same rows with the verb's answer out."""

    source: Path = Field(description="A CSV or parquet file of rows.")
    out: Path = Field(description="Where to write the result (.csv or .parquet).")
    seed: int = Field(0, ge=0, description="Same seed, same answer.")


@quiet
def impute_file(run: Run | str | Path, source: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """Fill the missing cells of a CSV or parquet file; every row, column and present cell is written back as it
    was."""
    from genlab.media.formats import write_table

    run, frame = _run_and_rows(run, source)
    return write_table(run.model.impute(frame, seed=seed, where=Path(source).name), out)


@quiet
def score_file(run: Run | str | Path, source: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """The input rows with an `anomaly_score` column (higher is more anomalous), in order."""
    from genlab.media.formats import write_table

    run, frame = _run_and_rows(run, source)
    scored = frame.assign(anomaly_score=run.model.score(frame, seed=seed, where=Path(source).name).to_numpy())
    return write_table(scored, out)


def _run_and_rows(run: Run | str | Path, source: str | Path):
    from genlab.data.table import read_table

    run = as_run(run)
    check_has(run.config.model.family, "rows", run.path)
    frame, _ = read_table(Path(source), drop_empty=False)
    return run, frame


def impute_command(run: Run, source: Path, out: Path, seed: int = 0) -> Done:
    return Done([f"wrote the imputed table to {impute_file(run, source, out, seed=seed)}"])


def score_command(run: Run, source: Path, out: Path, seed: int = 0) -> Done:
    return Done([f"wrote anomaly scores to {score_file(run, source, out, seed=seed)}"])


# --- serving ---------------------------------------------------------------------------------------------------


class RowsRequest(ModelRequest):
    rows: list[dict[str, Any]] = Field(min_length=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)


class TableSampleRequest(ModelRequest):
    n: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    model_config = ConfigDict(extra="allow")  # any other field is one of the family's sampling options


class ServedTable(Served):
    """Impute, score and sample rows, one request per call."""

    kind = "rows"

    def run_batch(self, key: Any, items: list[Any]) -> list[Any]:
        import pandas as pd
        import torch

        action, seed, options = key[0], key[1], dict(key[2])
        out = []
        for rows in items:
            if action == "sample":
                out.append(records(self.model.sample(rows, generator=torch.Generator().manual_seed(seed), **options)))
            elif action == "impute":
                out.append(records(self.model.impute(pd.DataFrame.from_records(rows), seed=seed, where="rows")))
            else:
                out.append(self.model.score(pd.DataFrame.from_records(rows), seed=seed, where="rows").tolist())
        return out


router = APIRouter(tags=["tables"])


def _rows(server: Server, served: Served, body: RowsRequest) -> list[str]:
    """Refuse too many rows or rows with none of the model's columns; warnings for columns it does not know."""
    limit("rows", len(body.rows), server.config.limits.max_rows, "rows")
    known = [c.name for c in served.model.columns.columns]
    sent = sorted(set().union(*(row.keys() for row in body.rows)))
    if not set(sent) & set(known):
        raise Refused(400, f"rows: none of the columns sent ({', '.join(sent)}) is the model's: {', '.join(known)}",
                      code="invalid_value")
    extra = [c for c in sent if c not in known]
    return [f"rows: column(s) {', '.join(extra)} are not the model's; passed through unchanged"] if extra else []


@router.post("/v1/tabular/impute")
async def impute(body: RowsRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """The rows with every missing cell (null or absent) filled; present cells come back as sent."""
    return await _on_rows(request, body, "impute", "rows")


@router.post("/v1/tabular/score")
async def score(body: RowsRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """An anomaly score per row (higher is odder): the negative bound on the row's log-likelihood."""
    return await _on_rows(request, body, "score", "scores")


async def _on_rows(request: Request, body: RowsRequest, action: str, field: str) -> dict:
    server, served = served_for(request, body.model, ServedTable, f"/v1/tabular/{action}")
    warnings = _rows(server, served, body)
    out = (await run_job(served, (action, body.seed, (), object()), [body.rows], request))[0]
    return {"object": "list", "model": served.name, field: out, "warnings": warnings}


@router.post("/v1/tabular/sample")
async def sample_rows(body: TableSampleRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """`n` synthetic rows, with the training table's columns; the same seed gives the same rows. Other fields are
    the family's sampling options (temperature...), over the model's own."""
    server, served = served_for(request, body.model, ServedTable, "/v1/tabular/sample")
    limit("n", body.n, server.config.limits.max_rows, "rows")
    options = tuple(sorted(served.options(body.model_extra or {}).items()))
    rows = (await run_job(served, ("sample", body.seed, options, object()), [body.n], request))[0]
    return {"object": "list", "model": served.name, "rows": rows}


ServedTable.router = router


def records(frame: Any) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: missing cells become null."""
    return json.loads(frame.to_json(orient="records"))


CAPABILITY = Capability(
    "rows", TableModel,
    verbs=(Verb("impute", "Fill a table's missing cells; every row, column and present cell is kept as it was.",
                RowsFile, impute_command, inputs=("source",)),
           Verb("score", "Score each row for anomaly (negative likelihood bound; higher is more anomalous).",
                RowsFile, score_command, inputs=("source",))),
    served=ServedTable, evaluator="genlab.evaluation.tabular:evaluate_table",
    headline=(Figure("imputation.genlab.rmse", "imputation RMSE", False,
                     ("imputation.IterativeImputer.rmse", "IterativeImputer")),
              Figure("imputation.genlab.accuracy", "imputation accuracy", True,
                     ("imputation.IterativeImputer.accuracy", "IterativeImputer")),
              Figure("anomaly.auroc.genlab", "anomaly AUROC", True,
                     ("anomaly.auroc.IsolationForest", "IsolationForest")),
              Figure("synthetic.mean_ks", "synthetic KS", False)),
    audit="genlab.responsible.table_audit:audit_table")
