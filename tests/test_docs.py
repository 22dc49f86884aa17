"""The docs site (`make docs`, tools/make_docs.py): built from the notebooks, opened in a real headless Chromium.

The browser test needs Debian's Chromium and its WebDriver (`make install` installs them as root); without them it
fails and says: apt-get install -y chromium chromium-driver.
"""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_docs   # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"), key=lambda p: (p.stem != "index", p.stem))

def md(text): return {"cell_type": "markdown", "metadata": {}, "source": text}
def code(text, outputs=()): return {"cell_type": "code", "metadata": {}, "execution_count": None, "source": text, "outputs": list(outputs)}
def write_nb(path, cells):
    cells = [dict(c, id=f"c{i}") for i, c in enumerate(cells)]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

def test_site_pages_links_and_cells(tmp_path):
    "Links to notebooks become pages, repository images are copied in, hidden cells and directives are left out."
    (tmp_path / "nbs").mkdir(); (tmp_path / "figures").mkdir()
    png = (ROOT / "figures" / "smollm2-cpu" / "fig2_amad.png")
    (tmp_path / "figures" / "f.png").write_bytes(png.read_bytes())
    write_nb(tmp_path / "nbs" / "index.ipynb", [md("# Home\n> the start\n\nSee [b](b_two.ipynb#part) and ![fig](../figures/f.png)")])
    write_nb(tmp_path / "nbs" / "a_one.ipynb", [md("# First page\n> one"), code("#| hide\nsecret_hidden_cell = 1"),
             code("#| export\ndef f(x): return x"), code("show_doc(f)", [{"output_type": "execute_result", "execution_count": None,
             "metadata": {}, "data": {"text/markdown": "### f\n\n[source](https://github.com/groupsae/groupsae/blob/main/groupsae/a.py#LNone)"
             '{target="_blank" style="float:right"}', "text/plain": "f"}}])])
    write_nb(tmp_path / "nbs" / "b_two.ipynb", [md("# Second page\n> two\n\n## Part\nback to [home](index.ipynb)")])
    pages = make_docs.build(tmp_path / "nbs", tmp_path / "site", jobs=1)
    assert pages == [("index.html", "Home"), ("a_one.html", "First page"), ("b_two.html", "Second page")]
    index, one = (tmp_path / "site" / "index.html").read_text(), (tmp_path / "site" / "a_one.html").read_text()
    assert 'href="b_two.html#part"' in index and ".ipynb" not in index
    assert 'src="figures/f.png"' in index and (tmp_path / "site" / "figures" / "f.png").read_bytes() == png.read_bytes()
    assert [re.sub("<[^>]+>", "", a) for a in re.findall(r"<li><a [^>]*>.*?</a></li>", one)] == ["Home", "First pagea_one", "Second pageb_two"]
    assert 'class="current">First page' in one
    assert "secret_hidden_cell" not in one and "#| export" not in one and "def" in one
    assert "show_doc(" not in one and "target=" not in one and 'href="../groupsae/a.py"' in one

def _driver():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: install them with `apt-get install -y chromium chromium-driver` "
                    "(Debian; `make install` does it when run as root)")
    try: from selenium import webdriver
    except ImportError: pytest.fail("selenium is missing: pip install -e '.[dev]' (it is a dev requirement in settings.ini)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)

def shown_images(nb_path) -> int:
    "PNG outputs of the cells the site shows (not `#| hide`)."
    nb = json.loads(nb_path.read_text())
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code"
               and not re.search(r"^#\|\s*hide\b", "".join(c["source"]), re.M) for o in c.get("outputs", []))

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_docs.py"), "--out", str(out)], check=True, cwd=ROOT)
    return out

def test_site_in_headless_chromium(site, tmp_path):
    "Every sidebar link opens its page with its title; every image (figures included) decodes; page links resolve."
    os.environ.setdefault("SE_OFFLINE", "true")            # selenium never looks for drivers online
    driver = _driver()
    try:
        driver.set_page_load_timeout(60)
        driver.get((site / "index.html").as_uri())
        links = driver.execute_script("return [...document.querySelectorAll('nav.sidebar li a')].map(a => [a.href, a.textContent])")
        assert len(links) == len(NOTEBOOKS), links
        n_images = 0
        for (href, text), nb_path in zip(links, NOTEBOOKS):
            assert href.endswith(f"/{nb_path.stem}.html"), (href, nb_path.name)
            driver.get(href)
            title = make_docs.title_of(json.loads(nb_path.read_text()), nb_path.stem)
            assert driver.execute_script("return document.readyState") == "complete"
            assert driver.execute_script("return document.querySelector('main h1').textContent").startswith(title), href
            assert driver.execute_script("return document.querySelector('nav a.current').getAttribute('href')") == f"{nb_path.stem}.html"
            imgs = driver.execute_script("return [...document.images].map(i => [i.currentSrc.slice(0, 40), i.complete, i.naturalWidth])")
            assert all(ok and w > 0 for _, ok, w in imgs), f"{href}: images that did not render: {[i for i in imgs if not i[2]]}"
            embedded = sum(src.startswith("data:image/png") for src, _, _ in imgs)
            assert embedded == shown_images(nb_path), f"{href}: {embedded} embedded figures, the notebook stores {shown_images(nb_path)}"
            n_images += len(imgs)
            local = driver.execute_script("return [...document.querySelectorAll('main a[href]')].map(a => a.href)"
                                          ".filter(h => h.startsWith('file:') && h.includes('.html'))")
            for h in local:
                assert Path(h.split("#")[0][len("file://"):]).exists(), f"{href}: broken link {h}"
        assert n_images >= 3        # at least the index's figure map
    finally:
        driver.quit()
