"""The model's OpenAPI document: a run method's signature as Cog clients read it.

The worker calls :func:`prepare` once, before the model's ``setup``: it reads
the run method's signature (``cogd.signature``) and renders the document that
the worker sends in ``ready``. The server serves that document as
``/openapi.json`` and compiles its ``Input`` schema into the validator that
checks every request, so the signature, the document and the validation can
never disagree. When the server names the other mode's function too (the
training function of a predictor, or the reverse), the document describes both,
as the one Cog builds into an image does. A pre-built
``.cog/openapi_schema.json`` in the model directory is served as it is.

``python -m cogd.schema FILE.py:NAME`` prints the document (``cogd schema``
runs it), so users can check a model's schema without serving it.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from cogd.loader import declared, find_run_method, load_predictor
from cogd.signature import (
    InputSpec,
    IteratorOf,
    ListOf,
    Node,
    Nullable,
    Scalar,
    SchemaError,
    Signature,
    UnionOf,
    loose_signature,
    signature_of,
    unwrap_nullable,
)

# Where Cog's build step leaves a pre-built schema, relative to the model directory.
PREBUILT_SCHEMA = os.path.join(".cog", "openapi_schema.json")


# -- the OpenAPI document --------------------------------------------------------

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def type_schema(node: Node) -> dict[str, Any]:
    """The OpenAPI 3.0 schema of a type tree (no title, no order)."""
    if isinstance(node, Scalar):
        if node.kind in _JSON_TYPES:
            return {"type": _JSON_TYPES[node.kind]}
        if node.kind in ("path", "file"):
            return {"type": "string", "format": "uri"}
        if node.kind == "secret":
            return {
                "type": "string",
                "format": "password",
                "writeOnly": True,
                "x-cog-secret": True,
            }
        if node.kind in ("dict", "opaque"):
            return {"type": "object"}
        return {}
    if isinstance(node, ListOf):
        return {"type": "array", "items": type_schema(node.item)}
    if isinstance(node, Nullable):
        return {**type_schema(node.inner), "nullable": True}
    if isinstance(node, UnionOf):
        return {"anyOf": [type_schema(m) for m in node.members]}
    if isinstance(node, IteratorOf):
        schema = {
            "type": "array",
            "items": type_schema(node.item),
            "x-cog-array-type": "iterator",
        }
        if node.concatenate:
            schema["x-cog-array-display"] = "concatenate"
        return schema
    properties = {}
    required = []
    for name, field_node in node.fields:
        properties[name] = {"title": title(name), **type_schema(field_node)}
        if not isinstance(field_node, Nullable):
            required.append(name)
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def title(name: str) -> str:
    """``num_outputs`` -> ``Num Outputs``, as Cog titles inputs and fields."""
    return name.replace("_", " ").title()


class _NoJsonError(Exception):
    """A default that has no JSON form (it stays a Python-side default)."""


def _default_json(node: Node, value: Any) -> Any:
    """The JSON form of a default, as a client would send it."""
    core = unwrap_nullable(node)
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(core, Scalar):
        if core.kind == "secret":
            raise _NoJsonError  # a secret default must never be published
        if core.kind == "float" and type(value) is int:
            return float(value)
        if core.kind in ("path", "file") and isinstance(value, (str, os.PathLike)):
            return str(value)
    if isinstance(value, (list, tuple)) and isinstance(core, ListOf):
        return [_default_json(core.item, v) for v in value]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise _NoJsonError from None
    return value


def input_schema(
    specs: tuple[InputSpec, ...], component: str, enum_name: Callable[[str], str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``Input`` component and the enum components its ``choices`` need.

    ``enum_name`` picks a component name for an input's choices (Cog uses the
    input's own name).
    """
    properties: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    required = []
    for spec in specs:
        info = spec.info
        core = unwrap_nullable(spec.node)
        prop: dict[str, Any] = {}
        if info.choices is not None:
            name = enum_name(spec.name)
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": [c.value if isinstance(c, enum.Enum) else c for c in info.choices],
                "type": type_schema(core)["type"],
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        else:
            prop["title"] = title(spec.name)
            prop.update(type_schema(core))
        prop["x-order"] = spec.order
        if spec.has_default and info.default is not None:
            try:
                prop["default"] = _default_json(spec.node, info.default)
            except _NoJsonError:
                pass
        if isinstance(spec.node, Nullable):
            prop["nullable"] = True
        if info.description is not None:
            prop["description"] = info.description
        # Constraints go where JSON Schema applies them: on the value, or on
        # each item of a list input.
        target = prop["items"] if isinstance(core, ListOf) else prop
        if info.ge is not None:
            target["minimum"] = info.ge
        if info.le is not None:
            target["maximum"] = info.le
        if info.min_length is not None:
            target["minLength"] = info.min_length
        if info.max_length is not None:
            target["maxLength"] = info.max_length
        if info.regex is not None:
            target["pattern"] = info.regex
        if info.deprecated:
            prop["deprecated"] = True
        if info.accept is not None:
            prop["x-cog-accept"] = info.accept
        properties[spec.name] = prop
        if spec.required:
            required.append(spec.name)
    schema: dict[str, Any] = {"title": component, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _response(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": "Successful Response",
        "content": {"application/json": {"schema": schema}},
    }


_VALIDATION_ERROR_RESPONSE = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}


