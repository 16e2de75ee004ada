"""Real services on 127.0.0.1: a Prefect server with a serve process runs the new-attribute deployment;
an `mlflow server` shows the logged runs through its REST API. Every process started is stopped by PID."""

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from .pipeline_util import ROOT, free_port, start, stop, tool_env, wait_http
from .test_flows import tiny_params

pytestmark = pytest.mark.slow


def api(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_prefect_deployment_run_new_attribute(tmp_path):
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = tool_env(
        {
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
    )
    params, out = tiny_params(tmp_path), tmp_path / "out"
    server = start(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "server.log",
    )
    serve = None
    try:
        wait_http(f"{api_url}/health", 120, server)
        serve = start(
            [sys.executable, "-m", "flows.serve", "--params", str(params), "--out", str(out)],
            env,
            tmp_path / "serve.log",
        )
        deadline = time.monotonic() + 120
        while True:  # the serve process registers the deployments
            try:
                api(f"{api_url}/deployments/name/new-attribute/offline")
                break
            except OSError:
                assert time.monotonic() < deadline and serve.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(1)
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "prefect",
                "deployment",
                "run",
                "new-attribute/offline",
                "-p",
                "source=a shape",
                "-p",
                "target=a green shape",
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout).group(1)
        deadline = time.monotonic() + 600
        while True:
            state = api(f"{api_url}/flow_runs/{run_id}")["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, f"flow run still {state['type']}"
            time.sleep(2)
        assert state["type"] == "COMPLETED", (state, (tmp_path / "serve.log").read_text()[-3000:])
    finally:
        for proc in (serve, server):
            if proc is not None:
                stop(proc)
    metrics = json.loads((out / "attributes" / "a_green_shape" / "evaluate" / "metrics.json").read_text())
    assert metrics["target"] == "a green shape" and -1 <= metrics["s_dir"]["mean"] <= 1
    assert server.poll() is not None and serve.poll() is not None


def test_mlflow_server_rest_api(tmp_path):
    """Stage outputs logged (queued, then drained) through an `mlflow server`, read back with its REST API."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = tool_env({"MLFLOW_TRACKING_URI": url})
    server = start(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--workers",
            "1",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        env,
        tmp_path / "mlflow.log",
    )
    try:
        wait_http(f"{url}/health", 120, server)
        out = tmp_path / "out"
        params = tiny_params(tmp_path)
        for stage, attr in (
            ("download", None),
            ("invert", None),
            ("schedule", None),
            ("train", "red"),
            ("edit", "red"),
            ("evaluate", "red"),
        ):
            cmd = [
                sys.executable,
                "-m",
                f"pipeline.stages.{stage}",
                *([attr] if attr else []),
                "--params",
                str(params),
                "--out",
                str(out),
            ]
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0 and "mlflow: queued" in res.stdout, res.stdout + res.stderr
        # the stages queued their logging (a background drainer works on it); draining waits for the rest
        drain = [sys.executable, "-m", "pipeline.tracking", "drain", "--out", str(out)]
        res = subprocess.run(drain, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not [p for p in (out / ".tracking" / "queue").iterdir() if not p.name.startswith(".")]
        exp = api(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=asyrp-offline")["experiment"]
        runs = api(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert set(by_name) == {"reproduce-offline", "red"}
        red = by_name["red"]["data"]
        metric_keys = {m["key"] for m in red["metrics"]}
        assert {"loss", "s_dir.mean", "lpips_edit.mean", "train.loss_final"} <= metric_keys
        params_logged = {p["key"]: p["value"] for p in red["params"]}
        assert params_logged["target"] == "a red shape" and "t_edit" in params_logged
        tags = {t["key"]: t["value"] for t in red["tags"]}
        assert tags["asyrp.attribute"] == "red" and tags["asyrp.stage.evaluate"] == "done"
        models = api(f"{url}/api/2.0/mlflow/registered-models/get?name=asyrp-offline-red")["registered_model"]
        assert {a["alias"] for a in models["aliases"]} == {"candidate", "champion"}
    finally:
        stop(server)
    assert server.poll() is not None
