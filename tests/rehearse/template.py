"""The rehearsal template: template.yaml as MiniStack can deploy it, generated at run time.

What changes, and only this (everything else, resources added later included, is deployed as written):

* ``PackageType: Image`` functions become zip functions (MiniStack runs Python functions in subprocesses, not
  containers without Docker): ``Runtime: python3.12``, ``Handler`` = the Dockerfile's ``CMD`` (the image's
  handler), ``CodeUri`` = the zip :func:`package` builds from the directories the Dockerfile copies. A function
  whose Dockerfile ``CMD`` is not a handler (a web app behind Lambda Web Adapter) cannot run in MiniStack's
  Python executor: it is listed in :attr:`Rehearsal.unrunnable` with the reason and deployed unchanged.
* Every function gets the endpoints of the rehearsal in its environment: Bedrock = the local embedding and
  LLM services, S3 and Kinesis = MiniStack, @connections = MiniStack's execute-api path (``RAG_*_ENDPOINT_URL``
  settings; on AWS they are unset).
* ``AWS::ApiGatewayV2::RouteResponse`` resources (the two-way routes' route responses) are left out, and
  ``DependsOn`` entries naming them: MiniStack 1.5.33's CloudFormation has no provisioner for that type and
  refuses the template. Its WebSocket data plane sends every integration's response body to the client
  (route response or not), so the two-way routes (search, history, sample_chunks) answer as on AWS.
* ``EmbeddingDimension`` also allows the local embedding model's size (MiniLM: 384), which the rehearsal
  deploys with: Titan V2's 256/512/1024 are sizes the local model cannot produce, and the embedding service
  refuses them as Bedrock refuses a size a model does not have.
"""

from __future__ import annotations

import copy
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

# CloudFormation short-form tags -> long form ({"Fn::Sub": ...}); !Ref and !Condition keep their names.
_TAGS = {
    "!Ref": "Ref",
    "!Condition": "Condition",
    "!GetAtt": "Fn::GetAtt",
    "!Sub": "Fn::Sub",
    "!Join": "Fn::Join",
    "!Select": "Fn::Select",
    "!Split": "Fn::Split",
    "!If": "Fn::If",
    "!Not": "Fn::Not",
    "!Equals": "Fn::Equals",
    "!And": "Fn::And",
    "!Or": "Fn::Or",
    "!FindInMap": "Fn::FindInMap",
    "!GetAZs": "Fn::GetAZs",
    "!ImportValue": "Fn::ImportValue",
    "!Base64": "Fn::Base64",
    "!Cidr": "Fn::Cidr",
    "!Length": "Fn::Length",
    "!ToJsonString": "Fn::ToJsonString",
}


class _CfnLoader(yaml.SafeLoader):
    pass


def _construct_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    tag = "!" + tag_suffix
    if tag not in _TAGS:
        raise yaml.constructor.ConstructorError(None, None, f"unknown CloudFormation tag {tag}", node.start_mark)
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag == "!GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {_TAGS[tag]: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    """A CloudFormation YAML template in long form (JSON-serialisable)."""
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # a SafeLoader subclass
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a template")
    return data


_CMD = re.compile(r"^CMD\s+(\[.*\])\s*$", re.MULTILINE)
_COPY_DIR = re.compile(r"^COPY\s+([A-Za-z_][A-Za-z0-9_]*)/\s", re.MULTILINE)
_HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass
class ImageFunction:
    """What a function's image runs: its handler (or None) and the source directories copied into it."""

    handler: str | None
    packages: list[str]
    reason: str = ""


def read_dockerfile(path: Path) -> ImageFunction:
    text = path.read_text(encoding="utf-8")
    packages = sorted(set(_COPY_DIR.findall(text)))
    cmds = _CMD.findall(text)
    if not cmds:
        return ImageFunction(None, packages, f"{path.relative_to(ROOT)} has no exec-form CMD naming a handler")
    argv = [str(a) for a in json.loads(cmds[-1])]
    cmd = " ".join(argv)
    if len(argv) != 1 or not _HANDLER.fullmatch(cmd):
        return ImageFunction(
            None,
            packages,
            f"{path.relative_to(ROOT)} runs {cmd!r}, not a handler: a web app behind Lambda Web Adapter, an "
            "extension MiniStack's Python executor does not run (it imports a handler module in a subprocess)",
        )
    return ImageFunction(cmd, packages)


def package(packages: list[str]) -> bytes:
    """The zip of the source directories an image copies (Python sources and data files, no caches)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in packages:
            base = ROOT / name
            for path in sorted(base.rglob("*")):
                if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
                    continue
                if path.name == "Dockerfile":
                    continue
                zf.write(path, path.relative_to(ROOT).as_posix())
    return buf.getvalue()


@dataclass
class Endpoints:
    """Where the rehearsal's functions find their AWS services."""

    ministack: str  # http://127.0.0.1:PORT
    embedding: str
    llm: str


@dataclass
class Rehearsal:
    template: dict[str, Any]
    parameters: dict[str, str]
    zips: dict[str, bytes]  # S3 key -> zip
    handlers: dict[str, str]  # logical id -> handler
    unrunnable: dict[str, str] = field(default_factory=dict)  # logical id -> why MiniStack cannot run it
    left_out: dict[str, str] = field(default_factory=dict)  # logical id -> why it is not deployed

    def body(self) -> str:
        return json.dumps(self.template, indent=1)


ROUTE_RESPONSE_LEFT_OUT = (
    "MiniStack's CloudFormation cannot provision AWS::ApiGatewayV2::RouteResponse; its WebSocket API sends every "
    "integration response body to the client anyway, so the two-way route still answers"
)

