"""A user's own vectors (sglib.scale.own_vectors, `python -m sglib rerank`) and a vector database as the first stage
(sglib.scale.vectordb, Qdrant's embedded mode): the same reranked top-M as the in-memory path, bad files refused."""
import json

import numpy as np
import pytest

from conftest import GOLDEN
from sglib.evaluate.retrieval import rank_database
from sglib.method.rerank import superglobal
from sglib.rerankers import rerank
from sglib.scale.own_vectors import first_stage, load_ranking, load_vectors, read_relevance, rerank_own, write_ranking
from sglib.scale.vectordb import QdrantStage, rerank_returned


@pytest.fixture(scope="module")
def golden_rerank():
    path = GOLDEN / "rerank_n1500_M400_K9_b0.15.npz"
    if not path.exists():
        pytest.skip(f"golden reranking inputs not found at {path} (../shared is missing on this machine)")
    g = np.load(path)
    return g["Q"].astype(np.float32), g["X"].astype(np.float32)


@pytest.fixture(scope="module")
def qdrant_top_m(golden_rerank):
    """Each query's top-400 as an embedded, in-memory Qdrant collection of the golden vectors returns them."""
    q, x = golden_rerank
    db = QdrantStage(":memory:")
    db.add(x)
    ids, vectors = db.search(q, M=400)
    db.close()
    return ids, vectors


def test_an_on_disk_collection_is_found_again_after_closing(golden_rerank, tmp_path):
    q, x = golden_rerank
    db = QdrantStage(tmp_path)              # on disk: slow to fill (a commit per point), so a few rows
    db.add(x[:40])
    with pytest.raises(RuntimeError, match="close\\(\\) the other QdrantStage first"):
        QdrantStage(tmp_path)
    db.close()
    reopened = QdrantStage(tmp_path)        # what a second process finds: the collection as left
    assert len(reopened) == 40 and reopened.dim == x.shape[1]
    ids, vectors = reopened.search(q[:2], M=10)
    assert np.array_equal(ids, rank_database(q[:2], x[:40])[:, :10]) and np.array_equal(vectors, x[ids])


@pytest.mark.parametrize("method", ["superglobal", "superglobal_query", "alpha_qe", "k_reciprocal"])
def test_reranking_what_qdrant_returns_equals_the_in_memory_path(golden_rerank, qdrant_top_m, method):
    q, x = golden_rerank
    ids, vectors = qdrant_top_m
    initial = rank_database(q, x)
    assert np.array_equal(ids, initial[:, :400]) and np.array_equal(vectors, x[ids])   # stored unchanged
    expected = rerank(method, q, x, initial, M=400)[:, :400]
    assert np.array_equal(rerank_returned(q, ids, vectors, method), expected)


def test_the_vector_database_refuses_what_it_cannot_serve():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    db = QdrantStage()
    with pytest.raises(ValueError, match="not unit rows|expect L2-normalised"):
        db.add(x)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with pytest.raises(ValueError, match="the collection is empty"):
        db.search(x[:1], 5)
    db.add(x)
    with pytest.raises(ValueError, match="12-dimensional rows for a collection of 8-dimensional"):
        db.add(np.eye(2, 12, dtype=np.float32))
    with pytest.raises(ValueError, match=r"M: expected an integer in \[1, 30\]"):
        db.search(x[:1], 31)
    ids, vectors = db.search(x[:2], 10)
    with pytest.raises(ValueError, match="reads the offline kNN graph"):
        rerank_returned(x[:2], ids, vectors, "diffusion")


def _write(tmp_path, name, a):
    np.save(tmp_path / name, a)
    return tmp_path / name


