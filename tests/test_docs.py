"""Docs that describe code are checked against it, and every Python snippet in
README.md and docs/*.md runs.

Each page's snippets run in order in one namespace, against the real services.
The namespace starts with what the docs say a reader has: ``rindle`` (opened,
migrated, the README's ``avatar`` profile on local storage served over HTTP by
the Starlette routes), ``image_bytes`` (a PNG), ``asset`` (an avatar asset
whose variants are rendered) and a host table ``users`` with user 42.  The docs' example addresses (the local database
and Redis, ``http://localhost:8000``, ``var/media``) are pointed at the test's.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import pathlib
import re
import socket
import textwrap
import uuid

import asyncpg
import pytest
import pyvips

from rindle_async import LocalStorage, Profile, Rindle, Variant
from rindle_async.lifecycle.machines import JOB, MACHINES

from .conftest import drain

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w+)([^\n]*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def snippets(path: pathlib.Path, language: str = "python") -> list[tuple[int, str, str]]:
    """(line, info string, code) of each fenced block in ``language``."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(3).strip(), textwrap.dedent(m.group(4)))
            for m in FENCE.finditer(text) if m.group(2) == language]


def test_lifecycle_tables_match_the_state_machines():
    text = (ROOT / "docs" / "lifecycles.md").read_text()
    for machine in (*MACHINES, JOB):
        section = text.split(f"## {machine.name}\n", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| (\w+) \| ([^|]+) \|$", section, re.MULTILINE)
        documented = {state: frozenset() if "terminal" in targets else
                      frozenset(t.strip() for t in targets.split(","))
                      for state, targets in rows if state != "from"}
        assert documented == dict(machine.edges), machine.name
        initial = re.search(r"New rows start in: ([^.]+)\.", section).group(1)
        assert frozenset(s.strip() for s in initial.split(",")) == machine.initial
        groups = dict(re.findall(r"^- `(\w+)`: (.+)$", section, re.MULTILINE))
        assert {name: frozenset(s.strip() for s in states.split(",")) for name, states in groups.items()
                } == dict(machine.groups), machine.name


def test_readme_gives_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
async def page_env(database_url, redis_url, tmp_path):
    """A live HTTP server for local storage URLs and the namespace the docs assume."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from rindle_async.contrib.starlette import local_storage_routes

    conn = await asyncpg.connect(database_url)
    await conn.execute("DROP SCHEMA IF EXISTS rindle CASCADE")
    # the host's own table that the transaction examples update
    await conn.execute("CREATE TABLE IF NOT EXISTS public.users (id int PRIMARY KEY, name text);"
                       "INSERT INTO public.users VALUES (42, 'Ann') ON CONFLICT DO NOTHING")
    port = _free_port()
    server_url = f"http://127.0.0.1:{port}"
    namespace: dict = {}

    async def storage_routes(scope, receive, send):  # whichever `rindle` the page holds now
        await local_storage_routes(namespace["rindle"])(scope, receive, send)

    app = Starlette(routes=[Mount("/rindle", app=storage_routes)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    rindle = Rindle(
        database_url=database_url, redis_url=redis_url,
        # a queue of its own: test runs elsewhere on this Redis db must not take its jobs
        queue=f"docs-{uuid.uuid4().hex[:12]}",
        storages={"local": LocalStorage(root=tmp_path / "media", base_url=f"{server_url}/rindle",
                                        secret="docs-secret-0123456789")},
        profiles=[Profile(name="avatar", storage="local",
                          allow_mime=("image/jpeg", "image/png", "image/webp"),
                          variants={"thumb": Variant(width=128, height=128, fit="cover",
                                                     format="webp", quality=80),
                                    "large": Variant(width=1600, height=1600, fit="inside",
                                                     format="jpeg", quality=85)})])
    await rindle.open()
    await rindle.migrate()
    image_bytes = pyvips.Image.black(300, 200).new_from_image([10, 120, 200]).pngsave_buffer()
    asset = await rindle.upload("avatar", image_bytes, filename="me.png")
    await drain(rindle, redis_url)
    namespace.update(rindle=rindle, image_bytes=image_bytes,
                     asset=await rindle.get_asset(asset.id))
    substitutions = {
        "postgresql://postgres@127.0.0.1:5432/postgres": database_url,
        "redis://127.0.0.1:6379/0": redis_url,
        "http://localhost:8000": server_url,
        '"var/media"': repr(str(tmp_path / "media")),
    }
    yield namespace, substitutions
    for value in list(namespace.values()):
        if isinstance(value, Rindle) and value.is_open:
            await value.close()
    server.should_exit = True
    await serving
    await conn.execute("DROP SCHEMA IF EXISTS rindle CASCADE")
    await conn.close()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
async def test_every_python_snippet_runs(page, page_env, capsys):
    namespace, substitutions = page_env
    base = dict(namespace)
    blocks = [b for b in snippets(page) if "alembic" not in b[1]]
    for line, _, code in blocks:
        for example, real in substitutions.items():
            code = code.replace(example, real)
        compiled = compile(code, f"{page.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(compiled, namespace)  # noqa: S307 - our own documentation
        if inspect.iscoroutine(result):
            await result
        if not namespace["rindle"].is_open:  # a self-contained snippet with its own Rindle
            namespace.update(base)


def test_the_alembic_revision_in_the_docs_runs_under_alembic(tmp_path, database_url):
    from alembic import command
    from alembic.config import Config

    [(_, _, revision)] = [b for b in snippets(ROOT / "docs" / "alembic.md") if "alembic" in b[1]]
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "0001_rindle.py").write_text(revision)
    (tmp_path / "env.py").write_text(textwrap.dedent("""
        from alembic import context
        from sqlalchemy import create_engine

        engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
        with engine.connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    """))
    (tmp_path / "script.py.mako").write_text("")
    config = Config()
    config.set_main_option("script_location", str(tmp_path))
    config.set_main_option("sqlalchemy.url", database_url.replace("postgresql://", "postgresql+psycopg2://"))

    async def tables() -> set[str]:
        conn = await asyncpg.connect(database_url)
        try:
            return {r["tablename"] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'rindle_alembic'")}
        finally:
            await conn.close()

    # the docs' revision targets schema "rindle"; use another so it cannot meet other tests
    (tmp_path / "versions" / "0001_rindle.py").write_text(
        revision.replace('"rindle"', '"rindle_alembic"').replace("SCHEMA rindle ", "SCHEMA rindle_alembic "))
    command.upgrade(config, "head")
    assert {"assets", "variants", "attachments", "upload_sessions", "jobs", "processing_runs",
            "instance"} <= asyncio.run(tables())
    command.downgrade(config, "base")
    assert asyncio.run(tables()) == set()


def test_every_documented_command_line_parses():
    """Console examples are real runs (their outputs are asserted in test_cli.py); here every
    ``$ rindle-async ...`` line in the docs must still be a valid command line."""
    from rindle_async.cli import _parser

    lines = [line[len("$ rindle-async "):].split("#")[0].split()
             for page in PAGES for _, _, code in snippets(page, "console")
             for line in code.splitlines() if line.startswith("$ rindle-async ")]
    assert len(lines) >= 10
    for words in lines:
        args = _parser().parse_args(["--app", "x:y", *words])
        assert args.handler is not None
