"""Table versions of the LanceDB protocol: `version/list/`, `restore/` and tags (`tags/*`, Lance's tags).

`checkout(N)` needs no endpoint of its own: the client sends `"version": N` in describe, query and
count_rows bodies, which read that version; `checkout("tag")` asks `tags/version/` first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response

from appliance.errors import InvalidInput
from appliance.query.lancedb.wire import optional_int, optional_json, optional_str
from appliance.query.service import QueryService, Table
from appliance.storage.tables import clean_lance_message
from appliance.web import json_response


def register(bp: Blueprint, service: QueryService) -> None:
    @bp.post("/table/<name>/version/list/")
    def list_versions(name: str) -> Response:
        versions = [{"version": int(v["version"]), "timestamp": _rfc3339(v.get("timestamp")),
                     "metadata": {str(k): str(x) for k, x in (v.get("metadata") or {}).items()}}
                    for v in service.table(name).versions()]
        return json_response({"versions": versions})

    @bp.post("/table/<name>/restore/")
    def restore(name: str) -> Response:
        version = optional_int(optional_json(), "version", 1)
        if version is None:
            raise InvalidInput("restore needs {\"version\": N}")
        return json_response({"version": service.table(name).restore(version)})

    @bp.post("/table/<name>/tags/list/")
    def list_tags(name: str) -> Response:
        tags = service.table(name).snapshot.dataset.tags.list()
        # manifestSize is camelCase and required: the client fails without it
        return json_response({tag: {"branch": t.get("branch"), "version": int(t["version"]),
                                    "manifestSize": int(t.get("manifest_size") or 0)} for tag, t in tags.items()})

    @bp.post("/table/<name>/tags/create/")
    def create_tag(name: str) -> Response:
        tag, version = _tag_and_version(optional_json())
        _tags(lambda tags: tags.create(tag, version), service.table(name))
        return json_response({})

    @bp.post("/table/<name>/tags/update/")
    def update_tag(name: str) -> Response:
        tag, version = _tag_and_version(optional_json())
        _tags(lambda tags: tags.update(tag, version), service.table(name))
        return json_response({})

    @bp.post("/table/<name>/tags/delete/")
    def delete_tag(name: str) -> Response:
        tag = _tag(optional_json())
        _tags(lambda tags: tags.delete(tag), service.table(name))
        return json_response({})

    @bp.post("/table/<name>/tags/version/")
    def tag_version(name: str) -> Response:
        tag = _tag(optional_json())
        return json_response({"version": int(_tags(lambda tags: tags.get_version(tag), service.table(name)))})


def _tag(doc: dict[str, Any]) -> str:
    tag = optional_str(doc, "tag")
    if not tag:
        raise InvalidInput("a tag name is required: {\"tag\": \"name\"}")
    return tag


def _tag_and_version(doc: dict[str, Any]) -> tuple[str, int]:
    version = optional_int(doc, "version", 1)
    if version is None:
        raise InvalidInput("a version is required: {\"tag\": \"name\", \"version\": N}")
    return _tag(doc), version


def _tags(run: Any, table: Table) -> Any:
    """Run a tag operation on the table's version (the latest); Lance's refusals become 400 (a 404 would make
    the client report the *table* as not found)."""
    tags = table.snapshot.dataset.tags
    try:
        return run(tags)
    except (ValueError, OSError, RuntimeError) as exc:
        raise InvalidInput("tag operation failed", clean_lance_message(exc)) from exc


def _rfc3339(value: object) -> str:
    """Lance gives naive UTC datetimes; the client wants RFC 3339."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
