"""The entry points of ../shared/spec/api.md, called exactly as written there."""
import numpy as np
import torch

import sglib


def test_api_contract(golden_checkpoint):
    x = torch.rand(2, 8, 5, 6)
    assert sglib.pooling.gem(x, p=3.0, eps=1e-6).shape == (2, 8)
    assert sglib.pooling.regional_gem(x, p=2.5, kernel=5).shape == (2, 8, 5, 6)
    assert sglib.pooling.scale_gem(torch.rand(3, 2, 16), p=float("inf")).shape == (2, 16)
    assert torch.equal(sglib.pooling.relu_plus(torch.tensor([0.0]), floor=0.014), torch.tensor([0.014]))

    net = sglib.models.load_cvnet(golden_checkpoint, depth=50, relu_plus=True)
    d = net.describe(torch.rand(1, 3, 96, 80), scales=(0.7071, 1.0, 1.4142), gem_p=4.6, regional=True,
                     scale_agg="max")
    assert d.shape == (1, 2048) and d.dtype == torch.float32
    assert torch.allclose(d.norm(dim=1), torch.ones(1))

    rng = np.random.default_rng(0)
    db = rng.standard_normal((500, 32)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:4].copy()
    ranks = np.argsort(-q @ db.T, axis=1)
    new_ranks = sglib.rerank.superglobal(q, db, ranks, M=400, K=9, beta=0.15)
    assert isinstance(new_ranks, np.ndarray) and new_ranks.shape == ranks.shape
    assert np.array_equal(np.sort(new_ranks[:, :400], axis=1), np.sort(ranks[:, :400], axis=1))
    gnd = [{"easy": [i], "hard": [], "junk": []} for i in range(4)]
    res = sglib.evaluate.revisited(new_ranks, gnd, ks=(1, 5, 10))
    assert set(res) >= {"easy", "medium", "hard"} and res["easy"]["map"] == 1.0
    assert res["easy"]["aps"].shape == (4,) and res["easy"]["prs"].shape == (4, 3) and len(res["easy"]["mp"]) == 3
    scores, ids = sglib.search.knn(q, db, 10)
    assert ids.shape == scores.shape == (4, 10) and np.array_equal(ids, ranks[:, :10])
