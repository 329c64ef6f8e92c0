"""`rustynet admin ...`: the operator's command line for the control plane's admin API.

The one rule: this module parses, calls one `AdminApi` method, and formats; every decision is
the server's. Requests and answers are the typed wire bodies of `rustynet.ports.wire.v1`; the
output renders them back as the server's JSON (`to_json_value`), field for field. The
connection (URL, TLS SPKI pin, API key file from `admin.toml`) is opened by the composition
root through `AdminConnector`, and the pin is checked on every connection by
the client (`rustynet.adapters.control_client`).

Output: human tables by default, the server's JSON with `--json` (accepted before or after the
subcommand). `keys create` and `apikeys create` print ONLY the new secret on stdout (one line),
so `TOKEN=$(rustynet admin keys create)` works; everything else goes to stderr.

Exit codes of the admin group (they differ from `rustynet doctor`'s, see
`rustynet.adapters.cli.main`):

| code | meaning |
|---|---|
| 0 | ok |
| 1 | usage: bad arguments, unreadable/invalid admin.toml, key file or policy file |
| 2 | rejected by the server (4xx/5xx with its error; `audit verify` on a broken chain) |
| 3 | cannot reach or trust the server (connection, timeout, TLS, SPKI pin mismatch) |
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import importlib
import json
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, TextIO, cast

from rustynet.domain.errors import RustynetError
from rustynet.ports.control_api import (
    AdminApi,
    ControlRejected,
    ControlUnreachable,
    JsonObject,
    JsonValue,
)
from rustynet.ports.wire.codec import format_time, to_json_value
from rustynet.ports.wire.v1 import (
    AuditList,
    CreateApiKeyRequest,
    CreateJoinKeyRequest,
    UpdateNodeRequest,
)

DEFAULT_CONFIG = Path("~/.config/rustynet/admin.toml")
API_KEY_SCOPES = ("admin", "read-only", "enroll-only")
_TTL = re.compile(r"(\d+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class AdminExit(enum.IntEnum):
    """Exit codes of `rustynet admin` (the table in the module docstring)."""

    OK = 0
    USAGE = 1
    REJECTED = 2
    UNREACHABLE = 3


class AdminConnector(Protocol):
    """What the composition root provides: an API client for a config file."""

    def admin_api(self, config: Path) -> AdminApi:
        """Read `config` and the key file; raise a `RustynetError` for the operator if bad."""
        ...


class UsageError(RustynetError):
    """Bad arguments or a bad local file (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def parse_ttl(text: str) -> int:
    """`90`, `90s`, `30m`, `12h`, `7d` → seconds (positive)."""
    match = _TTL.fullmatch(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration like 30m, 12h or 7d: {text!r}")
    return int(match.group(1)) * _UNIT[match.group(2)]


def parse_tags(text: str) -> list[str]:
    """`tag:a,tag:b` → ["tag:a", "tag:b"] (the server validates each tag)."""
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if not tags:
        raise argparse.ArgumentTypeError("give at least one tag, e.g. tag:web,tag:db")
    return tags


def _int_at_least(minimum: int, hint: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(hint)
        return value

    return parse


_positive = _int_at_least(1, "must be at least 1")
_non_negative = _int_at_least(0, "must be 0 or more")


# --- output -----------------------------------------------------------------------------------


def _cell(value: JsonValue) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict) and set(value) == {"endpoint", "kind"}:  # a candidate
        return f"{value['endpoint']} ({value['kind']})"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_table(rows: Sequence[JsonValue], columns: Sequence[tuple[str, str]]) -> str:
    """Rows of JSON objects as an aligned text table with (header, field) columns."""
    cells = [[h.upper() for h, _ in columns]]
    for row in rows:
        obj = row if isinstance(row, dict) else {}
        cells.append([_cell(obj.get(field)) for _, field in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in cells
    )


def render_object(obj: JsonObject) -> str:
    """One object as `key: value` lines."""
    width = max((len(k) for k in obj), default=0)
    return "".join(f"{k.ljust(width)}  {_cell(v)}\n" for k, v in obj.items())


JOIN_KEY_COLUMNS = (
    ("id", "id"),
    ("kind", "kind"),
    ("state", "state"),
    ("uses", "uses"),
    ("max", "max_uses"),
    ("tags", "tags"),
    ("expires", "expires_at"),
)
NODE_COLUMNS = (
    ("id", "id"),
    ("name", "name"),
    ("state", "state"),
    ("address", "overlay_addresses"),
    ("tags", "tags"),
    ("last seen", "last_seen_at"),
)
API_KEY_COLUMNS = (
    ("id", "id"),
    ("scope", "scope"),
    ("expires", "expires_at"),
    ("revoked", "revoked_at"),
    ("last used", "last_used_at"),
)
AUDIT_COLUMNS = (
    ("#", "index"),
    ("time", "time"),
    ("actor", "actor"),
    ("action", "action"),
    ("target", "target"),
)


# --- commands ---------------------------------------------------------------------------------


def _plain(value: object) -> JsonValue:
    """A wire value as the JSON the server sent for it."""
    return cast("JsonValue", to_json_value(value))


class _Io:
    def __init__(self, out: TextIO, err: TextIO, as_json: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json

    def json(self, value: object) -> None:
        self.out.write(json.dumps(_plain(value), indent=2, sort_keys=True) + "\n")

    def rows(self, rows: Sequence[object], columns: Sequence[tuple[str, str]]) -> None:
        plain = [_plain(row) for row in rows]
        if self.as_json:
            self.json(plain)
        else:
            self.out.write(render_table(plain, columns))

    def obj(self, value: object, note: str | None = None) -> None:
        plain = cast("JsonObject", _plain(value))
        if self.as_json:
            self.json(plain)
        else:
            if note:
                self.err.write(note + "\n")
            self.out.write(render_object(plain))


Handler = Callable[[AdminApi, argparse.Namespace, _Io], Coroutine[Any, Any, AdminExit]]


def _print_secret(io: _Io, created: object, secret: str, note: str) -> AdminExit:
    """The new secret alone on stdout (the note on stderr), or the whole answer with --json."""
    if io.as_json:
        io.json(created)
        return AdminExit.OK
    io.err.write(note + "\n")
    io.out.write(secret + "\n")
    return AdminExit.OK


async def _keys_create(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    if ns.uses is not None and not ns.reusable and ns.uses != 1:
        raise UsageError("--uses N needs --reusable (a one-time key has exactly one use)")
    request = CreateJoinKeyRequest(
        reusable=ns.reusable, uses=ns.uses, tags=tuple(ns.tags or ()), ttl_seconds=ns.ttl
    )
    created = await api.create_join_key(request)
    note = f"join key {created.id} expires {format_time(created.expires_at)}"
    return _print_secret(io, created, created.token, note)


async def _keys_list(api: AdminApi, _ns: argparse.Namespace, io: _Io) -> AdminExit:
    io.rows(await api.list_join_keys(), JOIN_KEY_COLUMNS)
    return AdminExit.OK


async def _keys_revoke(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    io.obj(await api.revoke_join_key(ns.id), f"join key {ns.id} revoked")
    return AdminExit.OK


async def _resolve_node(api: AdminApi, node: str) -> str:
    """A node id, or a unique node name resolved to its id."""
    try:
        await api.get_node(node)
    except ControlRejected as exc:
        if exc.status != 404:
            raise
    else:
        return node
    matches = [n.id for n in await api.list_nodes() if n.name == node]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"several nodes are named {node!r}; use the node id")
    raise ControlRejected(404, "not_found", f"no node with id or name {node!r}")


async def _nodes_list(api: AdminApi, _ns: argparse.Namespace, io: _Io) -> AdminExit:
    io.rows(await api.list_nodes(), NODE_COLUMNS)
    return AdminExit.OK


async def _nodes_show(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    io.obj(await api.get_node(await _resolve_node(api, ns.node)))
    return AdminExit.OK


async def _nodes_revoke(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    node_id = await _resolve_node(api, ns.node)
    io.obj(await api.revoke_node(node_id), f"node {node_id} revoked")
    return AdminExit.OK


async def _nodes_tag(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    node_id = await _resolve_node(api, ns.node)
    request = UpdateNodeRequest(tags=tuple(ns.tags))
    io.obj(await api.update_node(node_id, request), f"node {node_id} tags set")
    return AdminExit.OK


async def _nodes_rename(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    node_id = await _resolve_node(api, ns.node)
    request = UpdateNodeRequest(name=ns.name)
    io.obj(await api.update_node(node_id, request), f"node {node_id} renamed")
    return AdminExit.OK


async def _nodes_delete(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    node_id = await _resolve_node(api, ns.node)
    await api.delete_node(node_id)
    io.obj({"id": node_id, "deleted": True}, f"node {node_id} deleted")
    return AdminExit.OK


def read_policy_file(path: Path) -> JsonObject:
    """A policy document from a JSON (or, with PyYAML installed, YAML) file."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from exc
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            raise UsageError(f"{path}: YAML needs PyYAML; use a .json document") from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML: {exc}") from exc
    else:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise UsageError(f"{path}: a policy document is a JSON/YAML object")
    return document


async def _policy_get(api: AdminApi, _ns: argparse.Namespace, io: _Io) -> AdminExit:
    info = await api.get_policy()
    if io.as_json:
        io.json(info)
        return AdminExit.OK
    io.err.write(f"policy version {info.version}\n")
    document = info.document
    if document is None:
        io.err.write("no policy: every connection is denied (default deny)\n")
    io.json(document)
    return AdminExit.OK


async def _policy_set(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    info = await api.put_policy(read_policy_file(ns.file))
    if io.as_json:
        io.json(info)
    else:
        io.out.write(f"policy version {info.version} is live\n")
    return AdminExit.OK


async def _policy_check(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    result = await api.check_policy(read_policy_file(ns.file))
    io.obj(result, f"{ns.file}: valid")
    return AdminExit.OK


async def _audit_list(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    entries = await api.list_audit(start=ns.start, limit=ns.limit)
    if io.as_json:
        io.json(AuditList(entries))
        return AdminExit.OK
    io.rows(entries, AUDIT_COLUMNS)
    return AdminExit.OK


async def _audit_verify(api: AdminApi, _ns: argparse.Namespace, io: _Io) -> AdminExit:
    result = await api.verify_audit()
    if io.as_json:
        io.json(result)
    else:
        io.out.write(f"{'ok' if result.ok else 'BROKEN'}: {result.message}\n")
    return AdminExit.OK if result.ok else AdminExit.REJECTED


async def _apikeys_create(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    created = await api.create_api_key(CreateApiKeyRequest(scope=ns.scope, ttl_seconds=ns.ttl))
    note = f"API key {created.id} ({ns.scope}); it is shown only now"
    return _print_secret(io, created, created.key, note)


async def _apikeys_list(api: AdminApi, _ns: argparse.Namespace, io: _Io) -> AdminExit:
    io.rows(await api.list_api_keys(), API_KEY_COLUMNS)
    return AdminExit.OK


async def _apikeys_revoke(api: AdminApi, ns: argparse.Namespace, io: _Io) -> AdminExit:
    io.obj(await api.revoke_api_key(ns.id), f"API key {ns.id} revoked")
    return AdminExit.OK


# --- parser -----------------------------------------------------------------------------------


def _json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    return parent


def build_parser(prog: str = "rustynet admin") -> argparse.ArgumentParser:
    """The admin parser; each leaf sets `handler`."""
    parser = _Parser(
        prog=prog,
        description="Administer a Rustynet control plane. Exit codes: 0 ok, 1 usage, "
        "2 rejected by the server, 3 cannot reach or trust the server.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"admin.toml with URL, TLS pin and key file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument("--json", action="store_true", default=False, help="print JSON")
    js = [_json_parent()]
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")

    def leaf(sub: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=js, help=help_text)
        p.set_defaults(handler=handler)
        return p

    keys = groups.add_parser("keys", help="join keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = leaf(keys, "create", _keys_create, "create a join key; prints only the token")
    create.add_argument("--reusable", action="store_true", help="allow several enrollments")
    create.add_argument("--uses", type=_positive, help="enrollments a reusable key allows")
    create.add_argument("--tags", type=parse_tags, help="tag:a,tag:b for enrolled nodes")
    create.add_argument("--ttl", type=parse_ttl, default=1800, help="lifetime (default 30m)")
    leaf(keys, "list", _keys_list, "list join keys (no secrets)")
    leaf(keys, "revoke", _keys_revoke, "revoke a join key").add_argument("id")

    nodes = groups.add_parser("nodes", help="nodes").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(nodes, "list", _nodes_list, "list nodes")
    leaf(nodes, "show", _nodes_show, "show one node (id or name)").add_argument("node")
    leaf(nodes, "revoke", _nodes_revoke, "revoke a node").add_argument("node")
    tag = leaf(nodes, "tag", _nodes_tag, "set a node's tags")
    tag.add_argument("node")
    tag.add_argument("--tags", type=parse_tags, required=True, help="tag:a,tag:b")
    rename = leaf(nodes, "rename", _nodes_rename, "rename a node")
    rename.add_argument("node")
    rename.add_argument("name")
    leaf(nodes, "delete", _nodes_delete, "delete a node").add_argument("node")

    policy = groups.add_parser("policy", help="access policy").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(policy, "get", _policy_get, "print the live policy document")
    leaf(policy, "set", _policy_set, "validate and activate a policy file").add_argument(
        "file", type=Path
    )
    leaf(policy, "check", _policy_check, "validate a policy file; change nothing").add_argument(
        "file", type=Path
    )

    audit = groups.add_parser("audit", help="audit log").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = leaf(audit, "list", _audit_list, "list audit entries")
    listing.add_argument("--start", type=_non_negative, default=0)
    listing.add_argument("--limit", type=_positive, default=None)
    leaf(audit, "verify", _audit_verify, "verify the hash chain and checkpoints")

    apikeys = groups.add_parser("apikeys", help="admin API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    ak = leaf(apikeys, "create", _apikeys_create, "create an API key; prints only the key")
    ak.add_argument("--scope", choices=API_KEY_SCOPES, default="read-only")
    ak.add_argument("--ttl", type=parse_ttl, default=None, help="lifetime (default 90d)")
    leaf(apikeys, "list", _apikeys_list, "list API keys (no secrets)")
    leaf(apikeys, "revoke", _apikeys_revoke, "revoke an API key").add_argument("id")
    return parser


async def _run(connector: AdminConnector, ns: argparse.Namespace, io: _Io) -> AdminExit:
    config = Path(ns.config) if ns.config is not None else DEFAULT_CONFIG.expanduser()
    api = connector.admin_api(config)
    try:
        handler: Handler = ns.handler
        return await handler(api, ns, io)
    finally:
        await api.close()


def main(
    argv: Sequence[str],
    connector: AdminConnector,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    prog: str = "rustynet admin",
) -> int:
    """Run `rustynet admin ARGV`; return the exit code from the table above."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        ns = build_parser(prog).parse_args(list(argv))
    except UsageError as exc:
        err.write(f"{exc}\n")
        return int(AdminExit.USAGE)
    except SystemExit as exc:  # --help
        return int(exc.code) if isinstance(exc.code, int) else int(AdminExit.USAGE)
    try:
        return int(asyncio.run(_run(connector, ns, _Io(out, err, bool(ns.json)))))
    except ControlRejected as exc:
        err.write(f"{prog}: {exc}\n")
        return int(AdminExit.REJECTED)
    except ControlUnreachable as exc:
        err.write(f"{prog}: {exc}\n")
        return int(AdminExit.UNREACHABLE)
    except RustynetError as exc:  # config, key file, policy file: the operator's to fix
        err.write(f"{prog}: {exc}\n")
        return int(AdminExit.USAGE)
