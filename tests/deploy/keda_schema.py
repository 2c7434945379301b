"""A strict JSON schema for KEDA's ScaledObject (keda.sh/v1alpha1), a CRD kubernetes-validate has no
schema for: the fields of KEDA 2.x's CRD that deploy/ may use, unknown fields rejected."""

from __future__ import annotations

from typing import Any

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POSITIVE = {"type": "integer", "minimum": 1}
_NON_NEGATIVE = {"type": "integer", "minimum": 0}

_SCALING_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "value", "periodSeconds"],
    "properties": {
        "type": {"enum": ["Pods", "Percent"]},
        "value": _POSITIVE,
        "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
    },
}

_SCALING_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": _SCALING_POLICY},
    },
}

_ADVANCED = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "restoreToOriginalReplicaCount": {"type": "boolean"},
        "horizontalPodAutoscalerConfig": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "behavior": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"scaleUp": _SCALING_RULES, "scaleDown": _SCALING_RULES},
                },
            },
        },
    },
}

_TRIGGER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "metadata"],
    "properties": {
        "type": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
        "metadata": _STRING_MAP,  # KEDA takes every trigger parameter as a string
        "authenticationRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
        },
    },
}

SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _POSITIVE,
                "cooldownPeriod": _NON_NEGATIVE,
                "initialCooldownPeriod": _NON_NEGATIVE,
                "idleReplicaCount": _NON_NEGATIVE,
                "minReplicaCount": _NON_NEGATIVE,
                "maxReplicaCount": _POSITIVE,
                "advanced": _ADVANCED,
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _POSITIVE, "replicas": _POSITIVE},
                },
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
            },
        },
    },
}

# The postgresql scaler's parameters (https://keda.sh/docs/latest/scalers/postgresql/).
POSTGRESQL_METADATA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["query", "targetQueryValue"],
    "properties": {
        name: {"type": "string", "minLength": 1}
        for name in (
            "connectionFromEnv",
            "host",
            "port",
            "userName",
            "passwordFromEnv",
            "dbName",
            "sslmode",
            "query",
            "targetQueryValue",
            "activationTargetQueryValue",
        )
    },
    "oneOf": [{"required": ["connectionFromEnv"]}, {"required": ["host", "dbName"]}],
}

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT}


def validate(manifest: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless ``manifest`` is a ScaledObject deploy/ may ship."""
    import jsonschema

    schema = SCHEMAS[(manifest["apiVersion"], manifest["kind"])]
    jsonschema.Draft202012Validator(schema).validate(manifest)
    for trigger in manifest["spec"]["triggers"]:
        if trigger["type"] == "postgresql":
            jsonschema.Draft202012Validator(POSTGRESQL_METADATA).validate(trigger["metadata"])