def test_own_vectors_are_checked_with_the_fix_in_the_message(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((20, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"database: 20 of 20 rows .* are not unit rows .*np.linalg.norm"):
        load_vectors(_write(tmp_path, "raw.npy", raw), "database")
    x = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.array_equal(load_vectors(_write(tmp_path, "x.npy", x.astype(np.float64)), "database"), x)
    for bad, words in ((x[0], "2-D float array"), (x.astype(int), "2-D float array"),
                       (np.where(np.arange(20)[:, None] == 3, np.nan, x), r"row\(s\) \[3\] .* NaN")):
        with pytest.raises(ValueError, match=words):
            load_vectors(_write(tmp_path, "bad.npy", bad), "database")
    (tmp_path / "text.npy").write_text("1,2,3")
    with pytest.raises(ValueError, match="is not a numpy .npy array file"):
        load_vectors(tmp_path / "text.npy", "queries")
    other = np.tile(np.arange(25), (3, 1))
    with pytest.raises(ValueError, match="ids from 0 to 24 .* the database has 20 rows: is it a ranking of another"):
        load_ranking(_write(tmp_path, "r.npy", other), 3, 20, 10)
    with pytest.raises(ValueError, match=r"expected 4 rows \(one per query\)"):
        load_ranking(_write(tmp_path, "r.npy", other[:, :20]), 4, 20, 10)
    with pytest.raises(ValueError, match="lists a database id twice"):
        load_ranking(_write(tmp_path, "r.npy", np.zeros((3, 20), np.int64)), 3, 20, 10)
    with pytest.raises(ValueError, match="queries have 5 dims, the database 6"):
        rerank_own(np.eye(3, 5, dtype=np.float32), x, other[:, :20], 10)


def test_own_pipeline_scores_before_and_after_from_a_pairs_csv(golden_rerank, tmp_path):
    q, x = golden_rerank
    initial = first_stage(q, x, M=400)
    assert np.array_equal(initial, rank_database(q, x)[:, :400])
    after = rerank_own(q, x, initial, M=400, K=9, beta=0.15)
    assert np.array_equal(after, superglobal(q, x, rank_database(q, x), 400)[:, :400])
    (tmp_path / "pairs.csv").write_text("query,database\n0,5\n0,7\n1,9\n")
    gnd = read_relevance(tmp_path / "pairs.csv", len(q), len(x))
    assert gnd[0] == {"easy": [5, 7], "hard": [], "junk": []} and gnd[2]["easy"] == []
    (tmp_path / "bad.csv").write_text("query,database\n0,1500\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: pair \(0, 1500\) outside 12 queries x 1500 database rows"):
        read_relevance(tmp_path / "bad.csv", len(q), len(x))
    out = write_ranking(tmp_path / "r.json", after[:, :5], {"method": "superglobal"})
    assert json.loads(out.read_text())["ranking"][0] == after[0, :5].tolist()
    assert np.array_equal(np.load(write_ranking(tmp_path / "r.npy", after, {})), after)


def test_rerank_command_on_npy_files_with_and_without_ground_truth(golden_rerank, tmp_path, capsys):
    from sglib import cli
    q, x = golden_rerank
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "pairs.csv").write_text("query,database\n" + "".join(f"{i},{j}\n" for i in range(len(q))
                                                                      for j in rank_database(q, x)[i, 3:40:4]))
    base = ["rerank", "--queries", str(tmp_path / "q.npy"), "--database", str(tmp_path / "x.npy"), "--M", "100"]
    assert cli.main([*base, "--out", str(tmp_path / "r.npy")]) == 0
    expected = superglobal(q, x, rank_database(q, x), 100)[:, :100]
    assert np.array_equal(np.load(tmp_path / "r.npy"), expected)
    assert cli.main([*base, "--qdrant", ":memory:", "--ground-truth", str(tmp_path / "pairs.csv"),
                     "--out", str(tmp_path / "r.json")]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert np.array_equal(np.array(record["ranking"]), expected) and record["first_stage"] == "Qdrant (:memory:)"
    out = capsys.readouterr().out
    assert "mAP over the top 100, before" in out and "after" in out and set(record["map_top_m"]) == {"before", "after"}
    assert record["gain_check"]["verdict"] in ("help", "hurt", "unclear")
    assert f"without labels: {record['gain_check']['message']}" in out
    assert cli.main([*base, "--method", "k_reciprocal", "--param", "k1=12", "--out", str(tmp_path / "k.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "k.npy"), rerank("k_reciprocal", q, x, rank_database(q, x), M=100,
                                                              k1=12)[:, :100])


@pytest.mark.parametrize("change,words", [
    ("raw", "are not unit rows"), ("dims", "queries have 64 dims, the database 128"),
    ("ranking", "is it a ranking of another database"), ("param", "--param is for the other methods; superglobal takes --K and --beta"),
])
def test_rerank_command_refuses_bad_inputs_in_one_line(golden_rerank, tmp_path, capsys, change, words):
    from sglib import cli
    q, x = golden_rerank
    np.save(tmp_path / "q.npy", q[:, :64] / np.linalg.norm(q[:, :64], axis=1, keepdims=True) if change == "dims"
            else q * 3 if change == "raw" else q)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "r.npy", np.tile(np.arange(2000), (len(q), 1)))
    extra = {"ranking": ["--ranking", str(tmp_path / "r.npy")], "param": ["--param", "k1=3"]}.get(change, [])
    code = cli.main(["rerank", "--queries", str(tmp_path / "q.npy"), "--database", str(tmp_path / "x.npy"),
                     "--M", "50", "--out", str(tmp_path / "o.npy"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert words in err, err


def _clustered_synthetic(n_clusters=6, per=15, nq=12, dim=16, seed=0):
    """SYNTHETIC unit vectors in clusters; a query's positives are its cluster's database rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    labels = np.repeat(np.arange(n_clusters), per)
    x = centres[labels] + 0.9 * rng.standard_normal((len(labels), dim))
    qlab = np.arange(nq) % n_clusters
    q = centres[qlab] + 0.9 * rng.standard_normal((nq, dim))
    x, q = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x.astype(np.float32), q.astype(np.float32)))
    gnd = [{"easy": np.flatnonzero(labels == c).tolist(), "hard": [], "junk": []} for c in qlab]
    return q, x, gnd


def test_k_and_beta_chosen_on_labelled_queries_are_scored_on_the_others_only():
    from sglib.evaluate.protocol import revisited
    from sglib.scale.own_vectors import choose_k_beta
    q, x, gnd = _clustered_synthetic()
    labelled = [0, 1, 2, 3]
    chosen, tried, held_out = choose_k_beta(q, x, gnd, labelled, M=40, Ks=(1, 3, 9), betas=(0.0, 0.5))
    assert len(tried) == 6 and tried.labelled_mAP.max() == tried.set_index(["K", "beta"]).loc[
        (chosen["K"], chosen["beta"]), "labelled_mAP"]
    held = np.arange(4, 12)
    initial = rank_database(q, x)[:, :40]
    expected = revisited(superglobal(q[held], x, initial[held], 40, chosen["K"], chosen["beta"]),
                         [gnd[i] for i in held])["medium"]["map"]
    row = [r for r in held_out.index if r.startswith("chosen")][0]
    assert held_out.loc[row, "medium"] == pytest.approx(100 * expected, abs=1e-9)
    assert held_out.loc["no reranking", "medium"] == pytest.approx(
        100 * revisited(initial[held], [gnd[i] for i in held])["medium"]["map"], abs=1e-9)
    with pytest.raises(ValueError, match="some but not all query indices"):
        choose_k_beta(q, x, gnd, np.arange(12), M=40)


def test_shortlist_costs_caps_m_at_the_database_and_counts_the_arrays_held():
    from sglib.scale.own_vectors import shortlist_costs
    q, x, _ = _clustered_synthetic()
    table = shortlist_costs(q, x, (10, 1000), repeats=1)
    assert table.M.tolist() == [10, len(x)] and (table.ms_per_query > 0).all()
    assert table.MB_per_query.iloc[0] == (10 * 16 + 10 * 10) * 4 / 2**20


def test_adding_to_a_collection_never_replaces_a_stored_point():
    q, x, _ = _clustered_synthetic()
    db = QdrantStage()
    db.add(x[:2], ids=[1, 2])
    db.add(x[2:4])                                 # default ids continue after the largest stored one
    assert len(db) == 4
    with pytest.raises(ValueError, match="ids: 1 already stored .* would replace them"):
        db.add(x[4:5], ids=[3])
    ids, vectors = db.search(q[:2], 4)
    with pytest.raises(ValueError, match="ids: expected integer database ids"):
        rerank_returned(q[:2], ids.astype(float), vectors, K=2)


def test_m_beyond_the_database_is_capped_a_bom_is_read_and_the_out_folder_made(tmp_path):
    from sglib.scale.own_vectors import rerank_files
    q, x, _ = _clustered_synthetic()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "p.csv").write_bytes("query,database\n0,1\n".encode("utf-8-sig"))
    record = rerank_files(tmp_path / "q.npy", tmp_path / "x.npy", tmp_path / "new" / "r.npy", M=500, params={"K": 3},
                          ground_truth=tmp_path / "p.csv")
    assert record["M"] == len(x) and np.load(tmp_path / "new" / "r.npy").shape == (len(q), len(x))


def test_a_ground_truth_without_positives_writes_null_not_nan(tmp_path):
    from sglib.scale.own_vectors import rerank_files
    q, x, _ = _clustered_synthetic()
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "none.csv").write_text("query,database\n")      # no relevant pair at all: no mAP to report
    rerank_files(tmp_path / "q.npy", tmp_path / "x.npy", tmp_path / "r.json", M=20, params={"K": 3},
                 ground_truth=tmp_path / "none.csv")
    record = json.loads((tmp_path / "r.json").read_text())      # strict JSON: NaN would not parse in most readers
    assert "NaN" not in (tmp_path / "r.json").read_text() and record["map_top_m"]["before"]["medium"] is None
