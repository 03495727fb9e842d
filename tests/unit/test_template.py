"""template.yaml (AWS SAM), checked offline: no AWS account, no Docker.

- cfn-lint accepts it (SAM schemas, CloudFormation rules, circular dependencies), and so does AWS's own
  SAM translator (aws-sam-translator, what ``sam build``/``sam deploy`` run); cfn-lint accepts the
  translated CloudFormation too.
- The WebSocket API has the protocol's action registry's routes (the local gateway's too), each a Lambda proxy
  integration with its permission; ``$connect`` is guarded by the authorizer function (a REQUEST authorizer
  whose identity sources every handshake carries), which API Gateway may invoke, and has no function (a
  MOCK integration answering 200, throttled at the account's connection quota, not the message throttle);
  there is no ``$disconnect`` route; the Cognito parameters reach its settings, which accept them.
- The functions are the compose images (same Dockerfiles, repo root as context, same handler CMD).
- Their environment is made of real settings names and is an ``aws`` profile (shared/profiles.py) that
  passes the profile check, for every embedding choice the parameters allow.
- IAM is least privilege: Bedrock on the configured model ARNs only, S3 on the bucket (and prefixes) only,
  ManageConnections on this API's stage only, the authorizer reads the API keys and nothing else; no ``*``
  resource, no wildcard action.
- The bucket notifies ingestion of files under the documents prefix's ``inbox/`` (the documents code's
  INBOX_PREFIX), without a circular dependency.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic_settings import BaseSettings

from shared.profiles import EMBEDDING_MODELS, LOCAL_EMBEDDING_MODEL_ID, aws_profile, check, mode_of
from tests.support.paths import EVENTS, ROOT
from tests.support.timeouts import scaled
from tests.unit.test_compose import env_names

TEMPLATE = ROOT / "template.yaml"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"

REGION, ACCOUNT = "eu-west-1", "123456789012"
PSEUDO = {
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::Partition": "aws",
    "AWS::StackName": "localrag",
    "AWS::URLSuffix": "amazonaws.com",
}
# Physical ids CloudFormation would give the resources (what Ref / GetAtt resolve to in these tests).
API_ID = "k3x9q2w7lb"
PHYSICAL = {
    "WebSocketApi": API_ID,
    "IngestionFunction": "localrag-IngestionFunction-AbC",
    "ChatFunction": "localrag-ChatFunction-DeF",
    "IngestionIntegration": "ing123",
    "ChatIntegration": "chat456",
    "ConnectIntegration": "conn000",
    "AuthorizerFunction": "localrag-AuthorizerFunction-GhI",
    "ApiFunction": "localrag-ApiFunction-PqR",
    "ConnectAuthorizer": "auth789",
    "DocumentStream": "localrag-DocumentStream-JkL",
    "DocumentStreamFailures": "https://sqs.eu-west-1.amazonaws.com/123456789012/localrag-DocumentStreamFailures-MnO",
}
FUNCTIONS = {"ingestion": "IngestionFunction", "chat": "ChatFunction", "authorizer": "AuthorizerFunction"}
# The HTTP API function (api/: Lambda Web Adapter, a Function URL), checked by its own tests below.
API_FUNCTION = "ApiFunction"
# The functions behind routes (the RAG lambdas); the authorizer is invoked by API Gateway before them.
ROUTE_FUNCTIONS = {"ingestion": "IngestionFunction", "chat": "ChatFunction"}
ENDPOINT_VARS = {
    "RAG_EMBEDDING_ENDPOINT_URL",
    "RAG_LLM_ENDPOINT_URL",
    "RAG_S3_ENDPOINT_URL",
    "RAG_CONNECTIONS_ENDPOINT_URL",
}
SCOPED_SERVICES = ("bedrock:", "s3:", "execute-api:", "kinesis:", "sqs:")
FUNCTION_URL = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/localrag-DocumentStream-JkL"
FAILURES_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:localrag-DocumentStreamFailures-MnO"


# -- loading and resolving ------------------------------------------------------------------------------------


@cache
def _template() -> dict[str, Any]:
    from cfnlint.decode import decode

    tpl, matches = decode(str(TEMPLATE))
    assert not matches, f"template.yaml does not parse: {matches}"
    data: dict[str, Any] = json.loads(json.dumps(tpl))  # plain dicts, short-form tags as Fn::...
    return data


def template() -> dict[str, Any]:
    return copy.deepcopy(_template())


def resources(kind: str | None = None) -> dict[str, dict[str, Any]]:
    res: dict[str, dict[str, Any]] = template()["Resources"]
    return {k: v for k, v in res.items() if kind is None or v["Type"] == kind}


def props(name: str) -> dict[str, Any]:
    p: dict[str, Any] = template()["Resources"][name].get("Properties", {})
    return p


NO_VALUE: Any = object()  # AWS::NoValue: the property is left out


class Resolver:
    """Evaluates the intrinsic functions the template uses, with parameter defaults (or overrides),
    fixed pseudo parameters and made-up physical ids."""

    def __init__(self, **overrides: str) -> None:
        tpl = template()
        self.tpl = tpl
        self.params = {k: str(v.get("Default", "")) for k, v in tpl.get("Parameters", {}).items()}
        unknown = set(overrides) - set(self.params)
        assert not unknown, f"no such parameters: {unknown}"
        self.params.update(overrides)

    def bucket(self) -> str:
        name: str = self(self.tpl["Resources"]["DocumentsBucket"]["Properties"]["BucketName"])
        return name

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.params:
            return self.params[name]
        if name in PSEUDO:
            return PSEUDO[name]
        if name == "DocumentsBucket":
            return self.bucket()
        assert name in PHYSICAL, f"Ref {name}: not a parameter or known resource"
        return PHYSICAL[name]

    def getatt(self, resource: str, attr: str) -> str:
        if resource in FUNCTIONS.values() and attr == "Arn":
            return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{PHYSICAL[resource]}"
        if resource == "DocumentsBucket" and attr == "Arn":
            return f"arn:aws:s3:::{self.bucket()}"
        if (resource, attr) == ("DocumentStream", "Arn"):
            return STREAM_ARN
        if (resource, attr) == ("DocumentStreamFailures", "Arn"):
            return FAILURES_ARN
        if (resource, attr) == ("ApiFunctionUrl", "FunctionUrl"):  # SAM's AWS::Lambda::Url of ApiFunction
            return FUNCTION_URL
        raise AssertionError(f"GetAtt {resource}.{attr} not modelled")

    def condition(self, name: str) -> bool:
        return bool(self(self.tpl["Conditions"][name]))

    def sub(self, text: str, extra: dict[str, Any]) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in extra:
                return str(self(extra[name]))
            if "." in name and not name.startswith("AWS::"):
                return self.getatt(*name.split(".", 1))
            return self.ref(name)

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::Sub":
                return self.sub(arg, {}) if isinstance(arg, str) else self.sub(arg[0], arg[1])
            if key == "Fn::GetAtt":
                res, attr = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.getatt(res, attr)
            if key == "Fn::If":
                return self(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Select":
                return self(arg[1])[int(self(arg[0]))]
            if key == "Fn::Split":
                return str(self(arg[1])).split(arg[0])
            if key == "Fn::Join":
                return arg[0].join(str(x) for x in self(arg[1]))
            if key == "Fn::Equals":
                return str(self(arg[0])) == str(self(arg[1]))
            if key == "Fn::Or":
                return any(self(a) for a in arg)
            if key == "Fn::And":
                return all(self(a) for a in arg)
            if key == "Fn::Not":
                return not self(arg[0])
            if key == "Condition":
                return self.condition(arg)
        resolved = {k: self(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def statements(function: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for policy in props(function).get("Policies", []):
        assert isinstance(policy, dict) and "Statement" in policy, (
            f"{function}: use inline policy documents (a SAM policy template or managed policy name is not "
            "checked here)"
        )
        out.extend(policy["Statement"])
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed(function: str, resolver: Resolver) -> dict[str, set[str]]:
    """action -> the resources it is allowed on, resolved."""
    out: dict[str, set[str]] = {}
    for st in statements(function):
        assert st["Effect"] == "Allow"
        for action in as_list(st["Action"]):
            out.setdefault(action, set()).update(as_list(resolver(st["Resource"])))
    return out


def function_env(function: str, resolver: Resolver) -> dict[str, str]:
    variables = props(function)["Environment"]["Variables"]
    return {k: str(v) for k, v in resolver(variables).items()}


def route_targets() -> dict[str, str]:
    """route key -> integration resource name."""
    out = {}
    for r in resources("AWS::ApiGatewayV2::Route").values():
        target = r["Properties"]["Target"]
        m = re.fullmatch(r"integrations/\$\{(\w+)\}", target.get("Fn::Sub", ""))
        assert m, f"route {r['Properties']['RouteKey']}: Target must be !Sub integrations/${{Integration}}"
        out[r["Properties"]["RouteKey"]] = m.group(1)
    return out


MOCK = "MOCK"


def integration_target(integration: str) -> str:
    """The function resource a route's integration invokes, or MOCK for one API Gateway answers itself."""
    return MOCK if props(integration)["IntegrationType"] == MOCK else integration_function(integration)