# The local embedding model's vector size (all-MiniLM-L6-v2), the size the rehearsal deploys with.
LOCAL_EMBEDDING_DIMENSION = "384"


def fold_splits(node: Any, values: dict[str, str]) -> Any:
    """``Fn::Split`` of a literal or a parameter ``Ref`` in Conditions -> the list it evaluates to.

    MiniStack 1.5.33 evaluates ``Fn::Select`` in a condition only over a list or a comma-delimited string
    (services/cloudformation/engine.py, ``_resolve_cond_value``: no ``Fn::Split`` branch, so ``items[0]`` of
    the ``{"Fn::Split": ...}`` dict raises KeyError: 0 and CreateStack answers InternalError "0"). AWS
    accepts it (cfn-lint passes template.yaml). Folding it with the deployed parameter values gives the same
    result CloudFormation computes."""
    if isinstance(node, list):
        return [fold_splits(v, values) for v in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Fn::Split"}:
        delimiter, source = node["Fn::Split"]
        if isinstance(source, dict) and set(source) == {"Ref"} and source["Ref"] in values:
            source = values[source["Ref"]]
        if isinstance(delimiter, str) and isinstance(source, str):
            return source.split(delimiter)
    return {k: fold_splits(v, values) for k, v in node.items()}


def _function_env(props: dict[str, Any]) -> dict[str, Any]:
    env = props.setdefault("Environment", {})
    variables: dict[str, Any] = env.setdefault("Variables", {})
    return variables


def rehearsal_template(source: dict[str, Any], endpoints: Endpoints, artifacts_bucket: str) -> Rehearsal:
    """template.yaml (long form) -> the template MiniStack deploys, the zips to upload, the parameters."""
    template = copy.deepcopy(source)
    resources: dict[str, Any] = template.get("Resources", {})
    zips: dict[str, bytes] = {}
    handlers: dict[str, str] = {}
    unrunnable: dict[str, str] = {}
    has_ws_api = any(r.get("Type") == "AWS::ApiGatewayV2::Api" for r in resources.values())
    left_out = {
        logical_id: ROUTE_RESPONSE_LEFT_OUT
        for logical_id, resource in resources.items()
        if resource.get("Type") == "AWS::ApiGatewayV2::RouteResponse"
    }
    for logical_id in left_out:
        del resources[logical_id]
    for resource in resources.values():
        depends = resource.get("DependsOn")
        if isinstance(depends, list):
            resource["DependsOn"] = [d for d in depends if d not in left_out]
        elif isinstance(depends, str) and depends in left_out:
            del resource["DependsOn"]
    stage_param = "StageName" if "StageName" in template.get("Parameters", {}) else None

    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.setdefault("Properties", {})
        metadata = resource.get("Metadata") or {}
        if props.get("PackageType") == "Image":
            dockerfile = metadata.get("Dockerfile")
            if not dockerfile:
                unrunnable[logical_id] = "an Image function without Metadata.Dockerfile: nothing to package"
                continue
            image = read_dockerfile(ROOT / str(metadata.get("DockerContext", ".")) / str(dockerfile))
            key = f"rehearsal/{logical_id}.zip"
            zips[key] = package(image.packages)
            if image.handler is None:
                # Deployed as Lambda Web Adapter's zip form documents it (Handler run.sh): the stack is
                # complete, and the function is reported as one MiniStack cannot run.
                unrunnable[logical_id] = image.reason
                image.handler = "run.sh"
            handlers[logical_id] = image.handler
            for prop in ("PackageType", "ImageUri", "ImageConfig"):
                props.pop(prop, None)
            props["Runtime"] = "python3.12"
            props["Handler"] = image.handler
            props["CodeUri"] = {"Bucket": artifacts_bucket, "Key": key}
            resource.pop("Metadata", None)
        variables = _function_env(props)
        variables["RAG_EMBEDDING_ENDPOINT_URL"] = endpoints.embedding
        variables["RAG_LLM_ENDPOINT_URL"] = endpoints.llm
        variables["RAG_S3_ENDPOINT_URL"] = endpoints.ministack
        variables["RAG_KINESIS_ENDPOINT_URL"] = endpoints.ministack
        if has_ws_api and stage_param:
            # On AWS: https://{domainName}/{stage} from each event. MiniStack's domainName
            # ({api}.execute-api.localhost, no port, no TLS) is not an address; its path form is.
            api = next(k for k, r in resources.items() if r.get("Type") == "AWS::ApiGatewayV2::Api")
            variables["RAG_CONNECTIONS_ENDPOINT_URL"] = {
                "Fn::Sub": f"{endpoints.ministack}/_aws/execute-api/${{{api}}}/${{{stage_param}}}"
            }

    parameters: dict[str, str] = {}
    params = template.get("Parameters", {})
    values = {k: str(v.get("Default", "")) for k, v in params.items() if isinstance(v, dict)}
    dim = params.get("EmbeddingDimension")
    if isinstance(dim, dict):
        allowed = dim.get("AllowedValues")
        if isinstance(allowed, list) and int(LOCAL_EMBEDDING_DIMENSION) not in [int(v) for v in allowed]:
            allowed.append(int(LOCAL_EMBEDDING_DIMENSION))
        parameters["EmbeddingDimension"] = LOCAL_EMBEDDING_DIMENSION
    values.update(parameters)
    if "Conditions" in template:
        template["Conditions"] = fold_splits(template["Conditions"], values)
    return Rehearsal(template, parameters, zips, handlers, unrunnable, left_out)
