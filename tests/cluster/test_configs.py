"""The cluster configurations in cluster/ are valid and keep their security defaults (no cluster needed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
BUCKET = "s3://YOUR-BUCKET/automaster"


def _load(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def _load_all(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


# ---------------------------------------------------------------------------------------------
# cluster launcher (cluster/aws.yaml)


@pytest.fixture(scope="module")
def aws() -> dict:
    return _load(CLUSTER / "aws.yaml")


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray

    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"no cluster-launcher schema at {path}"
    return json.loads(path.read_text())


def _commands(cfg: dict, key: str) -> str:
    return "\n".join(cfg.get(key) or [])


def test_aws_matches_ray_cluster_launcher_schema(aws, ray_schema):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(ray_schema)
    errors = sorted(validator.iter_errors(aws), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_aws_schema_check_is_not_vacuous(aws, ray_schema):
    """The schema rejects what Ray rejects: a fractional GPU count and an unknown top-level key."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(ray_schema)
    broken = json.loads(json.dumps(aws))
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    broken["dashboard_port"] = 8265
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("0.5" in m for m in messages), messages
    assert any("dashboard_port" in m for m in messages), messages


def test_aws_passes_rays_own_validation(aws):
    """What `ray up` does first: fill in the provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(json.loads(json.dumps(aws)))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


def test_aws_has_cpu_and_gpu_autoscaling_workers(aws):
    types = aws["available_node_types"]
    head = aws["head_node_type"]
    workers = {name: t for name, t in types.items() if name != head}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) > 0]
    assert gpu and cpu, workers
    for t in gpu + cpu:
        assert t.get("min_workers", 0) == 0 and t["max_workers"] > 0, t  # they scale from zero
    assert all(re.match(r"g\d", t["node_config"]["InstanceType"]) for t in gpu)
    assert all(re.match(r"c\d", t["node_config"]["InstanceType"]) for t in cpu)
    assert aws["max_workers"] >= max(t["max_workers"] for t in workers.values())


def test_aws_installs_the_project_with_its_constraints(aws):
    mounts = aws["file_mounts"]
    checkout = next(remote for remote, local in mounts.items() if local in (".", "./"))
    setup = _commands(aws, "setup_commands")
    assert f"cd {checkout}" in setup
    assert re.search(r"pip install\b.*-c constraints\.txt -e \.", setup), setup
    assert (REPO / "constraints.txt").is_file()
    assert "ray==2.60.0" in (REPO / "constraints.txt").read_text()
    for pattern in (".venv", "data", "mlruns", "*.parquet"):
        assert pattern in aws["rsync_exclude"], pattern


def test_aws_token_auth_everywhere_and_no_public_dashboard(aws):
    head = _commands(aws, "head_start_ray_commands")
    worker = _commands(aws, "worker_start_ray_commands")
    for cmds in (head, worker):
        starts = [line for line in cmds.splitlines() if "ray start" in line or "RAY_AUTH_MODE" in line]
        assert starts and "RAY_AUTH_MODE=token" in cmds, cmds
    # the same token file reaches every node; it is never on a command line
    assert "~/.ray/auth_token" in aws["file_mounts"]
    assert "RAY_AUTH_TOKEN=" not in head + worker
    # the dashboard/job server binds loopback on the head: reached through `ray dashboard` (SSH)
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    perms = aws["provider"].get("security_group", {}).get("IpPermissions", [])
    opened = {p.get("FromPort") for p in perms}
    assert not opened & {8265, 6379, 10001, 5000}, perms


def test_aws_shared_storage_and_mlflow_server_on_head(aws):
    head = _commands(aws, "head_start_ray_commands")
    worker = _commands(aws, "worker_start_ray_commands")
    assert "mlflow server" in head
    assert f"--artifacts-destination {BUCKET}/" in head
    assert re.search(r"--backend-store-uri sqlite:////", head), "absolute SQLite path"
    assert re.search(r"MLFLOW_TRACKING_URI=\"?http://\$\(hostname -I", head)
    assert 'MLFLOW_TRACKING_URI="http://$RAY_HEAD_IP:5000"' in worker
    assert f"AUTOMASTER_STORAGE={BUCKET}" in head and f"AUTOMASTER_STORAGE={BUCKET}" in worker


# ---------------------------------------------------------------------------------------------
# runtime_env.yaml


def test_runtime_env_ships_the_code_and_excludes_data():
    env = _load(CLUSTER / "runtime_env.yaml")
    assert env["working_dir"] == "."
    excludes = set(env["excludes"])
    for needed in (".git/", ".venv/", "data/", "results/", "runs/", "mlruns/", "mlflow.db", "*.parquet"):
        assert needed in excludes, needed
    # it must not exclude the code
    for code in ("automaster/", "jobs/", "*.py"):
        assert code not in excludes


def test_runtime_env_is_accepted_by_ray_job_submit():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    env = parse_runtime_env_args(runtime_env=str(CLUSTER / "runtime_env.yaml"))
    assert env["working_dir"] == "."
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # raises on unknown or malformed fields


def _ray_package(tree: Path, runtime_env: dict, zip_path: Path) -> list[str]:
    """The files `ray job submit` would upload for ``runtime_env`` with working_dir ``tree``.

    Ray's own code path: upload_working_dir_if_needed combines Ray's default excludes with the
    runtime env's, then create_package zips the folder honouring them and .gitignore/.rayignore.
    """
    import zipfile

    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    def upload(working_dir, excludes, is_file=False):
        create_package(working_dir, zip_path, include_gitignore=True, excludes=excludes)

    upload_working_dir_if_needed({**runtime_env, "working_dir": str(tree)}, include_gitignore=True, upload_fn=upload)
    with zipfile.ZipFile(zip_path) as z:
        return sorted(n for n in z.namelist() if not n.endswith("/"))


def test_runtime_env_ships_the_shipped_models_and_no_other_weights(tmp_path):
    """The reference model and the level model (models/level, the restore preset's default:
    before, a submitted master job ran without it and kept the restored level, silently), and the
    previous level model (models/spectral)."""
    env = _load(CLUSTER / "runtime_env.yaml")
    tree = tmp_path / "checkout"
    files = [
        "automaster/__init__.py", "jobs/master.py", "README.md", "cluster/runtime_env.yaml",
        "models/reference/model.pt", "models/reference/config.json", "models/reference/MODEL_CARD.md",
        "models/reference/metrics.json", "models/spectral/model.pt", "models/spectral/config.json",
        "models/level/trees.npz", "models/level/MODEL_CARD.md",
        # never shipped: other models and weights anywhere, checkpoints, data, results, environments
        "models/run7/model.pt", "models/run7/config.json", "models/notes.md", "bench/models/x/config.json",
        "top.pt", "automaster/stray.ckpt", "checkpoints/epoch1/state.json", "results/train/model/model.pt",
        "data/paired/dataset/1.parquet", "tests/x.parquet", "mlruns/0/meta.yaml", "mlflow.db", ".venv/bin/python",
        ".git/HEAD", "automaster/__pycache__/x.pyc", "take.wav",
    ]  # fmt: skip
    for rel in files:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    (tree / ".gitignore").write_text((REPO / ".gitignore").read_text())
    shipped = _ray_package(tree, env, tmp_path / "pkg.zip")
    assert shipped == sorted([
        ".gitignore", "README.md", "automaster/__init__.py", "cluster/runtime_env.yaml", "jobs/master.py",
        "models/reference/MODEL_CARD.md", "models/reference/config.json", "models/reference/metrics.json",
        "models/level/MODEL_CARD.md", "models/level/trees.npz",
        "models/reference/model.pt", "models/spectral/config.json", "models/spectral/model.pt",
    ])  # fmt: skip


def test_runtime_env_upload_of_this_checkout_is_small_and_complete(tmp_path):
    shipped = _ray_package(REPO, _load(CLUSTER / "runtime_env.yaml"), tmp_path / "pkg.zip")
    size = (tmp_path / "pkg.zip").stat().st_size
    assert size < 20 * 2**20, f"{size / 2**20:.1f} MiB"
    assert "automaster/pipelines/runtime.py" in shipped and "jobs/master.py" in shipped
    assert not [n for n in shipped if n.startswith((".venv/", ".git/", "mlruns/", "results/")) or n.endswith(".parquet")]
    for shipped_model in ("reference", "level", "spectral"):  # every file of the shipped models goes with the job
        folder = REPO / "models" / shipped_model
        expected = {p.relative_to(REPO).as_posix() for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        assert expected and expected <= set(shipped), expected - set(shipped)
    assert not [n for n in shipped if n.endswith((".pt", ".ckpt")) and not n.startswith(("models/reference/", "models/spectral/"))]


def test_gitignore_keeps_the_reference_model_in_the_repository():
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for rel in ("models/reference/model.pt", "models/reference/config.json", "models/reference/MODEL_CARD.md"):
        proc = subprocess.run([git, "check-ignore", "-q", "--no-index", rel], cwd=REPO, capture_output=True)
        assert proc.returncode == 1, f"{rel} is ignored by git (check-ignore exit {proc.returncode})"


# ---------------------------------------------------------------------------------------------
# KubeRay


KUBERAY_FILES = ["raycluster.yaml", "rayjob-demaster.yaml", "rayjob-tune.yaml"]


def _ray_cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def _containers(spec: dict) -> list[dict]:
    return [c for group in _groups(spec) for c in group["template"]["spec"]["containers"]]


def _ray_docs() -> list[tuple[str, dict]]:
    out = []
    for name in KUBERAY_FILES:
        for doc in _load_all(KUBERAY / name):
            if doc.get("kind") in ("RayCluster", "RayJob"):
                out.append((name, doc))
    return out


def test_kuberay_files_parse_and_have_required_fields():
    kinds = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in _load_all(path):
            for field in ("apiVersion", "kind", "metadata", "spec"):
                assert field in doc, f"{path.name}: {doc.get('kind')} lacks {field}"
            assert doc["metadata"].get("name"), path.name
            kinds.setdefault(doc["kind"], []).append(path.name)
    assert kinds.get("RayCluster") == ["raycluster.yaml"]
    assert sorted(kinds.get("RayJob", [])) == ["rayjob-demaster.yaml", "rayjob-tune.yaml"]


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_ray_resources(name):
    docs = [doc for doc in _load_all(KUBERAY / name) if doc["kind"] in ("RayCluster", "RayJob")]
    assert len(docs) == 1
    doc = docs[0]
    assert doc["apiVersion"] == "ray.io/v1"
    spec = _ray_cluster_spec(doc)
    assert spec["rayVersion"] == "2.60.0"
    assert "rayStartParams" in spec["headGroupSpec"]
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"  # not exposed
    assert spec.get("workerGroupSpecs"), "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert "rayStartParams" in group, group["groupName"]
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
    for container in _containers(spec):
        res = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{name}: {container['name']} {kind}"
        assert container["image"].startswith("YOUR-REGISTRY/automaster:"), container["image"]
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert {"/data", "/dev/shm"} <= mounts, f"{name}: {container['name']} mounts {mounts}"
    # token authentication: the operator-managed Secret, or explicit env on every container
    if spec.get("authOptions", {}).get("mode") != "token":
        for container in _containers(spec):
            env = {e["name"]: e for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", container["name"]
            assert "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}), container["name"]


def test_kuberay_gpu_workers_request_gpus():
    for name, doc in _ray_docs():
        if name == "rayjob-demaster.yaml":
            continue  # CPU only
        groups = {g["groupName"]: g for g in _ray_cluster_spec(doc)["workerGroupSpecs"]}
        gpu = groups.get("gpu-workers")
        assert gpu, f"{name}: no gpu-workers group"
        for c in gpu["template"]["spec"]["containers"]:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert c["image"].endswith("-gpu")


def test_kuberay_declares_the_shared_volume_to_the_jobs():
    """Every pod mounts the shared volume at /data; jobs on a multi-node cluster refuse local paths
    outside AUTOMASTER_SHARED_PATHS, so every Ray container and every RayJob declares /data."""
    for name, doc in _ray_docs():
        for container in _containers(_ray_cluster_spec(doc)):
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            assert "/data" in env.get("AUTOMASTER_SHARED_PATHS", "").split(":"), f"{name}: {container['name']}"
        if doc["kind"] == "RayJob":
            env_vars = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
            assert "/data" in env_vars["AUTOMASTER_SHARED_PATHS"].split(":"), name


def test_kuberay_storage_claim_exists():
    claims = {d["metadata"]["name"] for d in _load_all(KUBERAY / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"}
    for name, doc in _ray_docs():
        for group in _groups(_ray_cluster_spec(doc)):
            for vol in group["template"]["spec"].get("volumes", []):
                if "persistentVolumeClaim" in vol:
                    assert vol["persistentVolumeClaim"]["claimName"] in claims, name


def _rayjobs() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in _ray_docs() if doc["kind"] == "RayJob"]


@pytest.mark.parametrize("name", ["rayjob-demaster.yaml", "rayjob-tune.yaml"])
def test_rayjob_runs_a_real_job(name):
    doc = dict(_rayjobs())[name]
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/automaster"
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://")
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and re.fullmatch(r"jobs/\w+\.py", argv[1]), argv
    expected = {"rayjob-demaster.yaml": ("jobs/demaster.py", "--corpus", "--out"), "rayjob-tune.yaml": ("jobs/tune.py", "--data", "--out")}[name]
    assert argv[1] == expected[0]
    for flag in expected[1:]:
        value = argv[argv.index(flag) + 1]
        # a submitted job runs in a copy of working_dir: data paths must be absolute or URIs
        assert value.startswith("/") or "://" in value, f"{flag} {value}"


def test_dockerfile_installs_what_the_rayjobs_run():
    text = (KUBERAY / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in text and "rayproject/ray:2.60.0" in text
    assert "WORKDIR /home/ray/automaster" in text
    assert "pip install --no-cache-dir -c constraints.txt -e ." in text
    assert "COPY --chown=ray:users jobs ./jobs" in text
    for copied in ("pyproject.toml", "constraints.txt", "automaster", "jobs"):
        assert (REPO / copied).exists(), copied


def _entrypoint_jobs() -> list[tuple[str, str, list[str]]]:
    """(manifest, job file, argv) for every RayJob entrypoint."""
    out = []
    for name, doc in _rayjobs():
        argv = shlex.split(doc["spec"]["entrypoint"])
        out.append((name, argv[1], argv))
    return out


@pytest.mark.parametrize("name,job,argv", _entrypoint_jobs(), ids=[f"{n}:{j}" for n, j, _ in _entrypoint_jobs()])
def test_rayjob_entrypoint_file_exists_and_accepts_its_flags(name, job, argv):
    path = REPO / job
    if not path.exists():
        pytest.skip(f"{job} does not exist yet (referenced by cluster/kuberay/{name})")
    flags = [a for a in argv[2:] if a.startswith("--")]
    env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(REPO))
    help_text = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    for flag in flags:
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", help_text.stdout), f"{job} --help has no {flag}"


def test_every_documented_job_command_names_an_existing_or_planned_job():
    """READMEs and the launcher config mention only the four jobs of the project."""
    known = {"demaster", "train", "tune", "master"}
    texts = [(p, p.read_text()) for p in [CLUSTER / "README.md", KUBERAY / "README.md", CLUSTER / "aws.yaml"]]
    for path, text in texts:
        for job in re.findall(r"jobs/(\w+)\.py", text):
            assert job in known, f"{path.name}: jobs/{job}.py"