def integration_function(integration: str) -> str:
    uri = props(integration)["IntegrationUri"]["Fn::Sub"]
    m = re.fullmatch(
        r"arn:\$\{AWS::Partition\}:apigateway:\$\{AWS::Region\}:lambda:path/2015-03-31/functions/"
        r"\$\{(\w+)\.Arn\}/invocations",
        uri,
    )
    assert m, f"{integration}: not a Lambda proxy integration URI: {uri}"
    return m.group(1)


def settings_for(function: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The function's Settings as Lambda would build them from this environment (and nothing else)."""
    from chat.settings import Settings as ChatSettings
    from ingestion.settings import Settings as IngestionSettings

    classes: dict[str, type[BaseSettings]] = {"IngestionFunction": IngestionSettings, "ChatFunction": ChatSettings}
    cls = classes[function]
    import os

    for var in list(os.environ):
        if var.upper() in env_names(cls):
            monkeypatch.delenv(var)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return cls()


# -- the linters --------------------------------------------------------------------------------------------------


def _cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    if not CFN_LINT.exists():
        pytest.fail(f"cfn-lint is not installed in {CFN_LINT.parent} (pip install -e '.[dev]')", pytrace=False)
    return subprocess.run([str(CFN_LINT), str(path)], capture_output=True, text=True, timeout=scaled(180), check=False)


def test_cfn_lint_accepts_the_template() -> None:
    proc = _cfn_lint(TEMPLATE)
    assert proc.returncode == 0, f"cfn-lint template.yaml:\n{proc.stdout}\n{proc.stderr}"


def translated(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """template.yaml through AWS's SAM translator (ImageUri is what `sam build` fills in)."""
    from samtranslator.translator.transform import transform

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    tpl = template()
    for fn in [*FUNCTIONS.values(), API_FUNCTION]:
        tpl["Resources"][fn]["Properties"]["ImageUri"] = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/localrag:{fn}"

    class ManagedPolicies:
        def load(self) -> dict[str, str]:
            return {"AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}

    out: dict[str, Any] = transform(tpl, {}, ManagedPolicies())
    return out


def test_sam_translates_and_the_result_lints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfn = translated(monkeypatch)
    assert "Transform" not in cfn
    for fn in FUNCTIONS.values():
        role = cfn["Resources"][f"{fn}Role"]
        assert role["Type"] == "AWS::IAM::Role"
        # The role holds exactly the template's statements, plus only the basic logging policy.
        assert role["Properties"]["ManagedPolicyArns"] == [
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        ]
        got = [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
        assert got == statements(fn)
        assert cfn["Resources"][fn]["Properties"]["PackageType"] == "Image"
    path = tmp_path / "translated.json"
    path.write_text(json.dumps(cfn, indent=1))
    proc = _cfn_lint(path)
    assert proc.returncode == 0, f"cfn-lint on the SAM translation:\n{proc.stdout}\n{proc.stderr}"


# -- the WebSocket API -----------------------------------------------------------------------------------------


def test_websocket_api() -> None:
    (api,) = resources("AWS::ApiGatewayV2::Api").values()
    assert api["Properties"]["ProtocolType"] == "WEBSOCKET"
    assert api["Properties"]["RouteSelectionExpression"] == "$request.body.action"


def test_routes_are_the_action_registrys() -> None:
    """Every route key of the WebSocket API goes to the function the protocol's action registry names (the
    MOCK routes to none), and there is no other (the local gateway's default routes come from the same
    registry)."""
    from gateway.settings import DEFAULT_ROUTES
    from shared.protocol import ACTION_REGISTRY, CONNECTION_ROUTES, MOCK_ROUTES, route_table

    keys = [r["Properties"]["RouteKey"] for r in resources("AWS::ApiGatewayV2::Route").values()]
    assert len(keys) == len(set(keys)), f"a route key is declared twice: {sorted(keys)}"
    routes = {key: integration_target(integration) for key, integration in route_targets().items()}
    expected = {key: FUNCTIONS[fn] for key, fn in route_table().items()} | dict.fromkeys(MOCK_ROUTES, MOCK)
    assert routes == expected
    assert set(routes) == {*CONNECTION_ROUTES, *MOCK_ROUTES, *ACTION_REGISTRY}
    assert route_table() == DEFAULT_ROUTES


def test_two_way_routes_are_the_action_registrys() -> None:
    """The routes with a route response (their function's reply comes back in the Invoke's answer) are the
    registry's two-way actions, and the local gateway forwards response bodies on those routes only."""
    from gateway.settings import Settings
    from shared.protocol import two_way_routes

    by_id = resources("AWS::ApiGatewayV2::Route")
    responses = resources("AWS::ApiGatewayV2::RouteResponse").values()
    answered = {by_id[r["Properties"]["RouteId"]["Ref"]]["Properties"]["RouteKey"] for r in responses}
    assert all(r["Properties"]["RouteResponseKey"] == "$default" for r in responses)
    assert all(r["Properties"]["ApiId"] == {"Ref": "WebSocketApi"} for r in responses)
    selecting = {
        r["Properties"]["RouteKey"]
        for r in by_id.values()
        if r["Properties"].get("RouteResponseSelectionExpression") == "$default"
    }
    assert answered == selecting == two_way_routes() == set(Settings().two_way_routes)


def test_connect_needs_no_function_and_disconnect_has_no_route() -> None:
    """$connect is the authorizer's answer alone: a MOCK integration answers 200 without invoking anything,
    so no connect waits for a function's concurrency (chat's, held while answers generate). Nothing is done
    on a disconnect: no route. The local gateway has neither in its routes."""
    from gateway.settings import DEFAULT_ROUTES

    targets = route_targets()
    assert "$disconnect" not in targets
    mock = props(targets["$connect"])
    assert mock["IntegrationType"] == MOCK and "IntegrationUri" not in mock
    # The template API Gateway applies (selected by the literal key "$default"): the integration's status.
    assert mock["TemplateSelectionExpression"] == "\\$default"
    assert json.loads(mock["RequestTemplates"]["$default"]) == {"statusCode": 200}
    assert not {"$connect", "$disconnect"} & set(DEFAULT_ROUTES)


def test_connects_are_throttled_at_the_connection_quota_not_the_message_throttle() -> None:
    resolver = Resolver()
    ((_, stage),) = resources("AWS::ApiGatewayV2::Stage").items()
    p = resolver(stage["Properties"])
    assert int(p["DefaultRouteSettings"]["ThrottlingBurstLimit"]) < 500  # the message throttle
    # API Gateway's quota: 500 new connections per second per account and region; a burst of 500 passes.
    assert p["RouteSettings"]["$connect"] == {"ThrottlingRateLimit": 500, "ThrottlingBurstLimit": 500}


def test_integrations_are_lambda_proxy_and_may_invoke() -> None:
    integrations = resources("AWS::ApiGatewayV2::Integration")
    assert set(integrations) == set(route_targets().values())
    permissions = resources("AWS::Lambda::Permission")
    resolver = Resolver()
    for name, integration in integrations.items():
        if integration["Properties"]["IntegrationType"] == MOCK:
            continue  # invokes nothing (test_connect_needs_no_function_and_disconnect_has_no_route)
        assert integration["Properties"]["IntegrationType"] == "AWS_PROXY"
        assert integration["Properties"]["ApiId"] == {"Ref": "WebSocketApi"}
        fn = integration_function(name)
        grants = [
            p["Properties"]
            for p in permissions.values()
            if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
            and resolver(p["Properties"]["FunctionName"]) in (PHYSICAL[fn], resolver.getatt(fn, "Arn"))
        ]
        assert len(grants) == 1, f"{fn}: expected one API Gateway invoke permission"
        assert grants[0]["Action"] == "lambda:InvokeFunction"
        stage = resolver.params["StageName"]
        assert resolver(grants[0]["SourceArn"]) == f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{stage}/*"


# -- the $connect authorizer -----------------------------------------------------------------------------------

COGNITO_POOL = f"https://cognito-idp.{REGION}.amazonaws.com/{REGION}_AbC123xyz"


def test_connect_is_guarded_by_the_authorizer_function() -> None:
    resolver = Resolver()
    ((name, authorizer),) = resources("AWS::ApiGatewayV2::Authorizer").items()
    p = authorizer["Properties"]
    assert p["ApiId"] == {"Ref": "WebSocketApi"}
    assert p["AuthorizerType"] == "REQUEST"
    function_arn = resolver.getatt("AuthorizerFunction", "Arn")
    assert resolver(p["AuthorizerUri"]) == (
        f"arn:aws:apigateway:{REGION}:lambda:path/2015-03-31/functions/{function_arn}/invocations"
    )
    assert "AuthorizerResultTtlInSeconds" not in p  # AWS caches only HTTP API authorizers
    routes = {r["Properties"]["RouteKey"]: r["Properties"] for r in resources("AWS::ApiGatewayV2::Route").values()}
    assert routes["$connect"]["AuthorizationType"] == "CUSTOM"
    assert routes["$connect"]["AuthorizerId"] == {"Ref": name}
    # a WebSocket authorizer can guard $connect only; later messages carry its answer
    for key, route in routes.items():
        if key != "$connect":
            assert route.get("AuthorizationType", "NONE") == "NONE" and "AuthorizerId" not in route, key
    assert "ConnectAuthorization" not in template()["Parameters"], "$connect is always authorized"


def test_every_identity_source_is_in_every_handshake() -> None:
    """API Gateway invokes a WebSocket authorizer only when *all* its identity sources are present, so each
    must be a header every handshake carries (the captured $connect event, which has no credential): a
    credential may come from any of three places, and the function itself answers 401 when there is none."""
    (authorizer,) = resources("AWS::ApiGatewayV2::Authorizer").values()
    event = json.loads((EVENTS / "websocket_connect.json").read_text())
    headers = {k.lower() for k in event["headers"]}
    assert "authorization" not in headers and "sec-websocket-protocol" not in headers
    sources = authorizer["Properties"]["IdentitySource"]
    assert sources
    for source in sources:
        m = re.fullmatch(r"route\.request\.header\.([A-Za-z0-9-]+)", source)
        assert m is not None and m.group(1).lower() in headers, source


def test_api_gateway_may_invoke_the_authorizer() -> None:
    resolver = Resolver()
    fn = ("localrag-AuthorizerFunction-GhI", resolver.getatt("AuthorizerFunction", "Arn"))
    grants = [
        p["Properties"]
        for p in resources("AWS::Lambda::Permission").values()
        if resolver(p["Properties"]["FunctionName"]) in fn
    ]
    assert len(grants) == 1, "expected exactly one permission on the authorizer function"
    (grant,) = grants
    assert grant["Principal"] == "apigateway.amazonaws.com" and grant["Action"] == "lambda:InvokeFunction"
    # API Gateway invokes an authorizer as {api}/authorizers/{authorizer id}, not as a route
    assert resolver(grant["SourceArn"]) == f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/authorizers/auth789"


def authorizer_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from authorizer.settings import Settings
    from shared.settings_doc import variables

    for var in {v.env for v in variables(Settings)} | set(env):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


def test_cognito_parameters_reach_the_authorizer(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Resolver()
    env = function_env("AuthorizerFunction", default)
    assert "RAG_AUTH_JWT_ISSUER" not in env and "RAG_AUTH_JWT_JWKS_URL" not in env
    settings = authorizer_settings(env, monkeypatch)
    assert settings.methods == ["api_key", "jwt"] and settings.jwt_issuer is None
    assert settings.documents.documents_uri == f"s3://{default.bucket()}/documents"
    assert settings.aws_region == REGION and settings.s3_endpoint_url is None

    resolver = Resolver(CognitoIssuer=COGNITO_POOL, CognitoAudience="client1,client2", AuthMethods="jwt")
    settings = authorizer_settings(function_env("AuthorizerFunction", resolver), monkeypatch)
    assert settings.methods == ["jwt"]
    assert settings.jwt_issuer == COGNITO_POOL and settings.jwt_audience == ["client1", "client2"]
    assert settings.jwks_url() == f"{COGNITO_POOL}/.well-known/jwks.json"  # where Cognito publishes it
    assert settings.jwt_tenant_claim == "custom:tenant"

    jwks = "https://keys.example.com/jwks.json"
    resolver = Resolver(CognitoIssuer=COGNITO_POOL, CognitoAudience="c", CognitoJwksUrl=jwks, JwtTenantClaim="org")
    settings = authorizer_settings(function_env("AuthorizerFunction", resolver), monkeypatch)
    assert settings.jwks_url() == jwks and settings.jwt_tenant_claim == "org"


def test_an_issuer_without_an_audience_is_refused_at_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver(CognitoIssuer=COGNITO_POOL)
    rule = template()["Rules"]["CognitoNeedsAnAudience"]
    assert resolver(rule["RuleCondition"]) is True
    assert [resolver(a["Assert"]) for a in rule["Assertions"]] == [False]  # CloudFormation stops here
    with_audience = Resolver(CognitoIssuer=COGNITO_POOL, CognitoAudience="c")
    assert [with_audience(a["Assert"]) for a in rule["Assertions"]] == [True]
    assert Resolver()(rule["RuleCondition"]) is False  # no issuer: the rule does not apply
    with pytest.raises(ValueError, match="AUDIENCE"):  # and the function would refuse to start
        authorizer_settings(function_env("AuthorizerFunction", resolver), monkeypatch)


def test_the_authorizer_reads_the_api_keys_and_nothing_else() -> None:
    from shared.api_keys import KEYS_PREFIX

    resolver = Resolver()
    bucket_arn = f"arn:aws:s3:::{resolver.bucket()}"
    assert allowed("AuthorizerFunction", resolver) == {
        "s3:ListBucket": {bucket_arn},
        "s3:GetObject": {f"{bucket_arn}/documents/{KEYS_PREFIX}*"},
    }


def test_stage_auto_deploys_after_every_route() -> None:
    stage = resources("AWS::ApiGatewayV2::Stage")
    ((_, res),) = stage.items()
    assert res["Properties"]["AutoDeploy"] is True
    assert res["Properties"]["ApiId"] == {"Ref": "WebSocketApi"}
    routes = set(resources("AWS::ApiGatewayV2::Route")) | set(resources("AWS::ApiGatewayV2::RouteResponse"))
    assert set(res.get("DependsOn", [])) == routes
    throttle = res["Properties"]["DefaultRouteSettings"]
    assert throttle["ThrottlingRateLimit"] and throttle["ThrottlingBurstLimit"]


def test_outputs_give_the_cli_url() -> None:
    resolver = Resolver()
    outputs = resolver(template()["Outputs"])
    stage = resolver.params["StageName"]
    assert outputs["WebSocketUrl"]["Value"] == f"wss://{API_ID}.execute-api.{REGION}.amazonaws.com/{stage}"
    assert outputs["ConnectionsUrl"]["Value"] == f"https://{API_ID}.execute-api.{REGION}.amazonaws.com/{stage}"


# -- the functions ---------------------------------------------------------------------------------------------


def _dockerfile_cmd(path: Path) -> list[str]:
    cmds = [line.split(None, 1)[1] for line in path.read_text().splitlines() if line.startswith("CMD ")]
    assert cmds, f"{path}: no CMD"
    cmd: list[str] = json.loads(cmds[-1])
    return cmd


@pytest.mark.parametrize(("service", "function"), sorted(FUNCTIONS.items()))
def test_functions_are_the_compose_images(service: str, function: str) -> None:
    res = template()["Resources"][function]
    assert res["Type"] == "AWS::Serverless::Function"
    assert res["Properties"]["PackageType"] == "Image"
    meta = res["Metadata"]
    dockerfile = ROOT / meta["DockerContext"] / meta["Dockerfile"]
    assert (ROOT / meta["DockerContext"]).resolve() == ROOT, "the build context must be the repo root"
    assert dockerfile.resolve() == (ROOT / service / "Dockerfile").resolve()
    assert _dockerfile_cmd(dockerfile) == [f"{service}.handler.handler"]
    assert "ImageConfig" not in res["Properties"], "keep the Dockerfile's CMD (the handler compose runs)"


@pytest.mark.parametrize("function", sorted(FUNCTIONS.values()))
def test_environment_names_are_settings_fields(function: str) -> None:
    from authorizer.settings import Settings as AuthorizerSettings
    from chat.settings import Settings as ChatSettings
    from ingestion.settings import Settings as IngestionSettings
    from shared.settings_doc import variables

    classes: dict[str, type[BaseSettings]] = {
        "IngestionFunction": IngestionSettings,
        "ChatFunction": ChatSettings,
        "AuthorizerFunction": AuthorizerSettings,
    }
    cls = classes[function]
    known = env_names(cls) | {v.env.upper() for v in variables(cls)}  # with nested settings' variables
    names = set(props(function)["Environment"]["Variables"])
    unknown = sorted(n for n in names if n.upper() not in known)
    assert not unknown, f"{function}: {unknown} are not settings (pydantic-settings would ignore them)"
    assert not names & ENDPOINT_VARS, f"{function}: endpoint variables must be unset on AWS"


EMBEDDINGS = [
    ("amazon.titan-embed-text-v2:0", "titan", "1024"),
    ("amazon.titan-embed-text-v2:0", "titan", "512"),
    ("amazon.titan-embed-text-v2:0", "titan", "256"),
    ("cohere.embed-english-v3", "cohere", "1024"),
    ("cohere.embed-multilingual-v3", "cohere", "1024"),
]


@pytest.mark.parametrize(("model", "body_format", "dimension"), EMBEDDINGS)
@pytest.mark.parametrize("function", sorted(ROUTE_FUNCTIONS.values()))
def test_environment_is_a_consistent_aws_profile(
    function: str, model: str, body_format: str, dimension: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = Resolver(EmbeddingModelId=model, EmbeddingFormat=body_format, EmbeddingDimension=dimension)
    env = function_env(function, resolver)
    settings = settings_for(function, env, monkeypatch)
    assert mode_of(settings) == "aws"
    assert check(settings) == []
    bucket = resolver.bucket()
    assert settings.lancedb_uri == f"s3://{bucket}/lancedb"
    if function == "IngestionFunction":  # chat reads no documents
        assert settings.documents_uri == f"s3://{bucket}/documents"
    assert settings.aws_region == REGION
    assert settings.connections_endpoint_url is None  # replies: https://{domainName}/{stage} from the event
    # The documented profile (python -m shared.profiles aws) says the same.
    choice = {"titan": f"titan-{dimension}", "cohere": "cohere-en" if "english" in model else "cohere-multi"}
    profile = aws_profile(bucket=bucket, region=REGION, embedding=choice[body_format])
    shared_keys = {k for k in profile if k.upper() in env_names(type(settings))} - {"RAG_LLM_MODEL_ID"}
    assert {k: env[k] for k in shared_keys} == {k: profile[k] for k in shared_keys}


def test_a_wrong_embedding_combination_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parameters allow cohere with 256 dimensions; the profile check (python -m shared.profiles check)
    names the problem before the first call would fail."""
    resolver = Resolver(EmbeddingModelId="cohere.embed-english-v3", EmbeddingFormat="titan", EmbeddingDimension="256")
    settings = settings_for("ChatFunction", function_env("ChatFunction", resolver), monkeypatch)
    problems = check(settings)
    assert any("'cohere' bodies" in p for p in problems) and any("1024" in p for p in problems), problems


def test_parameters_match_the_known_models() -> None:
    from shared.bedrock import EmbeddingFormat

    params = template()["Parameters"]
    bedrock_models = {k: m for k, m in EMBEDDING_MODELS.items() if k != LOCAL_EMBEDDING_MODEL_ID}
    assert set(params["EmbeddingModelId"]["AllowedValues"]) == set(bedrock_models)
    assert set(params["EmbeddingFormat"]["AllowedValues"]) == set(get_args(EmbeddingFormat))
    dims = {d for m in bedrock_models.values() for d in m.dimensions}
    assert {int(d) for d in params["EmbeddingDimension"]["AllowedValues"]} == dims
    default = bedrock_models[params["EmbeddingModelId"]["Default"]]
    assert params["EmbeddingFormat"]["Default"] == default.body_format
    assert int(params["EmbeddingDimension"]["Default"]) == default.dimensions[0]


# -- IAM ------------------------------------------------------------------------------------------------------


def _all_statements() -> Iterator[tuple[str, dict[str, Any]]]:
    for fn in FUNCTIONS.values():
        for st in statements(fn):
            yield fn, st


def test_no_wildcards_on_scoped_services() -> None:
    resolver = Resolver()
    for fn, st in _all_statements():
        for action in as_list(st["Action"]):
            assert "*" not in action, f"{fn}: wildcard action {action}"
            if not action.startswith(SCOPED_SERVICES):
                continue
            for resource in as_list(resolver(st["Resource"])):
                assert resource != "*", f"{fn}: {action} on *"
                service = action.split(":")[0]
                assert resource.startswith(f"arn:aws:{service}:"), f"{fn}: {action} on {resource}"


def test_bedrock_only_on_the_configured_models() -> None:
    resolver = Resolver()
    p = resolver.params
    embed = f"arn:aws:bedrock:{REGION}::foundation-model/{p['EmbeddingModelId']}"
    llm = f"arn:aws:bedrock:{REGION}::foundation-model/{p['LlmModelId']}"
    ingestion = allowed("IngestionFunction", resolver)
    chat = allowed("ChatFunction", resolver)
    assert {a: r for a, r in ingestion.items() if a.startswith("bedrock:")} == {"bedrock:InvokeModel": {embed}}
    assert {a: r for a, r in chat.items() if a.startswith("bedrock:")} == {
        "bedrock:InvokeModel": {embed, llm},
        "bedrock:InvokeModelWithResponseStream": {llm},
    }


def test_bedrock_with_an_inference_profile() -> None:
    profile_id = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    resolver = Resolver(LlmModelId=profile_id)
    assert resolver.condition("LlmIsInferenceProfile")
    assert not Resolver().condition("LlmIsInferenceProfile")
    chat = allowed("ChatFunction", resolver)
    assert chat["bedrock:InvokeModelWithResponseStream"] == {
        f"arn:aws:bedrock:{REGION}:{ACCOUNT}:inference-profile/{profile_id}",
        # the model the profile routes to, in the regions it routes to
        "arn:aws:bedrock:*::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0",
    }


def test_s3_only_on_the_bucket() -> None:
    resolver = Resolver()
    bucket_arn = f"arn:aws:s3:::{resolver.bucket()}"
    ingestion = allowed("IngestionFunction", resolver)
    chat = allowed("ChatFunction", resolver)
    for actions in (ingestion, chat):
        assert actions["s3:ListBucket"] == {bucket_arn}
        for action, res in actions.items():
            if action.startswith("s3:") and action != "s3:ListBucket":
                assert all(r.startswith(bucket_arn + "/") and r.endswith("/*") for r in res), (action, res)
    # ingestion: raw documents and the index; chat: the index only.
    assert ingestion["s3:PutObject"] == {f"{bucket_arn}/documents/*", f"{bucket_arn}/lancedb/*"}
    assert chat["s3:PutObject"] == {f"{bucket_arn}/lancedb/*"}
    assert chat["s3:GetObject"] == {f"{bucket_arn}/lancedb/*"}


def test_manage_connections_only_on_this_api_stage() -> None:
    resolver = Resolver()
    stage = resolver.params["StageName"]
    expected = {f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{stage}/POST/@connections/*"}
    for fn in ROUTE_FUNCTIONS.values():
        actions = allowed(fn, resolver)
        assert actions["execute-api:ManageConnections"] == expected
        assert {a for a in actions if a.startswith("execute-api:")} == {"execute-api:ManageConnections"}


# -- the bucket -------------------------------------------------------------------------------------------------


def test_bucket_notifies_ingestion_of_inbox_files() -> None:
    from shared.object_store import INBOX_PREFIX

    resolver = Resolver()
    bucket = template()["Resources"]["DocumentsBucket"]
    configs = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    documents_prefix = resolver.params["DocumentsPrefix"]
    assert {c["Event"] for c in configs} == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
    for c in configs:
        assert resolver(c["Function"]) == resolver.getatt("IngestionFunction", "Arn")
        (rule,) = c["Filter"]["S3Key"]["Rules"]
        assert rule["Name"] == "prefix" and resolver(rule["Value"]) == f"{documents_prefix}/{INBOX_PREFIX}"
    # S3 checks the destination when the bucket is created: the permission must exist first, and must
    # name the bucket without referring to it (no circular dependency).
    perm_name = bucket["DependsOn"]
    perm = props(perm_name if isinstance(perm_name, str) else perm_name[0])
    assert perm["Principal"] == "s3.amazonaws.com"
    assert resolver(perm["SourceArn"]) == f"arn:aws:s3:::{resolver.bucket()}"
    assert resolver(perm["SourceAccount"]) == ACCOUNT
    assert "DocumentsBucket" not in json.dumps(perm)


def test_bucket_is_private_and_encrypted() -> None:
    p = props("DocumentsBucket")
    assert all(p["PublicAccessBlockConfiguration"].values()) and len(p["PublicAccessBlockConfiguration"]) == 4
    assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert re.fullmatch(r"[a-z0-9.-]{3,63}", Resolver().bucket())


# -- Kinesis ----------------------------------------------------------------------------------------------------


def test_the_document_stream_is_encrypted_with_its_capacity_mode() -> None:
    stream = props("DocumentStream")
    assert stream["StreamModeDetails"] == {"StreamMode": {"Ref": "DocumentStreamMode"}}
    assert stream["ShardCount"] == {
        "Fn::If": ["DocumentStreamIsProvisioned", {"Ref": "DocumentStreamShards"}, {"Ref": "AWS::NoValue"}]
    }
    assert stream["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}
    queue = props("DocumentStreamFailures")
    assert queue["SqsManagedSseEnabled"] is True and queue["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_the_stream_feeds_ingestion_with_partial_batch_responses_bounded_retries_and_a_destination() -> None:
    from shared.event_source import EventSourceSettings

    (mapping,) = [m["Properties"] for m in resources("AWS::Lambda::EventSourceMapping").values()]
    assert mapping["FunctionName"] == {"Ref": "IngestionFunction"}
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["DocumentStream", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BisectBatchOnFunctionError"] is True and 1 <= mapping["ParallelizationFactor"] <= 10
    assert 0 <= mapping["MaximumRetryAttempts"] <= 10 and 60 <= mapping["MaximumRecordAgeInSeconds"] <= 86_400
    failures = {"Fn::GetAtt": ["DocumentStreamFailures", "Arn"]}
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": failures}}
    # The local poller's defaults are the deployed mapping's.
    local = EventSourceSettings.model_fields
    assert mapping["BatchSize"] == local["batch_size"].default
    assert mapping["MaximumBatchingWindowInSeconds"] == local["maximum_batching_window_s"].default
    assert mapping["MaximumRetryAttempts"] == local["maximum_retry_attempts"].default
    assert mapping["MaximumRecordAgeInSeconds"] == local["maximum_record_age_s"].default
    assert mapping["BisectBatchOnFunctionError"] == local["bisect_on_function_error"].default
    assert mapping["ParallelizationFactor"] == local["parallelization_factor"].default
    # No SAM Kinesis event: it would attach AWSLambdaKinesisExecutionRole (every stream).
    assert all(e.get("Type") != "Kinesis" for e in props("IngestionFunction").get("Events", {}).values())


def test_ingestion_reads_that_stream_only_and_sends_to_that_queue_only() -> None:
    resolver = Resolver()
    for fn in FUNCTIONS.values():
        actions = allowed(fn, resolver)
        kinesis = {a: r for a, r in actions.items() if a.startswith("kinesis:")}
        sqs = {a: r for a, r in actions.items() if a.startswith("sqs:")}
        if fn != "IngestionFunction":
            assert kinesis == {} and sqs == {}, fn
            continue
        assert set(kinesis) == {
            "kinesis:DescribeStream",
            "kinesis:DescribeStreamSummary",
            "kinesis:GetRecords",
            "kinesis:GetShardIterator",
            "kinesis:ListShards",
        }
        assert all(r == {STREAM_ARN} for r in kinesis.values())
        assert sqs == {"sqs:SendMessage": {FAILURES_ARN}}


def test_outputs_name_the_stream_for_producers() -> None:
    outputs = template()["Outputs"]
    assert outputs["DocumentStreamName"]["Value"] == {"Ref": "DocumentStream"}
    assert outputs["DocumentStreamArn"]["Value"] == {"Fn::GetAtt": ["DocumentStream", "Arn"]}
    assert outputs["DocumentStreamFailuresUrl"]["Value"] == {"Ref": "DocumentStreamFailures"}


# -- the HTTP API function (api/) -------------------------------------------------------------------------------


def test_the_http_api_is_a_streaming_function_url_behind_lambda_web_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    res = template()["Resources"][API_FUNCTION]
    meta, p = res["Metadata"], res["Properties"]
    assert p["PackageType"] == "Image" and (ROOT / meta["DockerContext"]).resolve() == ROOT
    dockerfile = (ROOT / meta["Dockerfile"]).read_text()
    adapter = r"^COPY --from=public\.ecr\.aws/awsguru/aws-lambda-adapter:[0-9.]+ /lambda-adapter "
    assert re.search(adapter + r"/opt/extensions/lambda-adapter$", dockerfile, re.M)
    assert "AWS_LWA_INVOKE_MODE=response_stream" in dockerfile and "AWS_LWA_PORT=8080" in dockerfile
    assert "API_PORT=8080" in dockerfile and "AWS_LWA_READINESS_CHECK_PATH=/health" in dockerfile
    assert _dockerfile_cmd(ROOT / meta["Dockerfile"]) == ["python", "-m", "api"]
    # A Function URL in response-streaming mode; the app checks identity itself (401/403).
    assert p["FunctionUrlConfig"] == {"AuthType": "NONE", "InvokeMode": "RESPONSE_STREAM"}
    cfn = translated(monkeypatch)
    (url,) = [r for r in cfn["Resources"].values() if r["Type"] == "AWS::Lambda::Url"]
    assert url["Properties"]["InvokeMode"] == "RESPONSE_STREAM"
    assert url["Properties"]["TargetFunctionArn"] == {"Ref": API_FUNCTION}
    permissions = [r["Properties"] for r in cfn["Resources"].values() if r["Type"] == "AWS::Lambda::Permission"]
    assert any(q["Action"] == "lambda:InvokeFunctionUrl" and q["FunctionUrlAuthType"] == "NONE" for q in permissions)
    outputs = Resolver()(template()["Outputs"])
    assert outputs["HttpApiUrl"]["Value"] == FUNCTION_URL
    assert outputs["WebChatUrl"]["Value"] == FUNCTION_URL + "ui/"


def test_the_http_api_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real settings names only (the api's, and the chat, ingestion and authorizer logic's it runs), no local
    endpoint; the chat and ingestion settings it builds are a consistent aws profile; the web chat points
    at the deployed WebSocket API."""
    from api.settings import Settings as ApiSettings
    from authorizer.settings import Settings as AuthorizerSettings
    from chat.settings import Settings as ChatSettings
    from ingestion.settings import Settings as IngestionSettings
    from shared.settings_doc import variables

    known: set[str] = set()
    for cls in (ApiSettings, ChatSettings, IngestionSettings, AuthorizerSettings):
        known |= env_names(cls) | {v.env.upper() for v in variables(cls)}
    resolver = Resolver()
    env = function_env(API_FUNCTION, resolver)
    assert not sorted(n for n in env if n.upper() not in known)
    assert not set(env) & ENDPOINT_VARS
    stage = resolver.params["StageName"]
    assert env["API_WEBSOCKET_URL"] == f"wss://{API_ID}.execute-api.{REGION}.amazonaws.com/{stage}"
    for function in ("ChatFunction", "IngestionFunction"):
        settings = settings_for(function, env, monkeypatch)
        assert mode_of(settings) == "aws" and check(settings) == []
        assert settings.lancedb_uri == f"s3://{resolver.bucket()}/lancedb"
    for name in ("RAG_AUTH", "RAG_AUTH_JWT_TENANT_CLAIM"):  # the authorizer's identity settings, the same
        assert env[name] == function_env("AuthorizerFunction", resolver)[name]


def test_the_http_api_iam_is_the_chat_and_ingestion_logic_s() -> None:
    """Bedrock on the configured models, S3 on the documents and index prefixes of the bucket, invoking the
    ingestion function (sync jobs run there; API_SYNC_FUNCTION names it); no @connections, no stream, no
    queue (it replies over HTTP)."""
    resolver = Resolver()
    p = resolver.params
    bucket_arn = f"arn:aws:s3:::{resolver.bucket()}"
    embed = f"arn:aws:bedrock:{REGION}::foundation-model/{p['EmbeddingModelId']}"
    llm = f"arn:aws:bedrock:{REGION}::foundation-model/{p['LlmModelId']}"
    actions = allowed(API_FUNCTION, resolver)
    assert actions == {
        "bedrock:InvokeModel": {embed, llm},
        "bedrock:InvokeModelWithResponseStream": {llm},
        "s3:ListBucket": {bucket_arn},
        **{
            a: {f"{bucket_arn}/documents/*", f"{bucket_arn}/lancedb/*"}
            for a in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
        },
        "lambda:InvokeFunction": {resolver.getatt("IngestionFunction", "Arn")},
    }
    assert function_env(API_FUNCTION, resolver)["API_SYNC_FUNCTION"] == PHYSICAL["IngestionFunction"]
