"""deploy/kubernetes (issue 26): the kustomizations render offline, every resource validates
against the Kubernetes schemas (kubernetes-validate's, strict) and KEDA's CRD schemas (shipped in
tests/deploy/schemas), a broken manifest does not, and the workers, the API and the trial
services carry the image, commands and settings of compose.yml."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import kustomize
from tests.test_compose import farm_variables_read

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSION = "1.32.0"  # the oldest release the manifests promise to fit
KEDA_SCHEMAS = {"ScaledObject": "keda.sh_scaledobjects.json", "TriggerAuthentication": "keda.sh_triggerauthentications.json"}
LAYOUTS = ["base", "overlays/trial"]


def render(layout: str) -> dict[tuple[str, str], dict]:
    return {kustomize.key(r): r for r in kustomize.build(DEPLOY / layout)}


def strict(schema):
    """A CRD schema that, like the API server's strict field validation, refuses unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def validate(resource: dict) -> None:
    """Raise (a jsonschema or kubernetes-validate error) if the resource does not fit its schema."""
    kind = resource.get("kind")
    if kind in KEDA_SCHEMAS:
        import jsonschema

        assert resource["apiVersion"] == "keda.sh/v1alpha1", resource["apiVersion"]
        schema = strict(json.loads((SCHEMAS / KEDA_SCHEMAS[kind]).read_text()))
        jsonschema.Draft7Validator(schema).validate(resource)
        return
    import kubernetes_validate

    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def farm_containers(resources: dict) -> list[tuple[str, dict]]:
    """(resource name, container) of every pod template running the farm's image."""
    found = []
    for (kind, name), resource in resources.items():
        spec = resource.get("spec", {})
        pod = (spec.get("jobTemplate", {}).get("spec", {}) if kind == "CronJob" else spec).get("template", {}).get("spec")
        for container in (pod or {}).get("initContainers", []) + (pod or {}).get("containers", []):
            if container["image"].startswith("farm-worker"):
                found.append((name, container))
    return found


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yml").read_text())


# -- rendering ---------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here: the Python renderer stands alone")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_python_renderer_matches_kubectl_kustomize(layout):
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / layout)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = {kustomize.key(r): r for r in kustomize.parse(out.stdout)}
    assert render(layout) == theirs


