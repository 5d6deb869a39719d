"""The server's own configuration, and who may do what (design.md §5, "trust boundary").

A browser never names a server path or a Python callable. It picks by *name* from what
this file lists, and every path built from a browser's choice is resolved (symlinks
included) and must stay inside the root an admin named. The file itself, and the files
admins place, are trusted; nothing that arrives from a browser is.

``tracin_audit.toml`` beside ``app.py`` (or the file named by ``$TRACIN_AUDIT_CONFIG``)::

    [workspaces]            # name = a workspace .toml, or a folder of them
    cifar10 = "/data/audits/cifar10/workspace.toml"
    [data_roots]            # name = a folder "Build one here" may read datasets from
    images = "/data/images"
    [limits]
    max_upload_mb = 200     # one uploaded file
    max_zip_mb = 1024       # an uploaded zip, uncompressed
    max_zip_files = 100000  # members of an uploaded zip
    [factories]
    modules = ["my_models"] # modules whose callables a workspace file may name
    [auth]
    mode = "auto"           # auto | oidc | local (auto: oidc when secrets have [auth])
    default_role = "none"   # role of a signed-in user not listed below (none = no access)
    [auth.users]
    "alice@example.com" = "admin"

No Streamlit here: the pages read the identity from ``st.user`` and ask
:meth:`ServerConfig.role_of` and :func:`allowed` what it may do.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = [
    "ACTIONS",
    "AccessDenied",
    "ConfigError",
    "PathRefused",
    "ROLES",
    "ServerConfig",
    "allowed",
    "default_config_path",
    "load_server_config",
]

ROLES = ("admin", "annotator", "viewer")

#: action -> roles that may do it. Checked where the action runs, not only where shown.
ACTIONS: dict[str, frozenset[str]] = {
    "open_workspace": frozenset({"admin"}),     # open a listed workspace from the page, or build one
    "upload": frozenset({"admin"}),             # checkpoints and zips ("Build one here")
    "adjudicate": frozenset({"admin"}),
    "export_all": frozenset({"admin"}),         # every reviewer's decisions, corrected labels
    "retrain": frozenset({"admin"}),            # Evaluation's retraining (minutes of CPU)
    "review": frozenset({"admin", "annotator"}),
    "export_own": frozenset({"admin", "annotator"}),
    "view_workspace": frozenset({"admin", "annotator"}),
    "influence": frozenset(ROLES),
    "evaluation": frozenset(ROLES),
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
ENV_VAR = "TRACIN_AUDIT_CONFIG"


class ConfigError(ValueError):
    """The server config file is missing a value, or holds a wrong one (names the file)."""


class PathRefused(ValueError):
    """A path from a browser's choice is outside its root (the message reveals nothing else)."""


class AccessDenied(PermissionError):
    """The signed-in user's role may not do this."""


def allowed(role: Optional[str], action: str) -> bool:
    """May ``role`` do ``action`` (a key of :data:`ACTIONS`)? Unknown actions: no."""
    return role in ACTIONS.get(action, frozenset())


