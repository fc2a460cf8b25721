"""openapi.yaml is valid, served as is, and describes exactly the routes the app serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch"}


def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def test_spec_is_valid_openapi_3_1():
    document = spec()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_spec_is_served_as_is(client):
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.data == SPEC_PATH.read_bytes()


def _app_operations(app) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        operations |= {(method.lower(), path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return operations


def _spec_operations() -> set[tuple[str, str]]:
    return {(method, path) for path, item in spec()["paths"].items() for method in item if method in METHODS}


def test_every_route_the_app_registers_is_in_the_spec(app):
    missing = _app_operations(app) - _spec_operations()
    assert not missing, f"served but not described: {sorted(missing)}"


def test_every_operation_in_the_spec_is_served(app):
    missing = _spec_operations() - _app_operations(app)
    assert not missing, f"described but not served: {sorted(missing)}"


def test_roles_in_the_spec_match_the_views(app):
    described = {
        (method, path): set(operation.get("x-roles", []))
        for path, item in spec()["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }
    for rule in app.url_map.iter_rules():
        roles = getattr(app.view_functions[rule.endpoint], "required_roles", None)
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if roles is None:
                expected = set()
            else:
                expected = set(roles) or {"admin", "reader", "secret-reader", "security", "sender"}
            assert described[(method.lower(), path)] == expected, (method, path)
