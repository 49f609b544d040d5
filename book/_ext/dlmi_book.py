"""The book's own Sphinx extension: a published page that works without a kernel or a CDN.

* Explorers: sets ``DLMI_STATIC_EXPLORERS=1`` before any page executes, so each explorer
  (``dlmi.widgets.explorer``) draws its frames at build time and the page swaps them.
* Figures: each page's kernel starts with ``dlmi.display.house_style()`` (legible fonts, PNGs
  that carry a description); that description becomes the figure's alt text, and a figure
  that a narrow column would shrink below legibility keeps a minimum width and scrolls.
* Self-hosted assets: MathJax 3, require.js and the Jupyter widget manager are served from
  ``_assets/vendor``, served as ``_static/vendor`` (copied from pinned npm packages by
  ``make assets``); ``dlmi-offline.js`` gives
  the widget manager the MathJax 2 ``Hub.Queue`` it still calls and its fonts' folder; sphinx-thebe's unused
  scripts (declared twice: a SyntaxError on every page) are dropped.
* Launch buttons: the repository, branch, Pages and JupyterHub URLs can be injected by
  environment variables (the publish workflow sets them from the GitHub context); Colab opens
  the generated notebook ``notebooks/<page>.ipynb``; the JupyterHub button (nbgitpuller) only
  shows when a hub URL is configured.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

# Not `_static`: Jupyter Book 1 would add every .js file found there to every page.
ASSETS = Path(__file__).resolve().parents[1] / "_assets"
VENDOR_FILES = ["vendor/mathjax/tex-chtml.js", "vendor/require.js", "vendor/html-manager/embed-amd.js"]
NOTEBOOKS = "notebooks"   # generated .ipynb of every chapter, relative to the repository root
LABS = "labs"             # student copies of the labs (labs/<lab>/<lab>.ipynb), ditto

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
    # Pages name the repository through substitutions, never a placeholder.
    url = theme.get("repository_url", "").rstrip("/")
    config.myst_substitutions = {
        **getattr(config, "myst_substitutions", {}),
        "repository": f"<{url}>",
        "pip_install": f'`!pip install -q "git+{url}"`',
        "pip_install_local": f'`pip install "dlmi[jupyter] @ git+{url}"`',
        "clone": f"```bash\ngit clone {url} dlmi && cd dlmi\n"
                 "make        # .venv with pinned packages, the executed book, the labs\n"
                 "make test   # the test suite\n```",
    }


def _repo(app: Sphinx) -> tuple[str, str]:
    theme = app.config.html_theme_options
    url = theme.get("repository_url", "").rstrip("/")
    return url, theme.get("repository_branch", "main")


def copy_labs(srcdir: Path) -> None:
    """Put each lab's student notebook in the book (``book/labs/<lab>.ipynb``, not committed):
    the "Labs" part renders it without executing it."""
    labs = Path(__file__).resolve().parents[2] / LABS
    if not labs.is_dir():
        return
    target = srcdir / LABS
    target.mkdir(exist_ok=True)
    for nb in sorted(labs.glob("*/*.ipynb")):
        if nb.stem == nb.parent.name:
            dest = target / nb.name
            text = consecutive_headings(nb.read_text())
            if not dest.exists() or dest.read_text() != text:
                dest.write_text(text)


def consecutive_headings(text: str) -> str:
    """The notebook with markdown headings that skip a level (# then ###) raised to the next
    level, which a strict build would otherwise reject (myst.header)."""
    nb = json.loads(text)
    level = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = "".join(cell["source"]).split("\n")
        fence = False
        for i, line in enumerate(lines):
            fence ^= line.lstrip().startswith("```")
            m = re.match(r"(#{1,6}) ", line)
            if m and not fence:
                new = min(len(m.group(1)), level + 1)
                lines[i] = "#" * new + line[len(m.group(1)):]
                level = new
        cell["source"] = "\n".join(lines)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def launch_path(pagename: str) -> tuple[str, str]:
    """(path in the repository that launch buttons open, the same as a Colab-able .ipynb)."""
    if pagename.startswith(f"{LABS}/"):
        lab = pagename.split("/", 1)[1]
        return f"{LABS}/{lab}/{lab}.ipynb", f"{LABS}/{lab}/{lab}.ipynb"
    return f"book/{pagename}.md", f"{NOTEBOOKS}/{pagename}.ipynb"


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
    source, ipynb = launch_path(pagename)
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            if button.get("text") == "Colab" and url.startswith("https://github.com/"):
                slug = url.removeprefix("https://github.com/")
                button["url"] = f"{colab}/github/{slug}/blob/{branch}/{ipynb}"
            elif button.get("text") in ("Binder", "JupyterHub") and pagename.startswith(f"{LABS}/"):
                # the page's own source (book/labs/...) is a build-time copy: open the lab itself
                button["url"] = button["url"].replace(f"book/{pagename}.ipynb", source)


STARTUP = """# Written by book/_ext/dlmi_book.py: every page's kernel draws in the book's house style.
try:
    import dlmi.display
    dlmi.display.house_style()
except ImportError:
    pass
"""


def kernel_startup() -> None:
    """Every kernel that executes a page applies ``dlmi.display.house_style()`` first (an
    IPython startup file in a private IPYTHONDIR): legible fonts, alt text in each PNG."""
    ipython_dir = Path(tempfile.mkdtemp(prefix="dlmi-ipython-"))
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-dlmi-house-style.py").write_text(STARTUP)
    os.environ["IPYTHONDIR"] = str(ipython_dir)


MIN_TEXT_PX = 8.0       # a figure is never shown so small that its text is below this
MINW_STEP = 8           # min-width classes dlmi-minw-<px> (book/_assets/dlmi.css) in these steps


def figure_facts(app: Sphinx, doctree: Any) -> None:
    """Each figure's alt text is the description its PNG carries (``dlmi.display.figure_png``)
    instead of its hashed file name; a figure whose text would fall below 8 px when shrunk to
    a narrow column gets a minimum width (class ``dlmi-minw-<px>``) and scrolls sideways."""
    from docutils import nodes
    from PIL import Image

    docname = app.env.docname
    for node in doctree.findall(nodes.image):
        uri = node.get("uri", "")
        if not uri.endswith(".png"):
            continue
        path = Path(app.env.relfn2path(uri, docname)[1])
        try:
            with Image.open(path) as image:
                alt, width = image.text.get("Description", ""), image.width
                text_px = float(image.text.get("dlmi:min-text-px", "0"))
        except (OSError, ValueError):
            alt, width, text_px = "", 0, 0.0
        if not node.get("alt") or node["alt"] == uri:
            node["alt"] = alt or "Figure drawn by the code above"
        if text_px and width:
            need = min(width, width * MIN_TEXT_PX / text_px)
            step = -(-int(need) // MINW_STEP) * MINW_STEP
            if step >= 320:
                node["classes"].append(f"dlmi-minw-{min(step, 2000)}")


def citation_roles(app: Sphinx, exception: Exception | None) -> None:
    """docutils writes the bibliography as ``role="list"`` holding ``role="doc-biblioentry"``
    items, which axe-core rejects (aria-required-children, critical): make them list items."""
    if exception is not None or app.builder.format != "html":
        return
    for path in Path(app.outdir).rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        if 'role="doc-biblioentry"' in text:
            path.write_text(text.replace('role="doc-biblioentry"', 'role="listitem"'), encoding="utf-8")


def setup(app: Sphinx) -> dict[str, Any]:
    os.environ["DLMI_STATIC_EXPLORERS"] = "1"
    kernel_startup()
    copy_labs(Path(app.srcdir))
    app.connect("doctree-read", figure_facts)
    app.connect("build-finished", citation_roles)
    app.connect("config-inited", config_inited)
    app.connect("html-page-context", page_context, priority=900)
    app.add_css_file("dlmi.css")
    app.add_js_file("dlmi-offline.js", priority=200)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