def default_config_path() -> Path:
    """``$TRACIN_AUDIT_CONFIG``, else ``tracin_audit.toml`` in the repository root."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "tracin_audit.toml"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class ServerConfig:
    """What the server offers, by name. Paths are absolute and resolved.

    ``workspaces``: name -> workspace ``.toml`` file; ``data_roots``: name -> folder;
    ``factory_modules``: modules (and their submodules) a workspace file's
    ``[model] factory`` may come from, besides the registered architectures';
    ``users``: lower-cased e-mail or subject -> role.
    """

    source: Optional[Path] = None
    workspaces: Mapping[str, Path] = field(default_factory=dict)
    data_roots: Mapping[str, Path] = field(default_factory=dict)
    max_upload_bytes: int = 200 << 20
    max_zip_bytes: int = 1 << 30
    max_zip_files: int = 100_000
    factory_modules: tuple[str, ...] = ()
    auth_mode: str = "auto"
    default_role: Optional[str] = None
    users: Mapping[str, str] = field(default_factory=dict)

    # -- identity -------------------------------------------------------------------
    def role_of(self, *identities: Optional[str]) -> Optional[str]:
        """The role of a signed-in user known by any of ``identities`` (e-mail, subject)."""
        for ident in identities:
            if ident and str(ident).strip().lower() in self.users:
                return self.users[str(ident).strip().lower()]
        return self.default_role

    # -- paths ----------------------------------------------------------------------
    def workspace_path(self, name: str) -> Path:
        """The workspace file listed as ``name`` (re-checked: still a file, still a .toml)."""
        if not isinstance(name, str) or name not in self.workspaces:
            raise PathRefused(f"no workspace named {str(name)[:80]!r} on this server")
        path = self.workspaces[name]
        if not path.is_file():
            raise PathRefused(f"workspace {name!r} is listed by the server config but its file is gone")
        return path

    def data_path(self, root_name: str, relative: str = "") -> Path:
        """``relative`` inside the data root ``root_name``, resolved with symlinks.

        Raises :class:`PathRefused` (saying only that it is outside the root) for absolute
        paths, ``..`` that climbs out, or a symlink that leads out. Existence is checked
        by the caller, so a refused path says nothing about what exists there.
        """
        if root_name not in self.data_roots:
            raise PathRefused(f"no data root named {str(root_name)[:80]!r} on this server")
        root = self.data_roots[root_name]
        rel = str(relative or "").strip().replace("\\", "/")
        if "\x00" in rel or rel.startswith("/") or rel.startswith("~") or re.match(r"^[A-Za-z]:", rel):
            raise PathRefused(f"{rel[:200]!r} is not a path inside the data root {root_name!r}")
        candidate = (root / rel).resolve()
        if not _inside(candidate, root):
            raise PathRefused(f"{rel[:200]!r} is not a path inside the data root {root_name!r}")
        return candidate

    def check_factory(self, factory: Any) -> None:
        """Refuse a ``module:callable`` factory whose module is not allowed (nothing imported)."""
        from .models import ARCHITECTURES, canonical_factory_path

        if callable(factory):
            return
        text = canonical_factory_path(str(factory))
        registered = {a.factory_path for a in ARCHITECTURES.values() if a.factory_path}
        if text in registered:
            return
        module = text.split(":", 1)[0].strip()
        if any(module == m or module.startswith(m + ".") for m in self.factory_modules):
            return
        allowed_text = ", ".join(self.factory_modules) or "none besides the registered architectures"
        where = f" ({self.source})" if self.source else ""
        raise AccessDenied(
            f"model factory {text[:200]!r} is not allowed on this server: its module is not in "
            f"[factories] modules of the server config{where} (allowed: {allowed_text})")

    def check_upload_dir(self, upload_dir: Path) -> None:
        """Uploads must live outside every data root and workspace folder."""
        up = upload_dir.resolve()
        places = list(self.data_roots.items()) + [(n, p.parent) for n, p in self.workspaces.items()]
        for name, place in places:
            if _inside(up, place) or _inside(place, up):
                raise ConfigError(
                    f"{self.source}: the upload folder {up} overlaps {name!r} ({place}); "
                    "uploads must live outside every data root and workspace folder")


def _mb(value: Any, key: str, source: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1 << 30:
        raise ConfigError(f"{source}: [limits] {key} must be a positive number, got {value!r}")
    return int(value * (1 << 20))


def _check_name(name: str, section: str, source: Path) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{source}: [{section}] name {name!r} must be 1-80 letters, digits, "
                          "spaces, '.', '_' or '-' (it is shown to users and used in URLs)")
    return name


def _expand_workspaces(table: Mapping[str, Any], base: Path, source: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, value in table.items():
        _check_name(name, "workspaces", source)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: [workspaces] {name} must be a path string")
        path = (base / Path(value).expanduser()).resolve()
        if path.is_dir():
            files = sorted(path.glob("*.toml")) + sorted(path.glob("*/workspace.toml"))
            for f in files:
                sub = f.relative_to(path).with_suffix("").as_posix().replace("/", " - ")
                out[_check_name(f"{name} - {sub}"[:80], "workspaces", source)] = f.resolve()
        elif path.suffix.lower() == ".toml":
            out[name] = path  # a missing file is reported when it is opened
        else:
            raise ConfigError(f"{source}: [workspaces] {name} = {value!r} is neither a .toml file "
                              "nor a folder")
    for builtin in ("demo", "fashion"):
        if builtin in out:
            raise ConfigError(f"{source}: [workspaces] the name {builtin!r} is a built-in workspace's")
    return out


def load_server_config(path: Optional[os.PathLike[str] | str] = None) -> ServerConfig:
    """Read the server config (``path`` or :func:`default_config_path`).

    A missing default file gives the defaults: only the built-in demo, no data roots,
    local mode. A missing file named explicitly (or by the environment) is an error.
    Relative paths are relative to the file's folder.
    """
    explicit = path is not None or bool(os.environ.get(ENV_VAR, "").strip())
    source = Path(path).expanduser() if path is not None else default_config_path()
    if not source.is_file():
        if explicit:
            raise ConfigError(f"{source}: server config file not found (set by "
                              f"{'the caller' if path is not None else '$' + ENV_VAR})")
        return ServerConfig()
    try:
        cfg = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not a valid TOML file ({exc})") from None
    known = {"workspaces", "data_roots", "limits", "factories", "auth"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(known))}")
    base = source.resolve().parent

    def table(name: str) -> dict[str, Any]:
        t = cfg.get(name, {})
        if not isinstance(t, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        return t

    workspaces = _expand_workspaces(table("workspaces"), base, source)
    roots: dict[str, Path] = {}
    for name, value in table("data_roots").items():
        _check_name(name, "data_roots", source)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: [data_roots] {name} must be a path string")
        root = (base / Path(value).expanduser()).resolve()
        if not root.is_dir():
            raise ConfigError(f"{source}: [data_roots] {name} = {value!r} is not a folder")
        roots[name] = root
    limits = table("limits")
    bad = sorted(set(limits) - {"max_upload_mb", "max_zip_mb", "max_zip_files"})
    if bad:
        raise ConfigError(f"{source}: [limits] unknown key(s) {', '.join(bad)}")
    files = limits.get("max_zip_files", 100_000)
    if isinstance(files, bool) or not isinstance(files, int) or files < 1:
        raise ConfigError(f"{source}: [limits] max_zip_files must be a positive integer, got {files!r}")
    modules = table("factories").get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and _MODULE_RE.match(m) for m in modules):
        raise ConfigError(f"{source}: [factories] modules must be a list of module names, got {modules!r}")
    auth = table("auth")
    mode = auth.get("mode", "auto")
    if mode not in ("auto", "oidc", "local"):
        raise ConfigError(f"{source}: [auth] mode must be auto, oidc or local, got {mode!r}")
    default_role = auth.get("default_role", "none")
    if default_role not in (*ROLES, "none"):
        raise ConfigError(f"{source}: [auth] default_role must be one of {', '.join(ROLES)} or none")
    users_t = auth.get("users", {})
    if not isinstance(users_t, dict):
        raise ConfigError(f"{source}: [auth.users] must be a table of \"user\" = \"role\"")
    users: dict[str, str] = {}
    for user, role in users_t.items():
        if role not in ROLES:
            raise ConfigError(f"{source}: [auth.users] {user!r} has role {role!r}; "
                              f"roles are {', '.join(ROLES)}")
        users[str(user).strip().lower()] = role
    return ServerConfig(
        source=source.resolve(),
        workspaces=workspaces,
        data_roots=roots,
        max_upload_bytes=_mb(limits.get("max_upload_mb", 200), "max_upload_mb", source),
        max_zip_bytes=_mb(limits.get("max_zip_mb", 1024), "max_zip_mb", source),
        max_zip_files=files,
        factory_modules=tuple(modules),
        auth_mode=mode,
        default_role=None if default_role == "none" else default_role,
        users=users,
    )
