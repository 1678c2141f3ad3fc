"""The cluster configs in cluster/ are valid for the tools that read them (checked offline)."""

import copy
import os
import re
import shlex

import jsonschema
import pytest
import yaml

from began_dist.distributed.placement import placeable_workers

CLUSTER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster")


def load(name):
    with open(os.path.join(CLUSTER, name)) as handle:
        return yaml.safe_load(handle)


def text(name):
    with open(os.path.join(CLUSTER, name)) as handle:
        return handle.read()


def flag(command: str, name: str, default: float = 0.0) -> float:
    found = re.search(rf"--{name}[ =](\S+)", command)
    return float(found.group(1)) if found else default


def test_cluster_launcher_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("aws-gpu.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] <= config["max_workers"]
    assert any("pip install -e /home/ubuntu/began-dist" in c for c in config["setup_commands"])
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_wrokers"] = 8  # a typo Ray must catch
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cluster_launcher_recipe_turns_on_token_auth_and_keeps_the_job_api_local():
    config = load("aws-gpu.yaml")
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in ray_starts)
    # Every node gets the client's token at Ray's default path (ray get-auth-token --generate).
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head_start = next(c for c in config["head_start_ray_commands"] if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (ssh), not the network


def test_cluster_launcher_recipe_fits_once_the_autoscaler_has_added_its_nodes():
    """The recipe's own `--workers 8 --gpus-per-worker 1` on run.dir=s3://: none fits at start
    (the head has no CPU for workers), all fit at the autoscaler's max_workers, none on the head."""
    config = load("aws-gpu.yaml")
    recipe = next(line for line in text("aws-gpu.yaml").splitlines() if "--workers" in line)
    assert '"run.dir=s3://' in text("aws-gpu.yaml")
    workers = int(flag(recipe, "workers"))
    bundle = {"CPU": flag(recipe, "cpus-per-worker", 1.0), "GPU": flag(recipe, "gpus-per-worker")}
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    at_start = [head] + [t["resources"] for n, t in types.items() if n != "head" for _ in range(t["min_workers"])]
    at_max = [head] + [t["resources"] for n, t in types.items() if n != "head" for _ in range(t["max_workers"])]
    assert placeable_workers(at_start, bundle) < workers  # what the placement check must wait out
    assert placeable_workers(at_max, bundle) >= workers
    assert placeable_workers([head], bundle) == 0
    gpu = types["gpu_worker"]["node_config"]
    assert "instance-profile" in gpu["IamInstanceProfile"]["Arn"]  # rank 0 writes S3 from a worker node


# The ray.io/v1 RayJob API (KubeRay's rayjob_types.go / raycluster_types.go): the fields we use,
# with their types and enums; unknown fields are errors, as in the CRD's structural schema.
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object"}}}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
WORKER_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "rayStartParams", "template"],
    "properties": {
        "groupName": {"type": "string"},
        "replicas": INT32,
        "minReplicas": INT32,
        "maxReplicas": INT32,
        "numOfHosts": INT32,
        "idleTimeoutSeconds": INT32,
        "suspend": {"type": "boolean"},
        "rayStartParams": STRING_MAP,
        "template": POD_TEMPLATE,
    },
}
RAY_CLUSTER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object"},
        "headServiceAnnotations": STRING_MAP,
        "suspend": {"type": "boolean"},
        "authOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {"enum": ["disabled", "token"]},
                "secretName": {"type": "string"},
                "enableK8sTokenAuth": {"type": "boolean"},
            },
        },
        "headGroupSpec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rayStartParams", "template"],
            "properties": {
                "rayStartParams": STRING_MAP,
                "template": POD_TEMPLATE,
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "enableIngress": {"type": "boolean"},
                "headService": {"type": "object"},
            },
        },
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    },
}
RAY_JOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "activeDeadlineSeconds": INT32,
                "backoffLimit": INT32,
                "rayClusterSpec": RAY_CLUSTER_SPEC,
                "submitterPodTemplate": POD_TEMPLATE,
                "metadata": STRING_MAP,
                "clusterSelector": STRING_MAP,
                "submitterConfig": {"type": "object", "properties": {"backoffLimit": INT32}},
                "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "entrypointResources": {"type": "string"},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "ttlSecondsAfterFinished": INT32,
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "suspend": {"type": "boolean"},
                "schedule": {"type": "string"},
            },
        },
    },
}


