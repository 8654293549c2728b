"""The training run's deterministic pieces checked value by value (issue 22): the per-sample augmentation
seed depends on each of (seed, step, position), the warm-up's first rates, the cosine decay, the batch order
across an epoch boundary. No training; pure functions only."""
import math

import numpy as np
import pytest

from sglib.training.data import batch_indices, sample_seed
from sglib.training.loop import TrainConfig, lr_factor


def test_sample_seed_changes_with_each_of_seed_step_and_position():
    base = sample_seed(3, 5, 2)
    assert base == int(np.random.SeedSequence([3, 5, 2]).generate_state(1)[0])
    changed = {"seed": sample_seed(4, 5, 2), "step": sample_seed(3, 6, 2), "position": sample_seed(3, 5, 3)}
    for name, value in changed.items():
        assert value != base, f"sample_seed ignores the {name}"
    # (seed, step, position) is not collapsed into a sum or a product
    assert sample_seed(3, 6, 2) != sample_seed(3, 5, 3) and sample_seed(1, 2, 3) != sample_seed(3, 2, 1)


@pytest.mark.parametrize("warmup", [1, 4])
def test_warm_up_starts_low_and_rises_linearly(warmup):
    c = TrainConfig(steps=20, warmup_steps=warmup)
    rates = [lr_factor(s, c) for s in range(warmup + 1)]
    assert rates[:warmup] == [(s + 1) / (warmup + 1) for s in range(warmup)], "warm-up is not linear from 1/(w+1)"
    assert rates[warmup] == 1.0, "the full rate is reached when the warm-up ends"


def test_cosine_decay_values():
    c = TrainConfig(steps=12, warmup_steps=2)
    for step in range(2, 12):
        assert lr_factor(step, c) == 0.5 * (1 + math.cos(math.pi * (step - 2) / 10))


def test_batches_cross_the_epoch_boundary_with_the_next_permutation():
    n, size, seed = 11, 3, 7                     # 3 batches an epoch, 2 images left out of each
    for step in range(7):
        epoch, k = divmod(step, 3)
        expect = np.random.default_rng([seed, epoch]).permutation(n)[k * size:(k + 1) * size]
        assert np.array_equal(batch_indices(n, size, seed, step), expect), f"batch {step} is not epoch {epoch}'s"



class _Recorded(Exception):
    """Raised by the stand-in loader once it has what the run asks for: no step is trained."""


def test_a_run_reads_each_sample_with_the_seed_of_its_step_and_position(tmp_path, monkeypatch):
    """The loader's (index, augmentation seed) pairs: batch_indices of the step, sample_seed(seed, step, position)."""
    import torch
    from test_training import TINY, write_bundled_split
    from sglib.training import loop
    from sglib.training.data import bundled_training_set
    asked = []

    def loader(dataset, batch_sampler, **kwargs):
        asked.extend(item for batch in batch_sampler for item in batch)
        raise _Recorded

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    data = bundled_training_set(write_bundled_split(tmp_path / "data"))
    config = loop.TrainConfig(**{**TINY, "steps": 9, "projection_init": "random"})   # past an epoch (6 steps)
    with pytest.raises(_Recorded):
        loop.train(data, config, tmp_path / "run", num_workers=0, progress=False)
    expect = [(int(i), sample_seed(config.seed, step, k)) for step in range(9)
              for k, i in enumerate(batch_indices(len(data), config.batch_size, config.seed, step))]
    assert asked == expect, "the loader's (index, augmentation seed) pairs are not those of (seed, step, position)"
