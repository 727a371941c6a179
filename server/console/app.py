"""The console's web application: JSON endpoints over the runs dir and the SuperLink, and
the static pages that draw them (no template engine, nothing fetched from elsewhere).

    /                     runs          /api/runs, /api/defenses
    /runs/<name>          one run       /api/runs/<name>, .../files/<file>, POST .../stop
    /compare              overlay runs  /api/compare/<folder>, .../files/<file>
    /compare/<folder>     a simulations.compare output folder
    /nodes                SuperNodes    /api/nodes
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from server.console.auth import COOKIE, token_matches
from server.console.flower import FlowerLink, SuperLinkError
from server.console.runs import NotFound, RunsDir, last_outcomes
from server.run_store import RunStore

STATIC = Path(__file__).parent / "static"
# Every view is the same page (static/page.html) with its title and name: console.js draws it.
PAGES = {"runs": "Runs", "run": "Run", "compare": "Compare", "nodes": "Nodes"}


def create_app(runs_dir: Path, superlink: str | None = None, token: str | None = None) -> FastAPI:
    """The console over ``runs_dir``; ``superlink``: a connection name of
    ``$FLWR_HOME/config.toml`` to list runs and nodes and stop runs; ``token``: required on
    every request when set (see :mod:`server.console.auth`)."""
    app = FastAPI(title="VisualMixer console", docs_url=None, redoc_url=None, openapi_url=None)
    runs = RunsDir(Path(runs_dir))
    link = FlowerLink(superlink) if superlink else None

    if token is not None:
        @app.middleware("http")
        async def require_token(request: Request, call_next):  # type: ignore[no-untyped-def]
            if request.url.path == "/login":
                return await call_next(request)
            if token_matches(token, request.headers.get("authorization"), request.cookies.get(COOKIE)):
                return await call_next(request)
            return JSONResponse({"detail": "a token is required: open /login?token=TOKEN once, "
                                 "or send 'Authorization: Bearer TOKEN'"}, status_code=401)

        @app.get("/login")
        def login(request: Request, offered: str = Query("", alias="token")) -> Response:
            if not token_matches(token, f"Bearer {offered}", None):
                return JSONResponse({"detail": "wrong or missing token"}, status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response

    def flower_runs() -> tuple[dict[str, dict[str, Any]], str]:
        if link is None:
            return {}, ""
        try:
            return link.runs(), ""
        except SuperLinkError as err:
            return {}, str(err)

    template = (STATIC / "page.html").read_text()

    def page(name: str) -> HTMLResponse:
        return HTMLResponse(template.replace("{title}", PAGES[name]).replace("{page}", name))

    def found(call, *args):  # type: ignore[no-untyped-def]
        try:
            return call(*args)
        except NotFound as err:
            raise HTTPException(404, "not found") from err

    @app.get("/")
    def runs_page() -> HTMLResponse:
        return page("runs")

    @app.get("/runs/{name}")
    def run_page(name: str) -> HTMLResponse:
        found(runs.run, name)
        return page("run")

    @app.get("/compare")
    def compare_page() -> HTMLResponse:
        return page("compare")

    @app.get("/compare/{name}")
    def compare_folder_page(name: str) -> HTMLResponse:
        found(runs.comparison, name)
        return page("compare")

    @app.get("/nodes")
    def nodes_page() -> HTMLResponse:
        return page("nodes")

    @app.get("/api/runs")
    def list_runs() -> dict[str, Any]:
        flower, error = flower_runs()
        rows = [run.overview(flower) for run in runs.runs()]
        known = {r["flower-run-id"] for r in rows if r["flower-run-id"] is not None}
        # Runs the SuperLink knows that wrote nothing here (pending, or another output dir).
        for run_id, row in flower.items():
            if run_id not in known:
                rows.append({"name": None, "flower-run-id": run_id, "status": row.get("status"),
                             "reason": row.get("status-details", ""), "started-at": None})
        return {"runs": rows, "superlink": superlink, "superlink-error": error,
                "comparisons": runs.comparisons()}

    @app.get("/api/defenses")
    def defenses() -> dict[str, Any]:
        from common.defenses import DEFENSES

        return {"defenses": [d.describe() for d in DEFENSES.values()]}

    @app.get("/api/runs/{name}")
    def run_detail(name: str) -> dict[str, Any]:
        flower, error = flower_runs()
        return {**found(runs.run, name).detail(flower), "superlink": superlink, "superlink-error": error}

    @app.get("/api/runs/{name}/files/{file}")
    def run_file(name: str, file: str) -> FileResponse:
        return FileResponse(found(runs.run_file, name, file), filename=file)

    @app.post("/api/runs/{name}/stop")
    def stop_run(name: str, request: Request) -> dict[str, Any]:
        # A custom header cannot be sent cross-site without a CORS preflight, which this
        # app never grants: another web page cannot make a browser stop a run.
        if request.headers.get("x-console") != "stop":
            raise HTTPException(400, "the stop request needs the header 'X-Console: stop'")
        run = found(runs.run, name)
        if link is None:
            raise HTTPException(409, "the console was started without --superlink, so it cannot stop runs")
        ids = run.flower_run_ids()
        if not ids:
            raise HTTPException(409, f"run {name!r} has no Flower run id in its config.json")
        try:
            link.stop(ids[-1])
        except SuperLinkError as err:
            raise HTTPException(502, str(err)) from err
        RunStore(str(runs.root), name).mark_stopped(f"stopped from the console (Flower run {ids[-1]})")
        return {"name": name, "flower-run-id": str(ids[-1]), "status": "stopping"}

    @app.get("/api/compare/{name}")
    def comparison(name: str) -> dict[str, Any]:
        return found(runs.comparison, name)

    @app.get("/api/compare/{name}/files/{file}")
    def comparison_file(name: str, file: str) -> FileResponse:
        return FileResponse(found(runs.comparison_file, name, file))

    @app.get("/api/nodes")
    def nodes(run: str | None = None) -> dict[str, Any]:
        """SuperNodes the SuperLink knows, each with its last reply's outcome in ``run``
        (default: the run written to most recently)."""
        folders = runs.runs()
        chosen = found(runs.run, run) if run else max(folders, key=lambda f: f.last_modified(), default=None)
        outcomes = last_outcomes(chosen.events().rows) if chosen else {}
        listed, error = [], ""
        if link is not None:
            try:
                listed = link.nodes()
            except SuperLinkError as err:
                error = str(err)
        rows = [{**node, "last-reply": outcomes.pop(str(node.get("node-id")), None)} for node in listed]
        # Nodes seen in the run that the SuperLink does not list (simulation, or gone).
        rows += [{"node-id": node, "status": "seen in run", "last-reply": event} for node, event in outcomes.items()]
        return {"run": chosen.name if chosen else None, "nodes": rows, "superlink": superlink, "superlink-error": error}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