def test_the_renderer_refuses_what_it_does_not_render(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(kustomize.KustomizeError, match="unsupported kustomization fields \\['commonLabels'\\]"):
        kustomize.build(tmp_path)
    (tmp_path / "group").mkdir()
    (tmp_path / "kustomization.yaml").write_text("resources: [group]\n")
    with pytest.raises(kustomize.KustomizeError, match="group: no kustomization.yaml"):
        kustomize.build(tmp_path)
    (tmp_path / "group" / "kustomization.yaml").write_text("patches: [{patch: '{}'}]\n")
    with pytest.raises(kustomize.KustomizeError, match="only patches given by path"):
        kustomize.build(tmp_path)


# -- schemas -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_resource_validates_against_the_kubernetes_and_keda_schemas(layout):
    resources = render(layout)
    for resource in resources.values():
        validate(resource)
    kinds = {kind for kind, _ in resources}
    assert {"Deployment", "Service", "PodDisruptionBudget", "CronJob", "ScaledObject", "TriggerAuthentication",
            "ConfigMap", "PersistentVolumeClaim"} <= kinds
    if layout == "overlays/trial":
        assert {"StatefulSet", "Secret", "Job", "Namespace"} <= kinds
        assert all(r["metadata"].get("namespace") == "farm" for (kind, _), r in resources.items() if kind != "Namespace")


def broken(resources, kind, name, change):
    resource = json.loads(json.dumps(resources[(kind, name)]))
    change(resource)
    return resource


BREAKAGES = {
    "replicas as words": ("Deployment", "farm-api", lambda r: r["spec"].__setitem__("replicas", "two")),
    "a misspelt pod field": ("Deployment", "farm-worker-sdxl",
                             lambda r: r["spec"]["template"]["spec"].__setitem__("terminationGracePeriod", 120)),
    "a probe without a port": ("Deployment", "farm-worker-sd15",
                               lambda r: r["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
                               .pop("port")),
    "a budget of nothing": ("PodDisruptionBudget", "farm-api", lambda r: r["spec"].__setitem__("maxUnavailable", [1])),
    "KEDA: replicas as words": ("ScaledObject", "farm-worker-sdxl",
                                lambda r: r["spec"].__setitem__("minReplicaCount", "zero")),
    "KEDA: a misspelt field": ("ScaledObject", "farm-worker-sd15",
                               lambda r: r["spec"].__setitem__("cooldownPeriode", 300)),
    "KEDA: no target": ("ScaledObject", "farm-worker-sd15", lambda r: r["spec"].pop("scaleTargetRef")),
    "KEDA: a secret ref without a key": ("TriggerAuthentication", "farm-ledger",
                                         lambda r: r["spec"]["secretTargetRef"][0].pop("key")),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_manifest_fails_validation(breakage):
    kind, name, change = BREAKAGES[breakage]
    resources = render("base")
    validate(resources[(kind, name)])  # as shipped: valid
    with pytest.raises(Exception) as failed:
        validate(broken(resources, kind, name, change))
    assert type(failed.value).__name__ == "ValidationError", failed.value


# -- what the manifests say ----------------------------------------------------------------------
def test_each_worker_group_is_gpu_pinned_scaled_from_zero_ready_when_warm_and_drains_in_its_grace():
    resources = render("base")
    workers = {name: r for (kind, name), r in resources.items()
               if kind == "Deployment" and r["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}
    assert sorted(workers) == ["farm-worker-sd15", "farm-worker-sdxl"]
    from farm.models.catalog import BUILTIN_MODELS
    for name, deployment in workers.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        command = container["command"]
        assert command[:4] == ["farm", "worker", "--devices", "0"] and command[4] == "--models"
        models = command[5].split(",")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and env["CUDA_VISIBLE_DEVICES"] == "0"
        # ready once warm: the probe is /readyz on the metrics port, and the worker preloads
        probe = container["readinessProbe"]["httpGet"]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}[probe["port"]]
        assert (probe["path"], str(port), env["FARM_PRELOAD"]) == ("/readyz", env["FARM_METRICS_PORT"], "1")
        # the grace period covers the micro-batch's FARM_STOP_GRACE_S plus storing it and leaving
        assert pod["terminationGracePeriodSeconds"] >= int(env["FARM_STOP_GRACE_S"]) + 20
        # KEDA: one ScaledObject per worker Deployment, from zero, on the ledger's backlog of its models
        scaled = resources[("ScaledObject", name)]["spec"]
        assert scaled["scaleTargetRef"]["name"] == name and scaled["minReplicaCount"] == 0
        [trigger] = scaled["triggers"]
        assert trigger["type"] == "postgresql" and ("TriggerAuthentication", trigger["authenticationRef"]["name"]) \
            in resources
        assert f"$models${','.join(models)}$models$" in trigger["metadata"]["query"]
        assert int(trigger["metadata"]["targetQueryValue"]) > 0
        # a budget for voluntary disruptions, selecting exactly this group's pods
        budget = resources[("PodDisruptionBudget", name)]["spec"]
        assert budget["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert budget["maxUnavailable"] == 1
        assert set(models) <= set(BUILTIN_MODELS), models  # `farm worker --models` refuses unknown ones
    auth = resources[("TriggerAuthentication", "farm-ledger")]["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "connection", "name": "farm-credentials", "key": "FARM_DATABASE_URL"}]


def test_the_same_image_commands_and_settings_as_compose():
    services = compose()["services"]
    farm_env = compose()["x-farm-env"]
    trial = render("overlays/trial")
    containers = farm_containers(trial)
    assert {name for name, _ in containers} == {"farm-api", "farm-maintenance", "farm-worker-sd15",
                                                 "farm-worker-sdxl"}
    assert {c["image"] for _, c in containers} == {services["worker-gpu0"]["image"]}
    by_name = {(name, c["name"]): c for name, c in containers}
    assert by_name[("farm-api", "api")]["command"] == services["api"]["command"]
    assert by_name[("farm-api", "migrate")]["command"] == services["migrate"]["command"]
    assert by_name[("farm-worker-sdxl", "worker")]["command"][:4] == services["worker-gpu0"]["command"]
    # every farm container reads the shared settings and the credentials, as x-farm-env gives them
    for _, container in containers:
        sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
        assert sources == ["farm-settings", "farm-credentials"]
    settings = trial[("ConfigMap", "farm-settings")]["data"]
    secret = trial[("Secret", "farm-credentials")]["stringData"]
    assert set(settings) | set(secret) == set(farm_env)
    assert not set(settings) & set(secret)
    for variable, value in settings.items():
        assert value == farm_env[variable], variable  # no ${...} in these: the same literal value
    assert all("${" in farm_env[v] or v == "AWS_ACCESS_KEY_ID" for v in secret)  # the secret-bearing ones
    # the worker settings compose gives its GPU workers, and the grace period it gives them
    worker_env = {e["name"]: e["value"] for e in by_name[("farm-worker-sdxl", "worker")]["env"]}
    compose_worker = compose()["x-worker"]["environment"]
    for variable in ("FARM_METRICS_PORT", "FARM_METRICS_ADDR", "FARM_LOG_FORMAT", "FARM_STOP_GRACE_S"):
        assert worker_env[variable] == compose_worker[variable], variable
    grace = compose()["x-worker"]["stop_grace_period"]
    assert grace == "2m" and trial[("Deployment", "farm-worker-sdxl")]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 120
    read = farm_variables_read()
    for variable in [*settings, *secret, *worker_env]:
        assert not variable.startswith("FARM_") or variable in read, f"{variable} is never read by the farm"
    # the trial services: compose's images and settings
    for service in ("postgres", "redis", "minio"):
        [container] = trial[("StatefulSet", service)]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == services[service]["image"], service
    redis_args = trial[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--requirepass" in redis_args and "noeviction" in redis_args and "--appendonly" in redis_args
    [mc] = trial[("Job", "minio-bucket")]["spec"]["template"]["spec"]["containers"]
    assert mc["image"] == services["minio-bucket"]["image"] and "mc mb --ignore-existing farm/farm" in mc["command"][-1]


def test_the_trial_secrets_are_placeholders_that_agree():
    """The URLs in farm-credentials hold the same passwords the trial services are started with."""
    trial = render("overlays/trial")
    credentials = trial[("Secret", "farm-credentials")]["stringData"]
    services = trial[("Secret", "farm-trial-services")]["stringData"]
    assert f":{services['POSTGRES_PASSWORD']}@postgres:5432/farm" in credentials["FARM_DATABASE_URL"]
    assert f":{services['REDIS_PASSWORD']}@redis:6379/" in credentials["FARM_BROKER_URL"]
    assert credentials["AWS_SECRET_ACCESS_KEY"] == services["MINIO_ROOT_PASSWORD"]
    assert all("change-me" in v for k, v in {**credentials, **services}.items() if "PASSWORD" in k or "SECRET" in k)


@pytest.mark.postgres
def test_each_groups_scaling_query_is_its_backlog_in_gpu_seconds_on_a_real_ledger(postgres_url):
    """The rendered queries run on PostgreSQL as KEDA's scaler runs them, against a migrated ledger:
    each group's jobs queued (in active batches) or rendering, at their estimated GPU ms or, with
    none recorded, the farm's default; the same numbers `farm fleet backlog` reports."""
    import math
    import random

    from sqlalchemy import text

    from farm.fleet.costs import default_image_ms
    from farm.fleet.scaling import backlogs, desired_workers
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger
    from farm.ledger.ledger import make_engine, upgrade

    engine = make_engine(postgres_url)
    upgrade(engine)  # what `farm db upgrade` does
    ledger = Ledger(postgres_url)
    try:
        batches = {}
        for model, recipe, n, cost_ms in (("sd15", "lcm-lora", 3, 1500.0), ("lcm-dreamshaper-v7", "lcm", 2, None),
                                          ("sdxl", "lcm-lora", 4, 250_000.0), ("flux-schnell", "schnell", 5, 9000.0)):
            p = plan([PromptRow(JobRequest(prompt=f"a {model} lighthouse", recipe=recipe))], JobRequest(), variants=n,
                     seed=1, catalog=Catalog(), default_model=model, rng=random.Random(0))
            batches[model] = ledger.create_batch(specs=p.specs, spec=p.record(), request_digest=p.request_digest,
                                                 base_seed=p.base_seed, idempotency_key=None,
                                                 costs_ms=None if cost_ms is None else [cost_ms] * n)
            batches[model, "spec"] = p.specs[0]
        resources = render("base")

        def backlog(group: str) -> float:
            trigger = resources[("ScaledObject", f"farm-worker-{group}")]["spec"]["triggers"][0]
            with engine.connect() as conn:
                return float(conn.execute(text(trigger["metadata"]["query"])).scalar_one())

        def target(group: str) -> float:
            return float(resources[("ScaledObject", f"farm-worker-{group}")]["spec"]["triggers"][0]["metadata"]
                         ["targetQueryValue"])

        dreamshaper = batches["lcm-dreamshaper-v7", "spec"]  # no estimate recorded: the default for its size
        sd15 = 3 * 1.5 + 2 * default_image_ms(dreamshaper.width, dreamshaper.height, dreamshaper.steps) / 1000
        assert backlog("sd15") == pytest.approx(sd15) and backlog("sdxl") == pytest.approx(1000.0)  # flux: no group's
        python = backlogs(ledger.backlog_rows())  # what `farm fleet backlog` reads
        assert python["sd15"].gpu_s + python["lcm-dreamshaper-v7"].gpu_s == pytest.approx(sd15)
        assert python["sdxl"].gpu_s == pytest.approx(1000.0)
        # KEDA asks for ceil(backlog / targetQueryValue) workers: `farm fleet desired` from zero, at that drain
        assert math.ceil(backlog("sdxl") / target("sdxl")) == desired_workers(1000.0, drain_s=target("sdxl")) == 4
        with engine.begin() as conn:  # rendering counts; done does not
            conn.execute(text("update jobs set state = 'running' where model = 'sdxl' and index = 0"))
            conn.execute(text("update jobs set state = 'succeeded' where model = 'sdxl' and index = 1"))
        assert backlog("sdxl") == pytest.approx(750.0)
        ledger.set_batch_state(batches["sdxl"].id, "paused")  # a paused batch's queued jobs wait for no worker
        assert backlog("sdxl") == pytest.approx(250.0)
        with engine.begin() as conn:
            conn.execute(text("update jobs set state = 'succeeded' where model = 'sdxl'"))
        assert backlog("sdxl") == 0.0  # KEDA's activation: no backlog, no worker
    finally:
        ledger.close()
        engine.dispose()