def _timestamp(name: str) -> dict[str, Any]:
    return {"title": title(name), "type": "string", "format": "date-time"}


def _envelopes(request: str, response: str, inputs: str, output: str) -> dict[str, Any]:
    """The request and response envelopes of one kind of run (prediction or training)."""
    return {
        request: {
            "title": request,
            "type": "object",
            "properties": {
                "id": {"title": "Id", "type": "string"},
                "input": {"$ref": f"#/components/schemas/{inputs}"},
                "webhook": {
                    "title": "Webhook",
                    "type": "string",
                    "format": "uri",
                    "minLength": 1,
                    "maxLength": 65536,
                },
                "webhook_events_filter": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/WebhookEvent"},
                    "default": ["start", "output", "logs", "completed"],
                },
                "created_at": _timestamp("created_at"),
                "output_file_prefix": {"title": "Output File Prefix", "type": "string"},
                "context": {
                    "title": "Context",
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        response: {
            "title": response,
            "type": "object",
            "properties": {
                "id": {"title": "Id", "type": "string"},
                "input": {"$ref": f"#/components/schemas/{inputs}"},
                "output": {"$ref": f"#/components/schemas/{output}"},
                "status": {"$ref": "#/components/schemas/Status"},
                "error": {"title": "Error", "type": "string"},
                "logs": {"title": "Logs", "type": "string", "default": ""},
                "metrics": {"title": "Metrics", "type": "object"},
                "version": {"title": "Version", "type": "string"},
                "created_at": _timestamp("created_at"),
                "started_at": _timestamp("started_at"),
                "completed_at": _timestamp("completed_at"),
            },
        },
    }


def _run_paths(collection: str, noun: str, request: str, response: str) -> dict[str, Any]:
    """The create, idempotent create and cancel routes of ``/predictions`` or ``/trainings``."""
    id_param = f"{noun}_id"
    path_param = {
        "required": True,
        "schema": {"title": title(id_param), "type": "string"},
        "name": id_param,
        "in": "path",
    }
    prefer = {
        "required": False,
        "schema": {"title": "Prefer", "type": "string"},
        "name": "prefer",
        "in": "header",
    }
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
    }
    responses = {
        "200": _response({"$ref": f"#/components/schemas/{response}"}),
        "422": _VALIDATION_ERROR_RESPONSE,
    }
    verb = "predict" if noun == "prediction" else "train"
    return {
        f"/{collection}": {
            "post": {
                "summary": title(verb),
                "description": f"Run a single {noun} on the model",
                "operationId": f"{verb}_{collection}_post",
                "parameters": [prefer],
                "requestBody": body,
                "responses": responses,
            }
        },
        f"/{collection}/{{{id_param}}}": {
            "put": {
                "summary": f"{title(verb)} Idempotent",
                "description": f"Run a single {noun} on the model (idempotent creation).",
                "operationId": f"{verb}_idempotent_{collection}__{id_param}__put",
                "parameters": [path_param, prefer],
                "requestBody": body,
                "responses": responses,
            }
        },
        f"/{collection}/{{{id_param}}}/cancel": {
            "post": {
                "summary": "Cancel",
                "description": f"Cancel a running {noun}",
                "operationId": f"cancel_{collection}__{id_param}__cancel_post",
                "parameters": [path_param],
                "responses": {"200": _response({}), "422": _VALIDATION_ERROR_RESPONSE},
            }
        },
    }


def openapi_document(predict: Signature | None, train: Signature | None = None) -> dict[str, Any]:
    """The whole OpenAPI 3.0 document for a model's run method and/or training function."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "Root",
                "operationId": "root__get",
                "responses": {"200": _response({"title": "Response Root  Get"})},
            }
        },
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": {"200": _response({"title": "Response Healthcheck Health Check Get"})},
            }
        },
    }
    reserved = {
        "Input",
        "Output",
        "PredictionRequest",
        "PredictionResponse",
        "TrainingInput",
        "TrainingOutput",
        "TrainingRequest",
        "TrainingResponse",
        "Status",
        "WebhookEvent",
        "HTTPValidationError",
        "ValidationError",
    }

    def enum_name(prefix: str) -> Callable[[str], str]:
        # Cog names an input's enum after the input; a name that is taken
        # (a fixed component, or the same input name in the other run kind)
        # gets a prefix rather than overwriting it.
        def pick(name: str) -> str:
            candidate = name if name not in reserved else f"{name}Choices"
            if candidate in schemas or candidate in reserved:
                candidate = f"{prefix.lower()}_{candidate}"
            return candidate

        return pick

    for signature, kind in ((predict, "prediction"), (train, "training")):
        if signature is None:
            continue
        if kind == "prediction":
            names = ("Input", "Output", "PredictionRequest", "PredictionResponse")
            collection, prefix = "predictions", "Prediction"
        else:
            names = ("TrainingInput", "TrainingOutput", "TrainingRequest", "TrainingResponse")
            collection, prefix = "trainings", "Training"
        inputs, output, request, response = names
        input_component, enums = input_schema(signature.inputs, inputs, enum_name(prefix))
        schemas[inputs] = input_component
        schemas[output] = {"title": output, **type_schema(signature.output)}
        schemas.update(enums)
        schemas.update(_envelopes(request, response, inputs, output))
        paths.update(_run_paths(collection, kind, request, response))

    schemas["Status"] = {
        "title": "Status",
        "description": "An enumeration.",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
        "type": "string",
    }
    schemas["WebhookEvent"] = {
        "title": "WebhookEvent",
        "description": "An enumeration.",
        "enum": ["start", "output", "logs", "completed"],
        "type": "string",
    }
    schemas["HTTPValidationError"] = {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {
                "title": "Detail",
                "type": "array",
                "items": {"$ref": "#/components/schemas/ValidationError"},
            }
        },
    }
    schemas["ValidationError"] = {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    }
    paths["/shutdown"] = {
        "post": {
            "summary": "Start Shutdown",
            "operationId": "start_shutdown_shutdown_post",
            "responses": {"200": _response({})},
        }
    }
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


# -- the document a model serves ------------------------------------------------


def read_prebuilt() -> str | None:
    """The text of ``.cog/openapi_schema.json`` in the working directory, when present."""
    try:
        with open(PREBUILT_SCHEMA, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        json.loads(text)
    except ValueError as e:
        raise SchemaError(f"{PREBUILT_SCHEMA} is not valid JSON: {e}") from None
    return text


#: The operation extension by which Cog's clients tell that a model streams.
STREAMING_EXTENSION = "x-cog-streaming"


def marks_streaming(document_json: str) -> bool:
    """Whether the document's ``POST /predictions`` says the model streams."""
    try:
        post = json.loads(document_json)["paths"]["/predictions"]["post"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(post, dict) and post.get(STREAMING_EXTENSION) is True


def other_signature(other_ref: str | None, mode: str) -> Signature | None:
    """The signature of the other mode's function, ``other_ref`` (the server
    resolves it as it resolves the served one and sends it in ``init``).

    One document describes both, as the one Cog builds into an image does: a
    predictor's document carries the training schemas and a training
    function's the prediction ones. A function that cannot be loaded or
    described costs the document that part, with a warning, never the runs
    being served.
    """
    if not other_ref:
        return None
    other = "predict" if mode == "train" else "train"
    try:
        run = find_run_method(load_predictor(other_ref, reuse=True), other)
        return signature_of(run.function, skip_self=run.skip_self)
    except Exception as e:  # noqa: BLE001 - any failure only drops that part
        noun = "trainings" if other == "train" else "predictions"
        print(f"cogd: leaving {noun} out of the schema: {other_ref}: {e}", file=sys.stderr)
        return None


def prepare(
    fn: Callable[..., Any],
    mode: str = "predict",
    *,
    skip_self: bool = False,
    streaming: bool = False,
    other_ref: str | None = None,
) -> tuple[Signature, str]:
    """The run method's signature and the schema document (JSON text) for ``ready``.

    Called in the worker with the loaded run method before the model's setup.
    A pre-built schema file wins; then a run method cogd cannot describe is
    served with a pass-through signature rather than failing. A ``streaming``
    run is marked ``x-cog-streaming`` on ``POST /predictions``, as Cog does.
    ``other_ref`` names the other mode's function, described too
    (:func:`other_signature`).
    """
    prebuilt = read_prebuilt()
    try:
        signature = signature_of(fn, skip_self=skip_self)
    except SchemaError as e:
        if prebuilt is None:
            raise
        print(f"cogd: serving {PREBUILT_SCHEMA}; inputs pass through unchecked: {e}")
        signature = loose_signature(fn, skip_self=skip_self)
    if prebuilt is not None:
        return signature, prebuilt
    other = other_signature(other_ref, mode)
    if mode == "train":
        document = openapi_document(other, signature)
    else:
        document = openapi_document(signature, other)
        if streaming:
            document["paths"]["/predictions"]["post"][STREAMING_EXTENSION] = True
    return signature, json.dumps(document)


# -- `python -m cogd.schema` -----------------------------------------------------


class _StdoutToStderr:
    """Points fd 1 (and ``sys.stdout``) at stderr while model code is imported.

    Whatever an import prints, from Python or C, must not end up in the
    document that this command writes on stdout.
    """

    def __enter__(self) -> _StdoutToStderr:
        sys.stdout.flush()
        self._saved_fd = os.dup(1)
        os.dup2(2, 1)
        self._saved_stdout = sys.stdout
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stdout = self._saved_stdout
        os.dup2(self._saved_fd, 1)
        os.close(self._saved_fd)


def document_for(predictor_ref: str, mode: str = "predict", other_ref: str | None = None) -> str:
    """The document the server would serve for this model (run in the model directory)."""
    prebuilt = read_prebuilt()
    if prebuilt is not None:
        return prebuilt
    run = find_run_method(load_predictor(predictor_ref, reuse=True), mode)
    _, streaming = declared(run.function, run.predictor)
    return prepare(
        run.function, mode, skip_self=run.skip_self, streaming=streaming, other_ref=other_ref
    )[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m cogd.schema FILE.py:NAME [--mode train] [--other REF]``: print
    the document; ``--other`` names the other mode's function, described too."""
    parser = argparse.ArgumentParser(
        prog="cogd schema", description="Print a model's OpenAPI schema without serving it."
    )
    parser.add_argument("predictor_ref", help="FILE.py:NAME of the predictor")
    parser.add_argument("--mode", choices=("predict", "train"), default="predict")
    parser.add_argument(
        "--other", default=None, help="FILE.py:NAME of the other mode's function, if any"
    )
    args = parser.parse_args(argv)
    try:
        with _StdoutToStderr():
            text = document_for(args.predictor_ref, args.mode, args.other)
    except Exception as e:  # noqa: BLE001 - any failure is the user's to read
        print(f"cogd schema: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(text), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
