"""``multiview_real``: a small, entirely real retrieval benchmark in the revisitop layout.

Every image is a real photo from a pinned package (:mod:`sglib.bundled.photos`). The manifest's ``group`` field names real
photos of the same scene or object: Leuven (two exposures), Graffiti (viewpoint change), aerial pair, box /
box_in_scene, three stereo pairs (books, aloe, motorcycle), basketball and rubber-whale frame pairs, a notebook and
its edited copy, the Creation of Adam (fresco crop, its warped copy, the whole Sistine ceiling, a parody),
Sacre-Coeur close/far, Grand Central close/far, satellite vs ISS photo, thermal vs visible, and five monuments
photographed twice by different people (Eiffel Tower, Neuschwanstein, Taj Mahal; Chenonceau and the Giza
pyramids from very different viewpoints; Notre-Dame de Paris by day and by night). Every group member is a
query (bbx = the whole image); the other members of its group are its positives; the query's own image in the
database is junk. All other photos (incl. Chartres, whose facade looks like Notre-Dame's: a hard negative)
are distractors.

easy/hard is set per group by hand (:data:`GROUP_LEVEL`, :data:`MEMBER_LEVEL`): hard where the positive shows the
object small, across modality (thermal, satellite), under strong viewpoint change, or altered (parody).

How easy: ~175 database images, ~42 queries with 1-3 positives each; most easy pairs are near-duplicates
(stereo, consecutive frames), so any reasonable global descriptor should score high mAP on Easy; the Hard
pairs (cross-modality, Sistine ceiling, Grand Central) are where descriptors differ. It is a sanity check on
real image pairs, not a replacement for ROxford/RParis.

Example::

    build_multiview_real("data/datasets", sglib.bundled.photos.fetch_all("data/photo_cache"))
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from ..data.revisitop import write_revisitop_gnd

NAME = "multiview_real"
FORMAT_VERSION = 1

GROUP_LEVEL = {
    "leuven": "easy", "graffiti": "hard", "aerial": "easy", "box": "hard", "books_stereo": "easy",
    "aloe_stereo": "easy", "basketball": "easy", "rubberwhale": "easy", "notebook": "easy",
    "motorcycle_stereo": "easy", "creation_of_adam": "easy", "sacre_coeur": "easy", "grand_central": "hard",
    "satellite_vs_iss": "hard", "thermal_vs_visible": "hard",
    # two photos of one monument by different photographers (gcompris-qt-data)
    "eiffel_tower": "easy", "neuschwanstein": "easy", "taj_mahal": "easy", "chenonceau": "hard",
    "giza_great_pyramid": "hard",
    # the vismatch facade by day and gcompris' west front lit at night
    "notre_dame_paris": "hard",
}
# members that make every pair they are in hard: the fresco is a small part of the ceiling; the parody alters it
MEMBER_LEVEL = {"vismatch/sist_chapel.jpg": "hard", "vismatch/fsm.jpg": "hard"}


def _save_resized(path_in, path_out, max_side: int) -> tuple:
    with Image.open(path_in) as im:
        im.draft("RGB", (max_side, max_side))
        im = im.convert("RGB")
    im.thumbnail((max_side, max_side), Image.BILINEAR, reducing_gap=2.0)
    im.save(path_out, format="JPEG", quality=92)
    return im.size


def build_multiview_real(out_dir, photos, max_side: int = 320, manifest_sha256: str | None = None) -> Path:
    """Write ``out_dir/multiview_real/{gnd_multiview_real.pkl, jpg/*.jpg, meta_multiview_real.json}``.

    Args:
        out_dir: parent folder (conventionally ``DATA_ROOT/datasets``).
        photos: :class:`sglib.bundled.photos.Photo` list; groups with fewer than 2 members are not queried.
        max_side: long side of the stored images (downscaled, JPEG quality 92).

    Returns the benchmark folder. Skips the work when ``build_info.json`` matches the arguments.
    """
    out = Path(out_dir) / NAME
    info = {"format": FORMAT_VERSION, "max_side": max_side, "manifest_sha256": manifest_sha256,
            "photos": sorted(p.sha256 for p in photos)}
    if (out / "build_info.json").is_file() and json.loads((out / "build_info.json").read_text()) == info:
        return out
    if out.exists():
        shutil.rmtree(out)
    (out / "jpg").mkdir(parents=True)

    photos = sorted(photos, key=lambda p: p.key)
    unknown = {p.group for p in photos if p.group is not None} - set(GROUP_LEVEL)
    if unknown:
        raise ValueError(f"groups without an easy/hard level: {sorted(unknown)}")
    imlist, sizes, meta_db = [], {}, []
    for i, p in enumerate(photos):
        name = f"mv_{i:03d}"
        sizes[p.key] = _save_resized(p.path, out / "jpg" / f"{name}.jpg", max_side)
        imlist.append(name)
        meta_db.append({"name": name, "photo": p.key, "source": p.source, "group": p.group})

    members = {}
    for i, p in enumerate(photos):
        if p.group is not None:
            members.setdefault(p.group, []).append(i)
    qimlist, gnd, meta_q = [], [], []
    for group in sorted(members):
        idx = members[group]
        if len(idx) < 2:
            continue
        for qi in idx:
            q = photos[qi]
            name = f"q_{len(qimlist):03d}"
            shutil.copyfile(out / "jpg" / f"{imlist[qi]}.jpg", out / "jpg" / f"{name}.jpg")
            w, h = sizes[q.key]
            g = {"bbx": [0.0, 0.0, float(w), float(h)], "easy": [], "hard": [], "junk": [qi]}
            for di in idx:
                if di == qi:
                    continue
                levels = {GROUP_LEVEL[group], MEMBER_LEVEL.get(q.key, "easy"), MEMBER_LEVEL.get(photos[di].key, "easy")}
                g["hard" if "hard" in levels else "easy"].append(di)
            qimlist.append(name)
            gnd.append(g)
            meta_q.append({"name": name, "photo": q.key, "group": group, "db_index": qi})
    write_revisitop_gnd(out / f"gnd_{NAME}.pkl", imlist, qimlist, gnd)
    (out / f"meta_{NAME}.json").write_text(json.dumps({"database": meta_db, "queries": meta_q}, indent=1))
    (out / "build_info.json").write_text(json.dumps(info, sort_keys=True))
    return out
