"""The cluster configs in cluster/ are valid for the tools that read them (checked offline)."""

import copy
import os

import jsonschema
import pytest
import yaml

CLUSTER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster")


def load(name):
    with open(os.path.join(CLUSTER, name)) as handle:
        return yaml.safe_load(handle)


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


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "submissionMode"), "BatchMode"),  # not an enum value
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "rayStartParams", "num-gpus"), 1),  # must be a string
        (("spec", "shutdownAfterJobFinish"), True),  # misspelt field
        (("spec", "ttlSecondsAfterFinished"), "600"),  # must be an integer
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