def test_kuberay_rayjob_matches_the_v1_api():
    job = load("kuberay-rayjob.yaml")
    jsonschema.validate(job, RAY_JOB)
    assert job["spec"]["entrypoint"].startswith("began-dist train")
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["pip"]  # the runtime env is itself valid YAML
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == workers["rayStartParams"]["num-gpus"] == "1"


def ray_pods(job):
    """(name, pod spec) of the head, every worker group and the submitter."""
    cluster = job["spec"]["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]
    yield "submitter", job["spec"]["submitterPodTemplate"]["spec"]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def entrypoint_args(job):
    return dict(arg.split("=", 1) for arg in shlex.split(job["spec"]["entrypoint"]) if "=" in arg)


def test_kuberay_rayjob_turns_on_token_auth_from_one_secret():
    job = load("kuberay-rayjob.yaml")
    auth = job["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token"
    for name, pod in ray_pods(job):
        env = env_of(pod["containers"][0])
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert env.get("RAY_AUTH_TOKEN") == {"secretKeyRef": {"name": auth["secretName"], "key": "auth_token"}}, name


def mounts(pod):
    return [m["mountPath"] for m in pod["containers"][0].get("volumeMounts", [])]


def test_kuberay_rayjob_driver_and_workers_see_the_data_and_write_run_dir_to_object_storage():
    job = load("kuberay-rayjob.yaml")
    args = entrypoint_args(job)
    data = args["data.path"]
    assert job["spec"]["submissionMode"] == "K8sJobMode"  # so the driver runs on the head
    for name, pod in ray_pods(job):
        if name == "submitter":
            continue
        # The driver checks data.path before any work; the workers read it.
        assert any(data.startswith(path.rstrip("/") + "/") for path in mounts(pod)), (name, data)
        assert not any(path.startswith("/runs") for path in mounts(pod))
        # run.dir on S3: every node writes there, with credentials from the Secret.
        assert {"secretRef": {"name": "began-dist-s3"}} in pod["containers"][0]["envFrom"], name
    assert args["run.dir"].startswith("s3://") and "?region=" in args["run.dir"]


def test_kuberay_rayjob_fits_its_worker_groups_and_keeps_workers_off_the_head():
    job = load("kuberay-rayjob.yaml")
    command = job["spec"]["entrypoint"]
    workers = int(flag(command, "workers"))
    bundle = {"CPU": flag(command, "cpus-per-worker", 1.0), "GPU": flag(command, "gpus-per-worker")}
    cluster = job["spec"]["rayClusterSpec"]
    # Ray on a pod sees the container's CPU limit unless num-cpus says otherwise.
    head = {"CPU": float(cluster["headGroupSpec"]["rayStartParams"]["num-cpus"])}
    nodes = [head]
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        node = {"CPU": float(limits["cpu"]), "GPU": float(group["rayStartParams"].get("num-gpus", 0))}
        nodes += [node] * group["replicas"]
    assert placeable_workers(nodes, bundle) >= workers
    assert placeable_workers([head], bundle) == 0


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "submissionMode"), "BatchMode"),  # not an enum value
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "rayStartParams", "num-gpus"), 1),  # must be a string
        (("spec", "shutdownAfterJobFinish"), True),  # misspelt field
        (("spec", "ttlSecondsAfterFinished"), "600"),  # must be an integer
        (("spec", "rayClusterSpec", "authOptions", "mode"), "Token"),  # not an enum value
    ],
)
def test_rayjob_schema_catches_mistakes(path, value):
    job = load("kuberay-rayjob.yaml")
    target = job
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, RAY_JOB)
