"""Nothing a visitor sends becomes a path or code; roles are enforced where actions run.

The engine half checks ``tracin_core.audit.server_config`` and the loaders directly; the app half
drives ``app.py`` in process with AppTest, as an anonymous visitor (local mode: every
visitor is admin, so the server must still refuse paths and code) and as signed-in users
of each role (``AppTest.user`` stands in for ``st.user``; the browser tests in
``tests/test_browser_security.py`` sign in through a real OIDC provider). A marker file
stands for "code ran": it must never appear.
"""
from __future__ import annotations

import io
import os
import struct
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest

from tests.conftest import REPO, isolated_app_cache, write_server_config
from tracin_core.audit import settings
from tracin_core.audit.server_config import (
    ACTIONS, AccessDenied, ConfigError, PathRefused, ServerConfig, allowed, load_server_config,
)

DEMO = REPO / "assets" / "demo"
USERS = {"alice@example.com": "admin", "bob@example.com": "annotator", "carol@example.com": "viewer"}


def evil_toml(marker: Path, factory: str = "subprocess:run") -> str:
    """A workspace file whose factory would run a command if it were ever imported and called."""
    return textwrap.dedent(f"""
        name = "evil"
        [model]
        factory = "{factory}"
        final_fc_layer = "fc2"
        kwargs = {{args = ["touch", "{marker}"]}}
        [checkpoints]
        paths = "{DEMO}/checkpoint-*.pt"
        [train]
        kind = "digits"
        split = "train"
    """)


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (far over PIL's limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bytes(value: int = 0, size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def pickle_payload(marker: Path) -> bytes:
    """A legacy torch checkpoint (a pickle) that runs ``touch marker`` when unpickled."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Payload(), protocol=2)


# ----------------------------------------------------------------------------- engine


def test_data_path_stays_inside_its_root(tmp_path):
    root = tmp_path / "root"
    (root / "cats").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "link_out").symlink_to(outside)
    (root / "link_in").symlink_to(root / "cats")
    cfg = ServerConfig(data_roots={"data": root.resolve()})
    assert cfg.data_path("data", "cats") == (root / "cats").resolve()
    assert cfg.data_path("data", "") == root.resolve()
    assert cfg.data_path("data", "link_in") == (root / "cats").resolve()
    messages = []
    for rel in ["../secret", "cats/../../secret", "/etc", "/etc/passwd", "~", "link_out",
                "link_out/x", "/no/such/place", "C:/Windows", "a\x00b"]:
        with pytest.raises(PathRefused) as err:
            cfg.data_path("data", rel)
        messages.append(str(err.value).replace(repr(rel[:200]), "<rel>"))
    # the same sentence whether or not the target exists: nothing is revealed
    assert len(set(messages)) == 1, messages
    with pytest.raises(PathRefused, match="no data root named"):
        cfg.data_path("etc", "")


def test_factory_allow_list_is_checked_before_anything_is_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "evil_factory_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef Net(): pass\n")
    monkeypatch.syspath_prepend(str(pkg))
    cfg = ServerConfig(factory_modules=("my_models",))
    for factory in ["evil_factory_mod:Net", "subprocess:run", "os:system", "my_models_x:Net",
                    "builtins:eval"]:
        with pytest.raises(AccessDenied, match="not allowed on this server"):
            cfg.check_factory(factory)
    assert not marker.exists() and "evil_factory_mod" not in sys.modules
    cfg.check_factory("tracin_core.audit.models:DigitsCNN")  # registered architectures: always
    cfg.check_factory("my_models:Net")
    cfg.check_factory("my_models.sub:Net")  # submodules of an allowed module


def test_workspace_file_factory_refused_before_it_runs(tmp_path):
    from tracin_core.audit.workspace import Workspace, WorkspaceError

    marker = tmp_path / "marker"
    path = tmp_path / "evil.toml"
    path.write_text(evil_toml(marker))
    with pytest.raises(WorkspaceError, match="subprocess:run.*not allowed"):
        Workspace.from_toml(path, cache_dir=tmp_path / "c", check_factory=ServerConfig().check_factory)
    assert not marker.exists()


def test_server_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACIN_AUDIT_CONFIG", raising=False)
    (tmp_path / "audits" / "b").mkdir(parents=True)
    (tmp_path / "audits" / "a.toml").write_text("")
    (tmp_path / "audits" / "b" / "workspace.toml").write_text("")
    (tmp_path / "data").mkdir()
    path = write_server_config(tmp_path / "cfg.toml", workspaces={"audits": "audits", "one": "audits/a.toml"},
                               data_roots={"data": "data"}, users={"Alice@Example.com": "admin"},
                               mode="oidc", default_role="viewer", limits={"max_upload_mb": 1.5},
                               factory_modules=["my_models"])
    cfg = load_server_config(path)
    assert dict(cfg.workspaces) == {"audits - a": (tmp_path / "audits" / "a.toml").resolve(),
                                    "audits - b - workspace": (tmp_path / "audits" / "b" / "workspace.toml").resolve(),
                                    "one": (tmp_path / "audits" / "a.toml").resolve()}
    assert cfg.data_roots == {"data": (tmp_path / "data").resolve()}
    assert cfg.max_upload_bytes == int(1.5 * 2**20) and cfg.factory_modules == ("my_models",)
    assert cfg.role_of("alice@example.COM") == "admin" and cfg.role_of("nobody@x.org") == "viewer"
    assert cfg.role_of(None, "alice@example.com") == "admin"  # e-mail or subject
    # uploads must live outside every root and workspace folder
    with pytest.raises(ConfigError, match="overlaps"):
        cfg.check_upload_dir(tmp_path / "data" / "uploads")
    cfg.check_upload_dir(tmp_path / "cache" / "uploads")
    # a missing default file gives the defaults; a missing named one is an error
    monkeypatch.setattr("tracin_core.audit.server_config.default_config_path", lambda: tmp_path / "none.toml")
    assert load_server_config() == ServerConfig()
    with pytest.raises(ConfigError, match="not found"):
        load_server_config(tmp_path / "none.toml")
    bad = {
        "[auth.users]\n\"a@b.c\" = \"root\"\n": "roles are",
        "[auth]\nmode = \"open\"\n": "mode must be",
        "[nope]\n": "unknown section",
        "[data_roots]\nx = \"missing\"\n": "not a folder",
        "[workspaces]\ndemo = \"audits/a.toml\"\n": "built-in workspace",
        "[workspaces]\nfashion = \"audits/a.toml\"\n": "built-in workspace",
        "[workspaces]\n\"../x\" = \"audits/a.toml\"\n": "must be 1-80",
        "[limits]\nmax_upload_mb = -1\n": "positive",
        "[factories]\nmodules = [\"os; rm\"]\n": "module names",
        "x = [": "not a valid TOML",
    }
    for text, message in bad.items():
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_server_config(tmp_path / "bad.toml")


def test_roles_table():
    assert allowed("admin", "adjudicate") and not allowed("annotator", "adjudicate")
    assert allowed("annotator", "review") and not allowed("viewer", "review")
    assert allowed("viewer", "influence") and allowed("viewer", "evaluation")
    assert not allowed("viewer", "view_workspace") and not allowed("annotator", "open_workspace")
    assert not allowed(None, "influence") and not allowed("admin", "no-such-action")
    assert {r for a in ACTIONS.values() for r in a} == {"admin", "annotator", "viewer"}


def test_decompression_bomb_png_is_refused(tmp_path):
    from PIL import Image

    from tracin_core.audit.datasets import check_image_files, load_dataset, open_image

    assert Image.MAX_IMAGE_PIXELS is not None  # nothing switched PIL's limit off
    with pytest.raises(Image.DecompressionBombError):
        open_image(io.BytesIO(bomb_png()))
    # just over the limit: PIL alone only warns, here it is an error
    side = int((Image.MAX_IMAGE_PIXELS + 10) ** 0.5) + 1
    with pytest.raises(Image.DecompressionBombError):
        open_image(io.BytesIO(bomb_png(side, side)))
    folder = tmp_path / "imgs"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "ok.png").write_bytes(png_bytes())
    (folder / "b" / "bomb.png").write_bytes(bomb_png())
    (folder / "a" / "not-an-image.png").write_bytes(b"hello")
    problems = check_image_files(load_dataset("image_folder", root=folder, image_size=8))
    assert len(problems) == 2
    assert any(p.startswith("b/bomb.png: DecompressionBombError") for p in problems)
    assert any(p.startswith("a/not-an-image.png: UnidentifiedImageError") for p in problems)


def test_zip_caps(tmp_path):
    from tracin_core.audit.datasets import extract_zip_safely

    many = tmp_path / "many.zip"
    many.write_bytes(make_zip({f"a/{i}.png": b"x" for i in range(20)}))
    with pytest.raises(ValueError, match="20 members \\(limit 10\\)"):
        extract_zip_safely(many, tmp_path / "out1", max_members=10)
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(make_zip({"a/big.png": b"\0" * (8 << 20)}))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ValueError, match="over the limit"):
        extract_zip_safely(bomb, tmp_path / "out2", max_bytes=2 << 20)
    evil = tmp_path / "evil.zip"
    evil.write_bytes(make_zip({"a/ok.png": b"x", "../../escaped.png": b"x"}))
    with pytest.raises(ValueError, match="escapes the extraction folder"):
        extract_zip_safely(evil, tmp_path / "x" / "y" / "out3")
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "x" / "escaped.png").exists()
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A server config with a data root, a listed evil workspace, small limits and users."""
    base = tmp_path_factory.mktemp("security")
    marker = base / "marker"
    root = base / "data"
    (root / "imgs" / "cat").mkdir(parents=True)
    (root / "imgs" / "cat" / "a.png").write_bytes(png_bytes())
    (root / "link_out").symlink_to(Path("/etc"))
    listed = base / "listed"
    listed.mkdir()
    (listed / "evil.toml").write_text(evil_toml(marker))
    local = write_server_config(base / "local.toml", workspaces={"evil": listed / "evil.toml"},
                                data_roots={"data": root},
                                limits={"max_upload_mb": 1, "max_zip_mb": 2, "max_zip_files": 50})
    oidc = write_server_config(base / "oidc.toml", data_roots={"data": root}, users=USERS, mode="oidc")
    return {"base": base, "marker": marker, "root": root, "local": local, "oidc": oidc}


def _run(at, timeout: float = 120):
    at.run(timeout=timeout)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _app(page: str | None = None, query: dict | None = None, user: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    if user is not None:
        at.secrets["auth"] = {"redirect_uri": "http://127.0.0.1:1/oauth2callback", "cookie_secret": "x" * 32,
                              "client_id": "c", "client_secret": "s",
                              "server_metadata_url": "http://127.0.0.1:1/.well-known/openid-configuration"}
        at.user = user
    _run(at)
    if page:
        at.switch_page(page)
        _run(at)
    return at


def _texts(at) -> str:
    kinds = ("title", "subheader", "markdown", "caption", "error", "info", "warning", "success")
    return "\n".join(str(e.value) for kind in kinds for e in at.get(kind))


def _signed_in(email: str) -> dict:
    return {"is_logged_in": True, "email": email, "sub": f"sub-{email}", "name": email.split("@")[0]}


@pytest.fixture(scope="module")
def local_app(env, tmp_path_factory):
    with isolated_app_cache(tmp_path_factory.mktemp("sec_cache"), config=env["local"]) as cache:
        yield cache


def test_workspace_url_parameter_is_a_name_never_a_path(env, local_app):
    # step 1 of the attack: a workspace file lands in the upload folder (as any upload does)
    settings.upload_dir().mkdir(parents=True, exist_ok=True)
    uploaded = settings.upload_dir() / "0123456789abcdef0123456789abcdef.zip"
    uploaded.write_text(evil_toml(env["marker"]))
    link = env["base"] / "link.toml"
    link.symlink_to(uploaded)
    for value in [str(uploaded), "/etc/passwd", "../../../../etc/passwd", str(link),
                  str(env["base"] / "listed" / "evil.toml"), "demo/../evil", "<b>x</b>"]:
        at = _app(query={"workspace": value})
        text = _texts(at)
        assert "is listed on this server; the demo is open instead" in text, value
        assert "Active workspace: digits-demo" in text
        assert "workspace" not in at.query_params  # the bad value is dropped from the URL
        assert "root:" not in text  # nothing of the file was read back
    assert not env["marker"].exists()


def test_listed_workspace_with_a_disallowed_factory_runs_nothing(env, local_app):
    at = _app(query={"workspace": "evil"})
    errors = " ".join(e.value for e in at.error)
    assert "Could not open the workspace" in errors and "not allowed on this server" in errors
    assert not env["marker"].exists()
    # the page still works: back to the demo
    next(b for b in at.button if b.label == "Go back to the demo").click()
    _run(at)
    assert not at.error and "Active workspace: digits-demo" in _texts(at)


def _build(at, dataset: str) -> None:
    at.radio(key="build_dataset").set_value(dataset)
    _run(at)


def _upload_checkpoint(at) -> None:
    at.file_uploader(key="build_ckpts").set_value(
        ("checkpoint-05.pt", (DEMO / "checkpoint-05.pt").read_bytes(), "application/octet-stream"))
    _run(at)


def test_server_path_fields_stay_inside_the_data_roots(env, local_app):
    at = _app()
    _upload_checkpoint(at)
    _build(at, "Image folder in a data root")
    assert at.selectbox(key="build_folder_root").options == ["data"]
    messages = []
    for rel in ["../../../etc", "/etc", "link_out", "link_out/passwd", "../no/such/folder", "/no/such"]:
        at.text_input(key="build_folder_rel").input(rel)
        _run(at)
        at.button(key="open_build").click()
        _run(at)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "is not a path inside the data root" in errors[0], (rel, errors)
        messages.append(errors[0].split("is not a path")[1])
    assert len(set(messages)) == 1  # the same words whether the place exists or not
    assert "Active workspace: digits-demo" in _texts(at)
    # a folder inside the root is read (and the check goes on to the model)
    at.text_input(key="build_folder_rel").input("imgs")
    _run(at)
    at.button(key="open_build").click()
    _run(at)
    assert any("1-channel images but the dataset has 3" in e.value for e in at.error)


@pytest.mark.parametrize("case", ["traversal", "bomb", "members", "over_limit", "png_bomb"])
def test_hostile_zip_uploads(env, local_app, case):
    members = {
        "traversal": {"cat/a.png": png_bytes(), "../../../../tmp/escaped-by-zip.png": png_bytes()},
        "bomb": {"cat/a.png": png_bytes(), "cat/big.png": b"\0" * (6 << 20)},  # 3 MB over the 2 MB cap
        "members": {f"cat/{i}.png": png_bytes() for i in range(60)},  # over the 50-file cap
        "png_bomb": {"cat/a.png": png_bytes(), "dog/huge.png": bomb_png()},
    }.get(case)
    data = make_zip(members) if members else os.urandom((1 << 20) + 4096)  # over the 1 MB limit
    at = _app()
    _upload_checkpoint(at)
    _build(at, "Upload a zip of class folders")
    at.file_uploader(key="build_zip").set_value(("x.zip", data, "application/zip"))
    _run(at)
    if case == "over_limit":
        at.button(key="open_build").click()
        _run(at)
        assert any("over this server's upload limit of 1 MB; it was not read" in e.value for e in at.error)
        assert not list(settings.upload_dir().glob("*.zip")) or all(
            p.stat().st_size <= 1 << 20 for p in settings.upload_dir().glob("*.zip"))
        return
    at.button(key="open_build").click()
    _run(at)
    errors = " ".join(e.value for e in at.error)
    expected = {
        "traversal": "escapes the extraction folder",
        "bomb": "over the limit of 2097152 bytes",
        "members": "has 60 members \\(limit 50\\)",
        "png_bomb": "dog/huge.png: DecompressionBombError",
    }[case]
    assert expected.replace("\\", "") in errors.replace("\\", ""), errors
    assert str(settings.cache_dir()) not in errors and "tracin_audit_zip_cache" not in errors
    assert not Path("/tmp/escaped-by-zip.png").exists()
    assert "Active workspace: digits-demo" in _texts(at)  # the server goes on serving


def test_class_and_workspace_names_from_users_are_text(env, local_app, tmp_path):
    """Class names come from folder names, the workspace name from a text field."""
    import torch

    from tracin_core.audit.models import ARCHITECTURES

    evil = "<img src=x onerror=alert(1)>"
    folder = tmp_path / "imgs"
    for cls, value in ((evil, 0), ("*b* [l](javascript:x)", 255)):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            (folder / cls / f"{i}.png").write_bytes(png_bytes(value, 32))
    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    torch.save(ARCHITECTURES["cifar_net"].build().state_dict(), ckpt)
    spec = {"kind": "config", "config": {
        "name": f"{evil} ws", "model": {"factory": "tracin_core.audit.models:TutorialCifarNet", "final_fc_layer": "fc3"},
        "checkpoints": {"paths": [str(ckpt)], "learning_rates": [None]},
        "train": {"kind": "image_folder", "root": str(folder), "image_size": 32}}}
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["ws_spec"] = spec
    _run(at)
    text = _texts(at) + "\n".join(c for img in at.get("image") for c in img.captions)
    assert not at.error, [e.value for e in at.error]
    assert "\\<img src=x onerror=alert\\(1\\)\\>" in text and "\\*b\\* \\[l\\]\\(javascript\\:x\\)" in text
    assert "<img" not in text.replace("\\<img", "") and "[l](" not in text


def test_checkpoint_carrying_a_pickle_payload_runs_nothing(env, local_app):
    at = _app()
    name = "<img src=x onerror=alert(1)>.pt"
    at.file_uploader(key="build_ckpts").set_value((name, pickle_payload(env["marker"]), "application/octet-stream"))
    _run(at)
    errors = " ".join(e.value for e in at.error)
    assert "Cannot use **\\<img src=x onerror=alert\\(1\\)\\>.pt**" in errors  # the file name as text
    assert at.button(key="open_build").disabled
    assert not env["marker"].exists()


def _conflict(ws_name: str, data_hash: str, cache: Path, names: list[str]):
    from pages import common

    store = common._review_store(str(cache / "reviews.sqlite"), ws_name, data_hash)
    store.record(3, names[0], "accept")
    store.record(3, names[1], "exclude")
    return store


def test_reviewer_names_are_shown_as_text(env, local_app):
    from tracin_core import Workspace

    evil = "<img src=x onerror=alert(1)>"
    at = _app("pages/review.py", query={"reviewer": evil})
    ws = Workspace.demo(cache_dir=local_app / "stores")
    _conflict(ws.name, ws.data_hash, local_app, [evil, "**bold** [link](http://x)"])
    at.segmented_control(key="rv_mode").set_value("Conflicts")
    _run(at)
    shown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    joined = "\n".join(shown)
    assert "\\<img src=x onerror=alert\\(1\\)\\>" in joined
    assert "<img" not in joined.replace("\\<img", "")  # never raw HTML
    assert "\\*\\*bold\\*\\* \\[link\\]\\(http\\://x\\)" in joined
    assert "[link](" not in joined


def test_two_default_sessions_never_share_an_identity(env, local_app):
    from pages import common
    from tracin_core import Workspace

    a = _app("pages/review.py")
    b = _app("pages/review.py")
    name_a, name_b = a.text_input(key="reviewer_input").value, b.text_input(key="reviewer_input").value
    assert name_a.startswith("local-") and name_b.startswith("local-") and name_a != name_b
    ws = Workspace.demo(cache_dir=local_app / "stores")
    store = common._review_store(str(local_app / "reviews.sqlite"), ws.name, ws.data_hash)
    held = store.claims()
    mine = dict(zip(held["reviewer"], held["item_id"]))
    assert mine[name_a] != mine[name_b]
    # both decide their own item: two reviewers recorded, nothing overwritten
    a.button(key="rv_accept").click()
    _run(a)
    b.button(key="rv_exclude").click()
    _run(b)
    d = store.decisions()
    assert {(r.reviewer, r.item_id, r.status) for r in d.itertuples()} >= {
        (name_a, mine[name_a], "accepted"), (name_b, mine[name_b], "excluded")}
    # claims follow the identity: renaming lets go of the old name's item
    a.text_input(key="reviewer_input").input("renamed")
    _run(a)
    held = store.claims()
    assert name_a not in set(held["reviewer"]) and "renamed" in set(held["reviewer"])


@pytest.fixture(scope="module")
def oidc_app(env, tmp_path_factory):
    with isolated_app_cache(tmp_path_factory.mktemp("sec_oidc_cache"), config=env["oidc"]) as cache:
        yield cache


def test_signed_out_and_unknown_users_see_nothing(env, oidc_app):
    at = _app(user={"is_logged_in": False})
    assert [b.label for b in at.button] == ["Sign in"]
    assert "Active workspace" not in _texts(at) and not at.get("image")
    at = _app(user=_signed_in("mallory@example.com"))
    assert any("has no role on this server" in e.value for e in at.error)
    assert [b.label for b in at.button] == ["Sign out"]


def test_viewer_gets_influence_and_evaluation_only(env, oidc_app):
    at = _app(user=_signed_in("carol@example.com"))
    assert [t.value for t in at.main.title] == ["Influence"]  # the first page a viewer may open
    with pytest.raises(ValueError, match="Known pages: .*influence.py.*evaluation.py'\\]"):
        at.switch_page("pages/review.py")  # not registered for a viewer
    from streamlit.testing.v1 import AppTest

    for page in ("pages/review.py", "pages/workspace.py"):  # a page file run on its own
        at = AppTest.from_file(str(REPO / page), default_timeout=120)
        at.secrets["auth"] = {"cookie_secret": "x" * 32}
        at.user = _signed_in("carol@example.com")
        _run(at)
        assert any("Your role (viewer) cannot" in e.value for e in at.error), page
        assert not [b for b in at.button if (b.key or "").startswith(("rv_", "open_"))]
        assert not at.get("file_uploader")


def test_annotator_reviews_but_cannot_adjudicate_open_or_export_all(env, oidc_app):
    from tracin_core import Workspace

    at = _app(user=_signed_in("bob@example.com"))
    assert "Signed in as **bob@example.com** · annotator" in _texts(at).replace("\\", "")
    assert [b.label for b in at.sidebar.button] == ["Sign out"]
    keys = {b.key for b in at.button}
    assert not keys & {"open_demo", "open_listed", "open_build"} and not at.get("file_uploader")
    assert "Only admins open or build workspaces" in _texts(at)
    at.switch_page("pages/review.py")
    _run(at)
    assert at.get("text_input") == [] or all(t.key != "reviewer_input" for t in at.text_input)
    ws = Workspace.demo(cache_dir=oidc_app / "stores")
    store = _conflict(ws.name, ws.data_hash, oidc_app, ["x@example.com", "y@example.com"])
    at.button(key="rv_accept").click()
    _run(at)
    assert set(store.decisions()["reviewer"]) >= {"bob@example.com"}
    at.button(key="rv_outlier").click()  # the flags too (#11 item 5): an annotator's decisions
    _run(at)
    mine = store.decisions()
    assert set(mine[mine["reviewer"] == "bob@example.com"]["status"]) == {"accepted", "outlier"}
    at.segmented_control(key="rv_mode").set_value("Conflicts")
    _run(at)
    assert "Only admins record final decisions." in _texts(at)
    assert not [b for b in at.button if (b.key or "").startswith("rv_adj_")]
    labels = {b.label for b in at.get("download_button")}
    assert labels == {"My decisions (CSV)", "My history (CSV)"}


def test_annotator_hostile_cases(env, oidc_app):
    """What an anonymous visitor tried, as a signed-in annotator: no path, no upload, no code."""
    bob = _signed_in("bob@example.com")
    for value in ["/etc/passwd", str(env["base"] / "listed" / "evil.toml"), "../../etc/passwd"]:
        at = _app(query={"workspace": value}, user=bob)
        assert "is listed on this server; the demo is open instead" in _texts(at)
        assert "workspace" not in at.query_params
    at = _app(user=bob)  # the Workspace page: nothing to type a path into, nothing to upload
    assert not at.get("file_uploader") and not [t for t in at.text_input if "build" in (t.key or "")]
    assert not [r for r in at.radio if r.key == "build_dataset"]
    assert not env["marker"].exists()


def test_replayed_admin_widget_changes_nothing(env, oidc_app):
    from tracin_core import Workspace

    ws = Workspace.demo(cache_dir=oidc_app / "stores")
    store = _conflict(ws.name, ws.data_hash, oidc_app, ["p@example.com", "q@example.com"])
    at = _app("pages/review.py", user=_signed_in("alice@example.com"))
    at.segmented_control(key="rv_mode").set_value("Conflicts")
    _run(at)
    button = at.button(key="rv_adj_3")
    before = len(store.history())
    at.user = _signed_in("bob@example.com")  # the session is now an annotator's
    button.click()
    _run(at)
    assert len(store.history()) == before
    assert any("cannot adjudicate conflicts; nothing was changed" in e.value for e in at.error)


def test_inline_gallery_image_escapes_its_alt_text():
    """``pages.common.image_html`` (the Influence galleries' raw ``st.html``) puts class names,
    which may come from folder names, into an attribute: a hostile name stays text."""
    import html
    import re

    import numpy as np

    from pages.common import image_html

    evil = 'cat"><img src=x id=injected onerror=alert(1)> & <b>'
    out = image_html(np.zeros((8, 8), dtype=np.uint8), 96, f"Training example #3, label {evil}")
    assert out.count("<") == 1 and out.count(">") == 1  # one tag: nothing in the name became markup
    alt = re.search(r'alt="([^"]*)"', out).group(1)
    assert html.unescape(alt) == f"Training example #3, label {evil}"
    assert re.search(r'width="96" height="96"', out)


def test_card_captions_keep_class_names_as_text():
    """The Influence cards' captions (HTML under the inline image, ``caption_html``) show
    class names through ``class_html``: a hostile name stays text, the only tags are the card's."""
    import html
    import re
    from types import SimpleNamespace

    import numpy as np

    from pages.common import WARNING, caption_html, class_html, image_html

    evil = 'cat"><img src=x id=injected onerror=alert(1)> & <b>'
    ws = SimpleNamespace(classes=[evil, "dog"])
    card = image_html(np.zeros((8, 8), dtype=np.uint8), 96, f"Training example #3, label {evil}",
                      caption_html(f"<b>{class_html(ws, 0)}</b> {WARNING} · 1.23", f"#3 · pred. {class_html(ws, 1)}"))
    assert re.findall(r"<(/?\w+)", card) == ["img", "div", "b", "/b", "span", "/span", "/div", "div", "/div"]
    text = html.unescape(re.sub(r"<[^>]*>", "", card[card.index("<div"):]))
    assert text == f"{evil} ⚠ · 1.23#3 · pred. dog"
