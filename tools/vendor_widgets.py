"""The pinned widget manager that draws the widgets of docs/*.html without a network; ``make html`` runs it first.

    .venv/bin/python tools/vendor_widgets.py docs

nbconvert's pages load ``@jupyter-widgets/html-manager@*`` from unpkg.com, an unpinned CDN script: offline every
widget is an empty box. ``make html`` points them instead at ``docs/vendor/html-manager-<VERSION>/embed.js``, the
package's self-contained bundle (no require.js needed), committed beside the pages so a clone reads them offline.
Version 1.x of the html-manager is the one that reads ipywidgets 8's widget state (protocol 2.0, controls 2.0.0);
the font files of the package (Font Awesome, for button icons, which no notebook uses) are left out.

When the file is missing or its sha256 differs from the pin, it is fetched again with ``npm pack`` from the npm
registry and checked. Prints the path of the script relative to the docs folder (what the pages load).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@jupyter-widgets/html-manager"
VERSION = "1.0.15"
# sha256 of package/dist/embed.js in the npm tarball of VERSION
EMBED_SHA256 = "8f6d2d3f856d8595d1841dec3019d99bbe74d331f2a5178c2a33bfec729e3d6a"
FILES = ("embed.js", "embed.js.LICENSE.txt")


def script_path(docs: Path) -> Path:
    """The path of the vendored embed.js under ``docs``."""
    return docs / "vendor" / f"html-manager-{VERSION}" / "embed.js"


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(target: Path) -> None:
    """Writes FILES of the pinned package into ``target`` (a folder), from ``npm pack``; raises RuntimeError when
    the fetched embed.js does not match EMBED_SHA256."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmp, "--silent"], check=True,
                       stdout=subprocess.DEVNULL)
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, members=[archive.getmember(f"package/dist/{name}") for name in FILES],
                               filter="data")
        fetched = Path(tmp) / "package" / "dist"
        if sha256(fetched / "embed.js") != EMBED_SHA256:
            raise RuntimeError(f"{PACKAGE}@{VERSION} from npm: embed.js does not match the pinned sha256")
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(fetched / name, target / name)


def main(argv=None) -> int:
    docs = Path((argv or sys.argv[1:] or ["docs"])[0])
    script = script_path(docs)
    if not script.is_file() or sha256(script) != EMBED_SHA256:
        print(f"fetching {PACKAGE}@{VERSION} into {script.parent}", file=sys.stderr)
        fetch(script.parent)
    print(script.relative_to(docs).as_posix())
    return 0


if __name__ == "__main__":
    sys.exit(main())
