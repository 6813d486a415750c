"""Prefect operations against a real (temporary, 127.0.0.1) Prefect server.

- ``prefect deploy --all`` of the repository's prefect.yaml, a process worker, a parameterised run;
- ``sftflow serve``: a scheduled deployment served by one command, triggered with parameters;
- sharded curation on a local Dask cluster gives the unsharded result;
and each run's artifacts (markdown summary, funnel table, link to the HTML report) in the API.
The server is the session's one Prefect harness (tests/flows/conftest.py); every process a test
starts is stopped in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
BIN = Path(sys.executable).parent



@pytest.fixture(scope="module")
def api_url(prefect_harness) -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url.startswith("http://127.0.0.1:"), url
    return url


def _env(api_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false", **extra}


def _tiny_sources(tmp_path: Path) -> tuple[Path, Path]:
    lines = (DEMO / "instructions_en.jsonl").read_bytes().splitlines(keepends=True)  # one line is not UTF-8
    a, b = tmp_path / "data" / "a.jsonl", tmp_path / "data" / "b.jsonl"
    a.parent.mkdir(parents=True, exist_ok=True)
    a.write_bytes(b"".join(lines[:40]))
    b.write_bytes(b"".join(lines[40:70]))
    return a, b


def _recipe(tmp_path: Path, name: str, stages: list[dict] | None = None) -> Path:
    a, _ = _tiny_sources(tmp_path)
    data = {"name": name, "sources": [str(a)],
            "stages": stages or [{"quality": {}}, {"dedup": {"threshold": 0.7}}, {"score": {}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _wait(flow_run_id, timeout: float, log: Path | None = None):
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            fr = client.read_flow_run(flow_run_id)
            if fr.state is not None and fr.state.is_final():
                return fr
            time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout} s\n{tail}")


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key!r}"
    return max(found, key=lambda a: a.created)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started, and its children (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=15)


def _check_run_artifacts(slug: str, run_dir: Path, rows_in: int) -> None:
    summary = _artifact(f"{slug}-curation-summary")
    assert summary.type == "markdown" and f"{rows_in} rows in" in summary.data
    funnel = _artifact(f"{slug}-curation-funnel")
    table = json.loads(funnel.data) if isinstance(funnel.data, str) else funnel.data
    assert table[0]["stage"] == "ingest" and table[0]["rows_in"] == rows_in
    link = _artifact(f"{slug}-report")
    report = (run_dir / "report.html").resolve()
    assert report.exists() and report.as_uri() in link.data
    assert _artifact(f"{slug}-trend").type == "table"


def test_sft_eval_parameters_become_train_overrides_of_the_runs_recipe(tmp_path):
    from curation.io import write_json
    from flows.deploy import recipe_of_run, train_overrides
    from flows.recipe import ConfigError, load_recipe

    assert train_overrides("lora", 8, "bf16", None) == ["train.method=lora", "train.lora_r=8", "train.precision=bf16"]
    assert train_overrides() == []
    recipe = load_recipe(REPO / "configs" / "demo.yaml")
    write_json(tmp_path / "run.json", {"recipe": recipe.model_dump(mode="json")})
    r = recipe_of_run(tmp_path, train_overrides("ia3", None, "fp32", 5))
    tc = r.train_config()
    assert (tc.method, tc.precision, tc.max_steps) == ("ia3", "fp32", 5)
    assert r.source_paths() == recipe.source_paths()  # paths still resolve against the recipe's folder
    assert recipe_of_run(tmp_path, ["train.lora_r=4"]).train_config().lora_r == 4
    with pytest.raises(ConfigError, match=r"train\.method"):
        recipe_of_run(tmp_path, ["train.method=nope"])
    with pytest.raises(ConfigError, match="run.json: not found"):
        recipe_of_run(tmp_path / "missing")


@pytest.mark.prefect
@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_worker_runs_a_parameterised_curation(api_url, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectAlreadyExists

    env = _env(api_url, PWD=str(REPO))
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="sftflow-process", type="process"))
        except ObjectAlreadyExists:
            pass
    dep = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert dep.returncode == 0, dep.stdout[-3000:] + dep.stderr[-3000:]

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("curate-sources/nightly")
        on_demand = client.read_deployment_by_name("sft-eval/on-demand")
        full = client.read_deployment_by_name("pipeline/full")
        sharded = client.read_deployment_by_name("curate-sharded/sharded")
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]
    assert not on_demand.schedules and not full.schedules
    assert all(d.work_pool_name == "sftflow-process" for d in (nightly, on_demand, full, sharded))
    assert {"run_dir", "method", "rank", "precision"} <= set(on_demand.parameter_openapi_schema["properties"])
    assert {"recipe", "sources"} <= set(nightly.parameter_openapi_schema["properties"])

    recipe = _recipe(tmp_path, "tiny-worker")
    _, other_source = _tiny_sources(tmp_path)
    run_dir = tmp_path / "runs" / "tiny-worker-1"
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "sftflow-process", "--limit", "1"],
            cwd=tmp_path, env=_env(api_url, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO"),
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        fr = run_deployment("curate-sources/nightly", timeout=0, parameters={
            "recipe": str(recipe), "sources": [str(other_source)], "run_dir": str(run_dir)})
        final = _wait(fr.id, 240, log)
        assert final.state.is_completed(), log.read_text(errors="replace")[-3000:]
    finally:
        _stop(worker)
    summary = json.loads((run_dir / "curate" / "summary.json").read_text())
    # the sources parameter replaced the recipe's sources: 30 lines of b.jsonl, not 40 of a.jsonl
    assert summary["rows_in"] == len(other_source.read_bytes().splitlines()) == 30
    _check_run_artifacts("tiny-worker", run_dir, summary["rows_in"])


@pytest.mark.prefect
@pytest.mark.slow
def test_sftflow_serve_schedules_a_recipe_and_runs_it_with_parameters(api_url, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    recipe = _recipe(tmp_path, "tiny-served")
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        serve = subprocess.Popen(
            [sys.executable, "-c", "from flows.cli import main; main()", "serve", "--recipe", str(recipe),
             "--cron", "*/30 * * * *", "--name", "tiny-served", "--set", "stages.dedup.threshold=0.9"],
            cwd=tmp_path, env=_env(api_url), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    run_dir = tmp_path / "runs" / "served-1"
    try:
        deployment = None
        deadline = time.time() + 120
        with get_client(sync_client=True) as client:
            while deployment is None and time.time() < deadline:
                assert serve.poll() is None, log.read_text(errors="replace")[-3000:]
                try:
                    deployment = client.read_deployment_by_name("curate-sources/tiny-served")
                except ObjectNotFound:
                    time.sleep(1)
        assert deployment is not None, log.read_text(errors="replace")[-3000:]
        assert [s.schedule.cron for s in deployment.schedules] == ["*/30 * * * *"]
        assert deployment.parameters["overrides"] == ["stages.dedup.threshold=0.9"]
        fr = run_deployment("curate-sources/tiny-served", timeout=0, parameters={"run_dir": str(run_dir)})
        final = _wait(fr.id, 180, log)
        assert final.state.is_completed(), log.read_text(errors="replace")[-3000:]
    finally:
        _stop(serve)
    info = json.loads((run_dir / "run.json").read_text())
    dedup = next(s["dedup"] for s in info["recipe"]["stages"] if "dedup" in s)
    assert dedup["threshold"] == 0.9  # the served --set override reached the run
    _check_run_artifacts("tiny-served", run_dir, info["curate"]["rows_in"])


@pytest.mark.prefect
@pytest.mark.slow
def test_sharded_curation_on_dask_equals_the_unsharded_run(prefect_harness, tmp_path):
    from curation.pipeline import curate
    from flows.recipe import load_recipe
    from flows.scaleout import sharded_curate_flow

    stages = [{"quality": {}}, {"dedup": {"threshold": 0.7}}, {"score": {}},
              {"select": {"budget": 40, "embeddings": "hashing"}},
              {"mix": {"general": [str(DEMO / "general.jsonl")], "ratio": 0.2, "seed": 0}}]
    r = load_recipe(_recipe(tmp_path, "tiny-sharded", stages),
                    [f"sources={json.dumps([str(DEMO / 'instructions_en.jsonl'), str(DEMO / 'instructions_zh.json')])}"])
    res = sharded_curate_flow(r, str(tmp_path / "sharded"), shards=3)
    plain = curate(r.source_paths(), r.stage_list(), tmp_path / "plain" / "curate", ingest_config=r.ingest)

    assert res["sharded_stages"] == ["quality", "score"]
    sharded = res["curate"]
    assert sharded.fingerprint == plain.fingerprint

    def funnel(s) -> list[dict]:
        return [st.model_dump(exclude={"seconds", "cached"}) for st in s.stages]

    assert funnel(sharded) == funnel(plain)
    for name in ("output.parquet", "ledger.parquet"):
        a = pq.read_table(tmp_path / "sharded" / "curate" / name)
        b = pq.read_table(tmp_path / "plain" / "curate" / name)
        assert a.num_rows > 0 and a.equals(b), name
    q_sharded = json.loads((tmp_path / "sharded" / "curate" / "01_quality" / "stats.json").read_text())
    q_plain = json.loads((tmp_path / "plain" / "curate" / "01_quality" / "stats.json").read_text())
    assert q_sharded["shards"] == 3
    for key in ("rules_fired", "score_histogram", "dropped_examples"):
        assert q_sharded["extra"][key] == q_plain["extra"][key], key
    s_sharded = json.loads((tmp_path / "sharded" / "curate" / "03_score" / "stats.json").read_text())["extra"]
    s_plain = json.loads((tmp_path / "plain" / "curate" / "03_score" / "stats.json").read_text())["extra"]
    assert s_sharded["task_types"] == s_plain["task_types"]
    assert s_sharded["complexity_histogram"] == s_plain["complexity_histogram"]
    assert s_sharded["complexity_mean"] == pytest.approx(s_plain["complexity_mean"], abs=1e-3)
    assert not list((tmp_path / "sharded" / "curate").rglob("shard-*"))  # shards are cleaned up


@pytest.mark.prefect
@pytest.mark.slow
def test_sft_eval_flow_fine_tunes_a_curated_run_with_the_given_rank(prefect_harness, tmp_path):
    from flows.deploy import sft_eval_flow
    from flows.flows import curate_flow

    a, _ = _tiny_sources(tmp_path)
    recipe = tmp_path / "tiny-sft.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny-sft", "sources": [str(a)], "stages": [{"quality": {}}], "heldout": {"fraction": 0.1},
        "train": {"model": "tiny-random-llama", "method": "ia3", "precision": "fp32", "max_steps": 5,
                  "batch_size": 2, "seq_len": 256, "too_long": "truncate"}}))
    run_dir = tmp_path / "runs" / "tiny-sft-1"
    curate_flow(str(recipe), str(run_dir))
    # the deployment's parameters: only the run folder and the SFT knobs; the recipe comes from run.json
    out = sft_eval_flow(str(run_dir), method="lora", rank=4, max_steps=2)
    config = json.loads((run_dir / "train" / "train_config.json").read_text())
    assert (config["method"], config["lora_r"], config["max_steps"]) == ("lora", 4, 2)
    assert out["train"]["steps"] == 2 and "verdict" not in out  # the recipe has no eval section
    sft_log = _artifact("tiny-sft-sft-log")
    table = json.loads(sft_log.data) if isinstance(sft_log.data, str) else sft_log.data
    assert [r["step"] for r in table] == [1, 2] and all(r["loss"] > 0 for r in table)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    training = html.split('<section id="training">', 1)[1].split("</section>", 1)[0]
    assert "not run" not in training and (run_dir / "report.html").resolve().as_uri() in \
        _artifact("tiny-sft-report").data
