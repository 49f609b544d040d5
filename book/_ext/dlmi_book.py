"""The book's own Sphinx extension: a published page that works without a kernel or a CDN.

* Explorers: sets ``DLMI_STATIC_EXPLORERS=1`` before any page executes, so each explorer
  (``dlmi.widgets.explorer``) draws its frames at build time and the page swaps them.
* Self-hosted assets: MathJax 3, require.js and the Jupyter widget manager are served from
  ``_assets/vendor``, served as ``_static/vendor`` (copied from pinned npm packages by ``make assets``); ``dlmi-offline.js`` gives
  the widget manager the MathJax 2 ``Hub.Queue`` it still calls and its fonts' folder; sphinx-thebe's unused
  scripts (declared twice: a SyntaxError on every page) are dropped.
* Launch buttons: the repository, branch, Pages and JupyterHub URLs can be injected by
  environment variables (the publish workflow sets them from the GitHub context); Colab opens
  the generated notebook ``notebooks/<page>.ipynb``; the JupyterHub button (nbgitpuller) only
  shows when a hub URL is configured.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

# Not `_static`: Jupyter Book 1 would add every .js file found there to every page.
ASSETS = Path(__file__).resolve().parents[1] / "_assets"
VENDOR_FILES = ["vendor/mathjax/tex-chtml.js", "vendor/require.js", "vendor/html-manager/embed-amd.js"]
NOTEBOOKS = "notebooks"   # generated .ipynb of every chapter, relative to the repository root

ENV_URLS = {
    "DLMI_REPOSITORY_URL": "repository_url",
    "DLMI_BRANCH": "repository_branch",
}


def config_inited(app: Sphinx, config: Any) -> None:
    missing = [f for f in VENDOR_FILES if not (ASSETS / f).is_file()]
    if missing:
        raise ExtensionError(f"book/_assets/{missing[0]} is missing: run `make assets` "
                             "(npm ci of the pinned browser packages)")
    config.html_static_path.append(str(ASSETS))
    theme = config.html_theme_options
    for env, key in ENV_URLS.items():
        if os.environ.get(env):
            theme[key] = os.environ[env].rstrip("/")
    launch = theme.setdefault("launch_buttons", {})
    if os.environ.get("DLMI_JUPYTERHUB_URL") is not None:
        launch["jupyterhub_url"] = os.environ["DLMI_JUPYTERHUB_URL"].rstrip("/")
    if os.environ.get("DLMI_PAGES_URL"):
        config.html_baseurl = os.environ["DLMI_PAGES_URL"].rstrip("/") + "/"


def _repo(app: Sphinx) -> tuple[str, str]:
    theme = app.config.html_theme_options
    url = theme.get("repository_url", "").rstrip("/")
    return url, theme.get("repository_branch", "main")


def page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    # An empty mode makes the theme log "Got invalid theme mode" (a console error) on load.
    context["default_mode"] = context.get("default_mode") or "auto"
    # sphinx-thebe's configuration script is added once per read and declares consts: drop it.
    scripts = context.get("script_files", [])
    context["script_files"] = [s for s in scripts if "thebe" not in str(s).lower()
                               and "THEBE" not in str(getattr(s, "attributes", {}).get("body", ""))]
    # Colab opens only .ipynb: point it at the generated notebook of this page.
    url, branch = _repo(app)
    colab = app.config.html_theme_options.get("launch_buttons", {}).get("colab_url", "").rstrip("/")
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            if button.get("text") == "Colab" and url.startswith("https://github.com/"):
                slug = url.removeprefix("https://github.com/")
                button["url"] = f"{colab}/github/{slug}/blob/{branch}/{NOTEBOOKS}/{pagename}.ipynb"


def setup(app: Sphinx) -> dict[str, Any]:
    os.environ["DLMI_STATIC_EXPLORERS"] = "1"
    app.connect("config-inited", config_inited)
    app.connect("html-page-context", page_context, priority=900)
    app.add_css_file("dlmi.css")
    app.add_js_file("dlmi-offline.js", priority=200)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
